"""Probes: the official transform and ridge against numpy and scikit-learn, determinism, state round trips,
degenerate fits."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from poise_verl.config import build_value_probe, default_poise_settings
from poise_verl.core.probe import PROBE_REGISTRY, LogisticProbe, PCARidgeProbe, build_probe
from poise_verl.core.probe_features import pca_components

SETTINGS = default_poise_settings().probe  # the Hydra tree's defaults (the official values)
SHARED = {"prompt_components": 32, "response_components": 64, "seed": 42, "feature_order": "official"}
HEADS = {
    "ridge": {"alpha": 100.0},
    "logistic": {"l2": 100.0, "max_iter": 500},
    "mlp": {"hidden": 64, "lr": 1e-3, "epochs": 1000, "batch_size": 8192, "l2": 100.0},
}
# Small, fast settings for the iterative heads.
FAST = {"logistic": {"max_iter": 100}, "mlp": {"epochs": 150}}


def make(name, **overrides):
    return build_probe(name, **{**SHARED, **HEADS[name], **FAST.get(name, {}), **overrides})


def ridge(alpha=100.0, **overrides):
    return PCARidgeProbe(**{**SHARED, "alpha": alpha, **overrides})


def synthetic(seed, rows=120, hp=40, hr=70, s=3):
    """Features with a low-rank signal; targets = a noisy sigmoid of it, in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(rows, 4, generator=generator)
    prompt = latent @ torch.randn(4, hp, generator=generator) + 0.5 * torch.randn(
        rows, hp, generator=generator
    )
    response = latent @ torch.randn(4, hr, generator=generator) + 0.5 * torch.randn(
        rows, hr, generator=generator
    )
    scalar = torch.randn(rows, s, generator=generator) * torch.tensor([1.0, 10.0, 0.1])[:s]
    probability = torch.sigmoid(latent[:, 0] - latent[:, 1])
    targets = (torch.rand(rows, generator=generator) < probability).float()
    return prompt, response, scalar, targets, probability


def numpy_pca(block, count):
    """Principal axes of the centred block, sign-fixed like the probe's."""
    _, _, vt = np.linalg.svd(block - block.mean(0), full_matrices=False)
    components = vt[:count]
    signs = np.sign(components[np.arange(count), np.abs(components).argmax(1)])
    return components * signs[:, None]


def numpy_probe(prompt, response, scalar, targets, alpha, prompt_dims, response_dims):
    """Reference in the official order: PCA of the raw blocks, concatenate, one standardisation, then ridge by
    least squares on the alpha-augmented system."""
    p, r, s, y = (np.asarray(v, dtype=np.float64) for v in (prompt, response, scalar, targets))
    cp = numpy_pca(p, min(prompt_dims, p.shape[0] - 1, p.shape[1]))
    cr = numpy_pca(r, min(response_dims, r.shape[0] - 1, r.shape[1]))
    mp, mr = p.mean(0), r.mean(0)

    def raw(p2, r2, s2):
        blocks = [(np.asarray(p2, np.float64) - mp) @ cp.T, (np.asarray(r2, np.float64) - mr) @ cr.T]
        return np.concatenate([*blocks, np.asarray(s2, np.float64)], axis=1)

    train = raw(p, r, s)
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    x = (train - mean) / std
    x_mean, y_mean = x.mean(0), y.mean()
    design = np.concatenate([x - x_mean, np.sqrt(alpha) * np.eye(x.shape[1])])
    rhs = np.concatenate([y - y_mean, np.zeros(x.shape[1])])
    weights = np.linalg.lstsq(design, rhs, rcond=None)[0]
    intercept = y_mean - x_mean @ weights

    def predict(prompt2, response2, scalar2):
        return np.clip(((raw(prompt2, response2, scalar2) - mean) / std) @ weights + intercept, 0.0, 1.0)

    return predict, cp, cr


def test_defaults_come_from_the_hydra_tree():
    """The yaml is the one source of the defaults, and its probe section builds the official probe."""
    probe = build_value_probe(SETTINGS)
    assert isinstance(probe, PCARidgeProbe)
    assert probe.config() == {**SHARED, "alpha": 100.0}
    for name, head in HEADS.items():
        assert vars(getattr(SETTINGS, name)) == head
        assert build_probe(name, **SHARED, **head).config() == {**SHARED, **head}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("rows", "alpha"), [(120, 100.0), (30, 100.0), (200, 0.5)])
def test_pca_ridge_matches_numpy(seed, rows, alpha):
    prompt, response, scalar, targets, _ = synthetic(seed, rows=rows)
    probe = ridge(alpha)
    metrics = probe.fit(prompt, response, scalar, targets)
    reference, prompt_components, response_components = numpy_probe(
        prompt, response, scalar, targets, alpha, 32, 64
    )
    state = probe.state_dict()["transform"]
    np.testing.assert_allclose(state["prompt_components"].numpy(), prompt_components, atol=1e-8)
    np.testing.assert_allclose(state["response_components"].numpy(), response_components, atol=1e-8)
    assert metrics["prompt_components"] == min(32, rows - 1)
    assert metrics["response_components"] == min(64, rows - 1)
    test_prompt, test_response, test_scalar, _, _ = synthetic(seed + 100, rows=50)
    np.testing.assert_allclose(
        probe.predict(test_prompt, test_response, test_scalar).numpy(),
        reference(test_prompt, test_response, test_scalar),
        atol=1e-5,
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rows", [100, 300])
def test_ridge_probe_equals_the_official_scikit_learn_pipeline(seed, rows):
    """The official fit_estimator: PCA of the raw states -> concatenate -> StandardScaler -> Ridge, clipped to
    [0, 1], keeping min(requested, rows, features) components as the official code does. Above 64 rows that is
    this probe's count too (at 64 or fewer it is not: test_official_probe_saturates_on_a_buffer_of_64_rows_...).
    scikit-learn's exact PCA stands in for its randomised solver (the same axes at these sizes)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    prompt, response, scalar, targets, _ = synthetic(seed, rows=rows)
    probe = ridge()
    probe.fit(prompt, response, scalar, targets)
    pca_p = PCA(n_components=min(32, rows, prompt.shape[1]), svd_solver="full").fit(prompt.double().numpy())
    pca_r = PCA(n_components=min(64, rows, response.shape[1]), svd_solver="full").fit(
        response.double().numpy()
    )

    def features(p, r, s):
        blocks = [
            pca_p.transform(p.double().numpy()),
            pca_r.transform(r.double().numpy()),
            s.double().numpy(),
        ]
        return np.concatenate(blocks, 1)

    scaler = StandardScaler().fit(features(prompt, response, scalar))
    model = Ridge(alpha=100.0).fit(
        scaler.transform(features(prompt, response, scalar)), targets.double().numpy()
    )
    test_prompt, test_response, test_scalar, _, _ = synthetic(seed + 50, rows=40)
    official = np.clip(
        model.predict(scaler.transform(features(test_prompt, test_response, test_scalar))), 0, 1
    )
    ours = probe.predict(test_prompt, test_response, test_scalar).double().numpy()
    np.testing.assert_allclose(ours, official, atol=1e-5)


def layer_states(seed, rows, width=2560, rank=32):
    """Pooled prompt and response states ``(rows, width)`` float32 shaped like a decoder layer's (Qwen3-4B:
    width 2560): an offset every rollout shares with two massive-activation dimensions, a power-law spectrum of
    ``rank`` directions, an isotropic floor; the 3 entropy means; 0/1 rewards whose success rate follows two of
    the directions. The layer (offset, directions) is the same for every seed; ``seed`` draws the rollouts."""
    layer = np.random.default_rng(7)
    offset = layer.normal(0.0, 0.5, (2, width))
    offset[:, [4, width // 3]] += [80.0, -40.0]
    loadings = layer.normal(0.0, 1.0, (2, rank, width)) * (3.0 * np.arange(1, rank + 1) ** -0.8)[:, None]
    draw = np.random.default_rng(seed)
    latent = draw.standard_normal((rows, rank))
    prompt, response = (
        offset[b] + latent @ loadings[b] + draw.standard_normal((rows, width)) for b in (0, 1)
    )
    scalars = draw.normal([0.6, 0.7, 0.3], [0.15, 0.2, 0.1], (rows, 3))
    success = 0.25 + 0.5 / (1.0 + np.exp(latent[:, 1] - latent[:, 0]))
    targets = draw.random(rows) < success
    return [a.astype(np.float32) for a in (prompt, response, scalars, targets)]


def official_fit_estimator(prompt, response, scalars, targets):
    """The official ridge probe built from scikit-learn as ``fit_estimator`` configures it (holi-lab/POISE
    ``src/poise/estimator.py``; the same settings in verl-recipe ``poise/probe.py``): float32 inputs, randomised
    PCA with ``random_state=42`` keeping min(requested, rows, features) components (32 prompt, 64 response),
    then StandardScaler -> Ridge(alpha=100); predictions clipped to [0, 1]. Returns the predict function."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    def pca(block, requested):
        count = min(requested, *block.shape)
        return PCA(n_components=count, svd_solver="randomized", random_state=42).fit(block)

    pca_prompt, pca_response = pca(prompt, 32), pca(response, 64)

    def features(p, r, s):
        return np.concatenate([pca_prompt.transform(p), pca_response.transform(r), s], 1).astype(np.float32)

    scaler = StandardScaler().fit(features(prompt, response, scalars))
    model = Ridge(alpha=100.0, random_state=42).fit(
        scaler.transform(features(prompt, response, scalars)), targets
    )
    return lambda p, r, s: np.clip(model.predict(scaler.transform(features(p, r, s))), 0.0, 1.0)


def held_out_predictions(rows, seed):
    """Fit the official pipeline and this probe on ``rows`` rollouts; both predict 64 other rollouts."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small BLAS calls: threads only wait on each other (tests/core/conftest.py)
        train, held_out = layer_states(seed, rows), layer_states(seed + 100, 64)
        official = official_fit_estimator(*train)(*held_out[:3])
    probe = ridge()
    metrics = probe.fit(*(torch.from_numpy(a) for a in train))
    ours = probe.predict(*(torch.from_numpy(a) for a in held_out[:3])).double().numpy()
    return official, ours, metrics


def saturated(predictions):
    """How many predictions sit exactly on the clip bounds."""
    return int(((predictions == 0.0) | (predictions == 1.0)).sum())


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rows", [32, 64])
def test_official_probe_saturates_on_a_buffer_of_64_rows_or_fewer_and_this_one_does_not(seed, rows):
    """With rows <= 64 the official PCA keeps min(64, rows) = rows response components (and rows prompt
    components when rows <= 32), one more than centred data of that many rows has directions: the last is a
    near-null axis whose training scores are rounding noise (population std ~1e-5). StandardScaler divides by
    that std, held-out rollouts project onto the axis with ordinary size, and the ridge output leaves [0, 1] by
    orders of magnitude: (nearly) every held-out prediction is clipped to exactly 0 or 1. This probe keeps
    rows - 1 components (32 and 63 at 64 rows) and predicts inside the range."""
    official, ours, metrics = held_out_predictions(rows, seed)
    assert saturated(official) >= 60, official
    assert saturated(ours) <= 6, ours
    assert (metrics["prompt_components"], metrics["response_components"]) == (min(32, rows - 1), rows - 1)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rows", [65, 256])
def test_official_probe_agrees_with_this_one_above_64_rows(seed, rows):
    """From 65 rows the two keep the same components (32 and 64). This probe's PCA is exact at 65 rows and
    randomised at 256 (above 500 features, few components), the official one randomised at both, so they agree
    to the randomised solver's error: up to ~0.1 at 256 rows, about as far as scikit-learn's randomised pipeline
    is from its own exact one on these features."""
    official, ours, metrics = held_out_predictions(rows, seed)
    assert (metrics["prompt_components"], metrics["response_components"]) == (32, 64)
    assert abs(saturated(official) - saturated(ours)) <= 1
    assert np.abs(official - ours).max() < (0.05 if rows == 65 else 0.15)
    assert np.corrcoef(official, ours)[0, 1] > 0.95


@pytest.mark.parametrize("seed", [0, 1])
def test_the_standardise_first_order_equals_its_scikit_learn_pipeline(seed):
    """poise.probe.feature_order=standardise_first: StandardScaler -> PCA per hidden-state block (scores left
    unscaled), StandardScaler on the scalars, concatenate -> Ridge, clipped to [0, 1]; and it is a different
    probe from the official order on the same rows."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    prompt, response, scalar, targets, _ = synthetic(seed, rows=120)
    probe = ridge(feature_order="standardise_first")
    probe.fit(prompt, response, scalar, targets)
    blocks = [
        (StandardScaler().fit(b.double().numpy()), b, k)
        for b, k in ((prompt, 32), (response, 64), (scalar, 0))
    ]
    pcas = [
        PCA(n_components=k, svd_solver="full").fit(sc.transform(b.double().numpy())) if k else None
        for sc, b, k in blocks
    ]

    def features(*parts):
        out = []
        for (scaler, _, _), pca, part in zip(blocks, pcas, parts, strict=True):
            z = scaler.transform(part.double().numpy())
            out.append(pca.transform(z) if pca is not None else z)
        return np.concatenate(out, 1)

    model = Ridge(alpha=100.0).fit(features(prompt, response, scalar), targets.double().numpy())
    test = synthetic(seed + 50, rows=40)[:3]
    expected = np.clip(model.predict(features(*test)), 0, 1)
    ours = probe.predict(*test).double().numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    official = ridge()
    official.fit(prompt, response, scalar, targets)
    assert np.abs(official.predict(*test).double().numpy() - ours).max() > 1e-3
    # The order travels with a saved probe.
    restored = ridge()
    restored.load_state_dict(probe.state_dict())
    assert restored.feature_order == "standardise_first"
    np.testing.assert_allclose(restored.predict(*test).double().numpy(), ours)


def test_an_unknown_feature_order_is_refused():
    with pytest.raises(ValueError, match="feature order 'whitened'"):
        ridge(feature_order="whitened")


def test_components_fewer_features_than_requested():
    prompt, response, scalar, targets, _ = synthetic(0, rows=100, hp=5, hr=7)
    metrics = ridge().fit(prompt, response, scalar, targets)
    assert (metrics["prompt_components"], metrics["response_components"]) == (5, 7)


def test_predictions_are_clipped():
    prompt, response, scalar, targets, _ = synthetic(1)
    probe = ridge(1e-3)
    probe.fit(prompt, response, scalar, targets)
    far = probe.predict(prompt * 50, response * 50, scalar * 50)
    assert far.min() >= 0.0 and far.max() <= 1.0
    assert bool(((far == 0.0) | (far == 1.0)).any())  # extrapolation really hit the clip


@pytest.mark.parametrize("name", sorted(PROBE_REGISTRY))
def test_deterministic_and_state_round_trip(name):
    prompt, response, scalar, targets, _ = synthetic(2)
    first = make(name)
    second = make(name)
    first.fit(prompt, response, scalar, targets)
    second.fit(prompt, response, scalar, targets)
    test_prompt, test_response, test_scalar, _, _ = synthetic(3, rows=40)
    predictions = first.predict(test_prompt, test_response, test_scalar)
    assert torch.equal(predictions, second.predict(test_prompt, test_response, test_scalar))
    assert predictions.shape == (40,) and predictions.dtype == torch.float32
    assert predictions.min() >= 0 and predictions.max() <= 1

    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = make(name, seed=7, prompt_components=3)  # another config; load_state_dict brings the saved one
    restored.load_state_dict(state)
    assert restored.is_fitted
    assert restored.config() == first.config()
    assert torch.equal(restored.predict(test_prompt, test_response, test_scalar), predictions)


@pytest.mark.parametrize("name", sorted(PROBE_REGISTRY))
def test_probes_learn_the_signal(name):
    prompt, response, scalar, targets, probability = synthetic(4, rows=800)
    train, test = slice(0, 400), slice(400, 800)
    probe = make(name)
    probe.fit(prompt[train], response[train], scalar[train], targets[train])
    predictions = probe.predict(prompt[test], response[test], scalar[test])
    correlation = np.corrcoef(predictions.numpy(), probability[test].numpy())[0, 1]  # held-out rows
    assert correlation > 0.6, correlation


def test_logistic_solution_is_stationary():
    """At the LBFGS solution the official sigmoid-BCE objective's gradient (written here in numpy) vanishes."""
    prompt, response, scalar, targets, _ = synthetic(6, rows=150, hp=6, hr=6)
    probe = LogisticProbe(
        prompt_components=4, response_components=4, seed=0, feature_order="official", l2=2.0, max_iter=500
    )
    probe.fit(prompt, response, scalar, targets)
    state = probe.state_dict()
    transform = state["transform"]
    blocks = [
        (prompt.double().numpy() - transform["prompt_mean"].numpy())
        @ transform["prompt_components"].numpy().T,
        (response.double().numpy() - transform["response_mean"].numpy())
        @ transform["response_components"].numpy().T,
        scalar.double().numpy(),
    ]
    raw = np.concatenate(blocks, axis=1)
    x = (raw - raw.mean(0)) / raw.std(0)  # the official order: PCA, then one standardisation
    w, c = state["head"]["weights"].numpy(), float(state["head"]["intercept"])
    y, rows = np.clip(targets.double().numpy(), 1e-6, 1 - 1e-6), x.shape[0]
    residual = 1 / (1 + np.exp(-(x @ w + c))) - y
    gradient_w = x.T @ residual / rows + 2.0 / rows * w
    gradient_c = residual.mean()
    assert np.abs(gradient_w).max() < 1e-5 and abs(gradient_c) < 1e-5


def test_mlp_stops_when_its_loss_stalls():
    """scikit-learn's rule: at most `epochs`, fewer once the loss has not improved by 1e-4 for 10 epochs."""
    prompt, response, scalar, targets, _ = synthetic(11, rows=200)
    metrics = make("mlp", epochs=1000, batch_size=8192).fit(prompt, response, scalar, targets)
    assert 10 < metrics["epochs"] < 1000


@pytest.mark.parametrize("name", sorted(PROBE_REGISTRY))
@pytest.mark.parametrize(
    ("rows", "target", "expected"), [(0, 0.0, 0.5), (1, 0.25, 0.25), (6, 1.0, 1.0), (5, 0.0, 0.0)]
)
def test_degenerate_fits_become_constant(name, rows, target, expected):
    prompt, response, scalar, _, _ = synthetic(7, rows=max(rows, 1))
    prompt, response, scalar = prompt[:rows], response[:rows], scalar[:rows]
    probe = make(name)
    metrics = probe.fit(prompt, response, scalar, torch.full((rows,), target))
    assert metrics["constant_fallback"] == 1.0 and metrics["rows"] == rows
    test_prompt, test_response, test_scalar, _, _ = synthetic(8, rows=5)
    predictions = probe.predict(test_prompt, test_response, test_scalar)
    assert torch.equal(predictions, torch.full((5,), expected))
    restored = make(name)
    restored.load_state_dict(probe.state_dict())
    assert torch.equal(restored.predict(test_prompt, test_response, test_scalar), predictions)


def test_refit_starts_from_scratch():
    prompt, response, scalar, targets, _ = synthetic(9)
    probe = ridge()
    probe.fit(prompt[:60], response[:60], scalar[:60], targets[:60])
    probe.fit(prompt, response, scalar, targets)
    fresh = ridge()
    fresh.fit(prompt, response, scalar, targets)
    assert torch.equal(probe.predict(prompt, response, scalar), fresh.predict(prompt, response, scalar))


def test_errors():
    prompt, response, scalar, targets, _ = synthetic(10)
    with pytest.raises(RuntimeError, match="before fit"):
        ridge().predict(prompt, response, scalar)
    with pytest.raises(ValueError, match="ridge.*logistic.*mlp|valid names"):
        build_probe("critic")
    probe = ridge()
    probe.fit(prompt, response, scalar, targets)
    with pytest.raises(ValueError, match="feature sizes"):
        probe.predict(prompt[:, :5], response, scalar)
    with pytest.raises(ValueError, match="row counts differ"):
        probe.fit(prompt, response[:10], scalar, targets)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        probe.fit(prompt, response, scalar, targets * 2 - 1)  # rewards in {-1, 1}
    with pytest.raises(ValueError, match="cannot be loaded"):
        make("mlp").load_state_dict(probe.state_dict())


def test_randomized_pca_matches_exact_axes_on_large_blocks():
    """Above 500 rows or features the probe uses randomised PCA (as scikit-learn does); on a block with a
    decaying spectrum it recovers the exact top axes, and a refit on the same rows is identical."""
    generator = torch.Generator().manual_seed(3)
    rows, features, rank = 700, 600, 40
    scales = torch.logspace(1, -1, rank, dtype=torch.float64)
    signal = torch.randn(rows, rank, generator=generator, dtype=torch.float64) * scales
    block = signal @ torch.randn(rank, features, generator=generator, dtype=torch.float64)
    block = block + 0.01 * torch.randn(rows, features, generator=generator, dtype=torch.float64)
    z = block - block.mean(0)
    randomized = pca_components(z, 8, seed=0)
    _, _, vh = np.linalg.svd(z.numpy(), full_matrices=False)
    exact = torch.from_numpy(vh[:8])
    cosines = (randomized * exact).sum(1).abs()  # the same axes up to sign: |cosine| ~ 1
    assert torch.all(cosines > 0.999), cosines
    assert torch.equal(pca_components(z, 8, seed=0), randomized)
