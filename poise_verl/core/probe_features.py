"""The probe's input transform: phi = (pooled prompt state, pooled response state, scalars) -> x.

GRPO/DAPO have no value model and so no features. POISE's probe g reads, per rollout, two pooled hidden
states of one decoder layer (``(N, Hp)`` and ``(N, Hr)``, H = 2560 on Qwen3-4B) and a few entropy scalars
``(N, S)``. Before the head sees them they are reduced and scaled, in the official order
(``fit_estimator`` in holi-lab/POISE ``src/poise/estimator.py``):

1. PCA of the RAW pooled prompt states to 32 dims and of the raw pooled response states to 64 dims
   (centred, not scaled: directions of large activation variance dominate, as in scikit-learn's ``PCA``);
2. concatenate ``[prompt scores, response scores, scalars]`` -> ``(N, 32 + 64 + S)``;
3. ONE standardisation of those columns (as scikit-learn's ``StandardScaler``: mean and population std over
   the fit rows; a constant column gets scale 1, so it maps to 0; "constant" is not scikit-learn's test:
   see below).

``FeatureTransform.fit_transform`` learns all three on the fit rows only; ``transform`` applies them.

A named alternative, ``order="standardise_first"`` (``poise.probe.feature_order``), is this project's former
order: standardise every pooled hidden dimension, then PCA, leaving the PCA scores unscaled (so ridge shrinks
the low-variance components most) and standardising only the scalars. It is kept because on the tiny task it
predicted held-out pass rates better (``docs/RESULTS.md``); the official order stays the default.

PCA details. A block keeps ``min(requested, rows - 1, features)`` components: centred data of N rows has rank
at most N - 1, and a further component would be an arbitrary direction orthogonal to every fit row.

Where the fitted probe differs from the official one: buffers of 64 rows or fewer. The official code keeps
min(requested, rows, features) components, so the response block (64 requested) keeps one such null axis when
N <= 64, and the prompt block (32) one more when N <= 32: 32 + N + 3 columns against this probe's 32 + (N - 1)
+ 3 for 33 <= N <= 64, N + N + 3 against 2(N - 1) + 3 for N <= 32 (the 3 entropy columns are never null). A
null axis's scores on the fit rows are rounding noise (std ~1e-5 from the official float32 inputs, ~1e-14 in
float64), and scikit-learn's ``StandardScaler`` counts a column as constant only when its variance is below
(N x eps x its mean) squared, so a centred column only at exactly 0: it divides by that noise. A held-out
rollout projects onto the axis with ordinary size, the ridge output leaves [0, 1] by orders of magnitude, and
the clipped prediction is exactly 0 or 1: 64 of 64 held-out predictions on 32 or 64 rows of layer-like
features (``tests/core/test_probe.py::test_official_probe_saturates_on_a_buffer_of_64_rows_or_fewer_and_this_one_does_not``).
This probe keeps no null axis, and its step 3 would zero one anyway (constant: std <= 1e-12 x max(|mean|, 1)).
From 65 rows both keep 32 + 64 components and agree: to 1e-5 with exact PCA on both sides, and to the
randomised solver's error (up to ~0.1 at 256 rows of 2560 features) against the official randomised PCA
(``test_ridge_probe_equals_the_official_scikit_learn_pipeline``, ``test_official_probe_agrees_with_this_one_above_64_rows``).
A domain's probe is first fitted at ``poise.min_fit_rows`` rows (64 by default).

PCA runs in float64: an eigendecomposition of the ``(F, F)`` Gram matrix
when N >= F, an SVD of the data otherwise, and randomised subspace iteration (seeded) for large blocks
with few components, the regime where the official code's ``svd_solver="randomized"`` matters for speed.
Each component's sign is fixed so that its largest-magnitude loading is positive, which makes a refit on
the same rows bit-identical.
"""

from __future__ import annotations

import torch

__all__ = [
    "FEATURE_ORDERS",
    "OFFICIAL",
    "RANDOMIZED_PCA_ABOVE",
    "STANDARDISE_FIRST",
    "FeatureTransform",
    "pca_components",
]

OFFICIAL = "official"  # PCA of the raw states, then one standardisation of every column
STANDARDISE_FIRST = "standardise_first"  # standardise each hidden dimension, then PCA; scores unscaled
FEATURE_ORDERS = (OFFICIAL, STANDARDISE_FIRST)

_DTYPE = torch.float64

# Blocks with more rows or features than this use randomised PCA (scikit-learn's `svd_solver="auto"` rule).
RANDOMIZED_PCA_ABOVE = 500


def _fix_signs(components: torch.Tensor) -> torch.Tensor:
    """``(c, F)`` -> same components with each row's largest-|.| loading made positive."""
    if components.numel() == 0:
        return components
    largest = components.abs().argmax(1, keepdim=True)  # (c, 1)
    signs = torch.sign(components.gather(1, largest))
    signs[signs == 0] = 1.0
    return components * signs


def _randomized_components(centred: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Top ``count`` principal axes ``(count, F)`` of the centred ``(N, F)`` block by randomised subspace
    iteration (Halko, Martinsson and Tropp 2011), seeded so that a refit on the same rows is identical."""
    generator = torch.Generator().manual_seed(seed)
    width = min(count + 10, min(centred.shape))  # oversampling
    # scikit-learn's n_iter="auto": 7 power iterations for few components, else 4.
    iterations = 7 if count < 0.1 * min(centred.shape) else 4
    basis = centred @ torch.randn(centred.shape[1], width, generator=generator, dtype=centred.dtype)
    for _ in range(iterations):
        basis, _ = torch.linalg.qr(basis)
        basis, _ = torch.linalg.qr(centred @ (centred.T @ basis))
    basis, _ = torch.linalg.qr(basis)
    _, _, vh = torch.linalg.svd(basis.T @ centred, full_matrices=False)  # (width, F) projected block
    return vh[:count].contiguous()


def pca_components(centred: torch.Tensor, requested: int, seed: int) -> torch.Tensor:
    """Principal axes ``(c, F)`` of a centred float64 block ``(N, F)``, c = min(requested, N - 1, F)."""
    rows, features = centred.shape
    count = min(requested, max(rows - 1, 0), features)
    if count == 0:
        return torch.zeros(0, features, dtype=centred.dtype)
    if max(rows, features) > RANDOMIZED_PCA_ABOVE and count < 0.8 * min(rows, features):
        # A 4096-row buffer of H = 2560 features, 32 or 64 components: an exact decomposition computes all
        # 2560 axes and took ~20 s single-threaded.
        return _fix_signs(_randomized_components(centred, count, seed))
    if rows >= features:
        # The principal axes are the top eigenvectors of Z^T Z: one matmul + eigh, about twice an SVD's speed.
        _, eigenvectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        return _fix_signs(eigenvectors[:, -count:].flip(1).T.contiguous())
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # few rows: Z = U S V^T is cheap
    return _fix_signs(vh[:count].contiguous())


def _scale(std: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """A (numerically) constant column, std <= 1e-12 x max(|mean|, 1), gets scale 1, so it standardises to 0.
    Looser than scikit-learn's test, which catches a centred column only at exactly 0 (module docstring)."""
    constant = std <= 1e-12 * torch.clamp(mean.abs(), min=1.0)
    return torch.where(constant, torch.ones_like(std), std)


def _column_stats(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and scale (population std, 1 for a constant column) of each column; identity with no rows."""
    if block.shape[0] == 0:  # no rows: an identity transform, so shapes still work downstream
        return torch.zeros(block.shape[1], dtype=_DTYPE), torch.ones(block.shape[1], dtype=_DTYPE)
    mean = block.mean(0)
    return mean, _scale(block.std(0, correction=0), mean)


class FeatureTransform:
    """PCA of the raw pooled states, concatenation with the scalars, one standardisation (or, by name, the
    former order: see the module docstring).

    Args:
        prompt_components: PCA dims kept of the pooled prompt states (official: 32).
        response_components: PCA dims kept of the pooled response states (official: 64).
        seed: seed of the randomised PCA (official ``random_seed``: 42).
        order: ``"official"`` or ``"standardise_first"``.
    """

    def __init__(self, prompt_components: int, response_components: int, seed: int, order: str):
        if prompt_components < 0 or response_components < 0:
            raise ValueError("the numbers of PCA components must be >= 0")
        if order not in FEATURE_ORDERS:
            raise ValueError(f"feature order {order!r}: choose one of {list(FEATURE_ORDERS)}")
        self.prompt_components = prompt_components
        self.response_components = response_components
        self.seed = seed
        self.order = order
        self.state: dict[str, torch.Tensor] = {}

    def _pca_fit(self, block: torch.Tensor, requested: int, prefix: str) -> torch.Tensor:
        mean = block.mean(0) if block.shape[0] > 0 else torch.zeros(block.shape[1], dtype=_DTYPE)
        components = pca_components(block - mean, requested, self.seed)
        self.state[f"{prefix}_mean"], self.state[f"{prefix}_components"] = mean, components
        return (block - mean) @ components.T  # PCA scores, (N, c)

    def fit_transform(
        self, prompt: torch.Tensor, response: torch.Tensor, scalar: torch.Tensor
    ) -> torch.Tensor:
        """Learn the transform on ``(N, Hp)``, ``(N, Hr)``, ``(N, S)`` float64 rows; returns x ``(N, D)``."""
        self.state = {}
        scores = []
        for prefix, block, requested in (
            ("prompt", prompt, self.prompt_components),
            ("response", response, self.response_components),
        ):
            if self.order == STANDARDISE_FIRST:
                mean, scale = _column_stats(block)
                self.state[f"{prefix}_input_mean"], self.state[f"{prefix}_input_scale"] = mean, scale
                block = (block - mean) / scale
            scores.append(self._pca_fit(block, requested, prefix))
        joined = torch.cat([*scores, scalar], dim=1)
        mean, scale = _column_stats(joined)
        if self.order == STANDARDISE_FIRST:  # the PCA scores stay unscaled; only the scalars are standardised
            width = sum(block.shape[1] for block in scores)
            mean[:width], scale[:width] = 0.0, 1.0
        self.state["mean"], self.state["scale"] = mean, scale
        return (joined - mean) / scale

    def transform(self, prompt: torch.Tensor, response: torch.Tensor, scalar: torch.Tensor) -> torch.Tensor:
        """Apply the learned transform to new float64 rows."""
        state = self.state
        parts = []
        for prefix, block in (("prompt", prompt), ("response", response)):
            if f"{prefix}_input_mean" in state:
                block = (block - state[f"{prefix}_input_mean"]) / state[f"{prefix}_input_scale"]
            parts.append((block - state[f"{prefix}_mean"]) @ state[f"{prefix}_components"].T)
        joined = torch.cat([*parts, scalar], dim=1)
        return (joined - state["mean"]) / state["scale"]

    @property
    def num_prompt_components(self) -> int:
        return int(self.state["prompt_components"].shape[0])

    @property
    def num_response_components(self) -> int:
        return int(self.state["response_components"].shape[0])
