"""Probes: PCA and ridge against numpy, determinism, state round trips, degenerate fits."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from poise_verl.core.probe import (
    PROBE_REGISTRY,
    LogisticProbe,
    PCARidgeProbe,
    build_probe,
)

# Small, fast settings for the iterative heads.
FAST = {"logistic": {"max_iter": 100}, "mlp": {"epochs": 20, "batch_size": 64}}


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


def numpy_standardise(block):
    mean, std = block.mean(0), np.maximum(block.std(0), 1e-6)
    return (block - mean) / std, mean, std


def numpy_pca(standardised, count):
    _, _, vt = np.linalg.svd(standardised, full_matrices=False)
    components = vt[:count]
    signs = np.sign(components[np.arange(count), np.abs(components).argmax(1)])
    return components * signs[:, None]


def numpy_probe(prompt, response, scalar, targets, alpha, prompt_dims, response_dims):
    """Reference: standardise, PCA, ridge by least squares on the alpha-augmented system."""
    p, r, s, y = (np.asarray(v, dtype=np.float64) for v in (prompt, response, scalar, targets))
    zp, mp, sp = numpy_standardise(p)
    zr, mr, sr = numpy_standardise(r)
    zs, ms, ss = numpy_standardise(s)
    cp = numpy_pca(zp, min(prompt_dims, zp.shape[0] - 1, zp.shape[1]))
    cr = numpy_pca(zr, min(response_dims, zr.shape[0] - 1, zr.shape[1]))
    x = np.concatenate([zp @ cp.T, zr @ cr.T, zs], axis=1)
    x_mean, y_mean = x.mean(0), y.mean()
    design = np.concatenate([x - x_mean, np.sqrt(alpha) * np.eye(x.shape[1])])
    rhs = np.concatenate([y - y_mean, np.zeros(x.shape[1])])
    weights = np.linalg.lstsq(design, rhs, rcond=None)[0]
    intercept = y_mean - x_mean @ weights

    def predict(prompt2, response2, scalar2):
        features = np.concatenate(
            [
                ((np.asarray(prompt2, np.float64) - mp) / sp) @ cp.T,
                ((np.asarray(response2, np.float64) - mr) / sr) @ cr.T,
                (np.asarray(scalar2, np.float64) - ms) / ss,
            ],
            axis=1,
        )
        return np.clip(features @ weights + intercept, 0.0, 1.0)

    return predict, cp, cr


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("rows", "alpha"), [(120, 100.0), (30, 100.0), (200, 0.5)])
def test_pca_ridge_matches_numpy(seed, rows, alpha):
    prompt, response, scalar, targets, _ = synthetic(seed, rows=rows)
    probe = PCARidgeProbe(alpha=alpha)
    metrics = probe.fit(prompt, response, scalar, targets)
    reference, prompt_components, response_components = numpy_probe(
        prompt, response, scalar, targets, alpha, 32, 64
    )
    state = probe.state_dict()["front_end"]
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


def test_components_fewer_features_than_requested():
    prompt, response, scalar, targets, _ = synthetic(0, rows=100, hp=5, hr=7)
    metrics = PCARidgeProbe().fit(prompt, response, scalar, targets)
    assert (metrics["prompt_components"], metrics["response_components"]) == (5, 7)


def test_predictions_are_clipped():
    prompt, response, scalar, targets, _ = synthetic(1)
    probe = PCARidgeProbe(alpha=1e-3)
    probe.fit(prompt, response, scalar, targets)
    far = probe.predict(prompt * 50, response * 50, scalar * 50)
    assert far.min() >= 0.0 and far.max() <= 1.0
    assert bool(((far == 0.0) | (far == 1.0)).any())  # extrapolation really hit the clip


@pytest.mark.parametrize("name", sorted(PROBE_REGISTRY))
def test_deterministic_and_state_round_trip(name):
    prompt, response, scalar, targets, _ = synthetic(2)
    first = build_probe(name, **FAST.get(name, {}))
    second = build_probe(name, **FAST.get(name, {}))
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
    restored = build_probe(name)  # default config; load_state_dict brings the saved one
    restored.load_state_dict(state)
    assert restored.is_fitted
    assert restored.config() == first.config()
    assert torch.equal(restored.predict(test_prompt, test_response, test_scalar), predictions)


@pytest.mark.parametrize("name", sorted(PROBE_REGISTRY))
def test_probes_learn_the_signal(name):
    prompt, response, scalar, targets, probability = synthetic(4, rows=800)
    train, test = slice(0, 400), slice(400, 800)
    probe = build_probe(name, **FAST.get(name, {}))
    probe.fit(prompt[train], response[train], scalar[train], targets[train])
    predictions = probe.predict(prompt[test], response[test], scalar[test])
    correlation = np.corrcoef(predictions.numpy(), probability[test].numpy())[0, 1]  # held-out rows
    assert correlation > 0.6, correlation


def test_logistic_solution_is_stationary():
    """At the LBFGS solution the objective's gradient (written here in numpy) vanishes."""
    prompt, response, scalar, targets, _ = synthetic(6, rows=150, hp=6, hr=6)
    probe = LogisticProbe(prompt_components=4, response_components=4, l2=2.0, max_iter=500)
    probe.fit(prompt, response, scalar, targets)
    state = probe.state_dict()
    zp, _, _ = numpy_standardise(prompt.double().numpy())
    zr, _, _ = numpy_standardise(response.double().numpy())
    zs, _, _ = numpy_standardise(scalar.double().numpy())
    x = np.concatenate(
        [
            zp @ state["front_end"]["prompt_components"].numpy().T,
            zr @ state["front_end"]["response_components"].numpy().T,
            zs,
        ],
        axis=1,
    )
    w, c = state["head"]["weights"].numpy(), float(state["head"]["intercept"])
    y, rows = targets.double().numpy(), x.shape[0]
    residual = 1 / (1 + np.exp(-(x @ w + c))) - y
    gradient_w = x.T @ residual / rows + 2.0 / rows * w
    gradient_c = residual.mean()
    assert np.abs(gradient_w).max() < 1e-6 and abs(gradient_c) < 1e-6


@pytest.mark.parametrize("name", sorted(PROBE_REGISTRY))
@pytest.mark.parametrize(
    ("rows", "target", "expected"), [(0, 0.0, 0.5), (1, 0.25, 0.25), (6, 1.0, 1.0), (5, 0.0, 0.0)]
)
def test_degenerate_fits_become_constant(name, rows, target, expected):
    prompt, response, scalar, _, _ = synthetic(7, rows=max(rows, 1))
    prompt, response, scalar = prompt[:rows], response[:rows], scalar[:rows]
    probe = build_probe(name, **FAST.get(name, {}))
    metrics = probe.fit(prompt, response, scalar, torch.full((rows,), target))
    assert metrics["constant_fallback"] == 1.0 and metrics["rows"] == rows
    test_prompt, test_response, test_scalar, _, _ = synthetic(8, rows=5)
    predictions = probe.predict(test_prompt, test_response, test_scalar)
    assert torch.equal(predictions, torch.full((5,), expected))
    restored = build_probe(name)
    restored.load_state_dict(probe.state_dict())
    assert torch.equal(restored.predict(test_prompt, test_response, test_scalar), predictions)


def test_refit_starts_from_scratch():
    prompt, response, scalar, targets, _ = synthetic(9)
    probe = PCARidgeProbe()
    probe.fit(prompt[:60], response[:60], scalar[:60], targets[:60])
    probe.fit(prompt, response, scalar, targets)
    fresh = PCARidgeProbe()
    fresh.fit(prompt, response, scalar, targets)
    assert torch.equal(probe.predict(prompt, response, scalar), fresh.predict(prompt, response, scalar))


def test_errors():
    prompt, response, scalar, targets, _ = synthetic(10)
    with pytest.raises(RuntimeError, match="before fit"):
        PCARidgeProbe().predict(prompt, response, scalar)
    with pytest.raises(ValueError, match="ridge.*logistic.*mlp|valid names"):
        build_probe("critic")
    probe = PCARidgeProbe()
    probe.fit(prompt, response, scalar, targets)
    with pytest.raises(ValueError, match="feature sizes"):
        probe.predict(prompt[:, :5], response, scalar)
    with pytest.raises(ValueError, match="row counts differ"):
        probe.fit(prompt, response[:10], scalar, targets)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        probe.fit(prompt, response, scalar, targets * 2 - 1)  # rewards in {-1, 1}
    with pytest.raises(ValueError, match="cannot be loaded"):
        build_probe("mlp").load_state_dict(probe.state_dict())


def test_randomized_pca_matches_exact_axes_on_large_blocks():
    """Above 500 rows or features the probe uses randomised PCA (as scikit-learn does); on a block with a
    decaying spectrum it recovers the exact top axes, and a refit on the same rows is identical."""
    from poise_verl.core.probe import _FrontEnd

    generator = torch.Generator().manual_seed(3)
    rows, features, rank = 700, 600, 40
    scales = torch.logspace(1, -1, rank, dtype=torch.float64)
    signal = torch.randn(rows, rank, generator=generator, dtype=torch.float64) * scales
    block = signal @ torch.randn(rank, features, generator=generator, dtype=torch.float64)
    block = block + 0.01 * torch.randn(rows, features, generator=generator, dtype=torch.float64)
    z = block - block.mean(0)
    front = _FrontEnd(prompt_components=8, response_components=0, std_floor=1e-6, seed=0)
    front._pca_fit(z, 8, "prompt")
    randomized = front.state["prompt_components"]
    _, _, vh = np.linalg.svd(z.numpy(), full_matrices=False)
    exact = torch.from_numpy(vh[:8])
    # Same axes up to sign: |cosine| of each pair ~ 1.
    cosines = (randomized * exact).sum(1).abs()
    assert torch.all(cosines > 0.999), cosines
    again = _FrontEnd(8, 0, 1e-6, seed=0)
    again._pca_fit(z, 8, "prompt")
    assert torch.equal(again.state["prompt_components"], randomized)
