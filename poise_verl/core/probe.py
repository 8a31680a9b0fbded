"""The value probe g: predicts a rollout's expected reward from the actor's own internal state.

GRPO/DAPO need no value model: they normalise rewards within a large group of rollouts (n = 16 for DAPO).
PPO trains a separate critic network. POISE instead fits a tiny probe g on features phi the actor already
computes (pooled hidden states of one layer plus entropy statistics) and uses g's predictions on sibling
rollouts as baselines: b_i = mean_{j != i} g(phi_j), A_i = R_i - b_i (see ``cross_rollout``). The probe is
refit from scratch every step on a replay buffer of (phi_j, mean reward of j's siblings) rows.

All probes share one front end, fitted on the training rows only:

1. standardise each block (prompt pool ``(N, Hp)``, response pool ``(N, Hr)``, scalars ``(N, S)``): mean
   and std over the fit rows, std floored at ``std_floor`` so constant columns map to 0;
2. PCA of the standardised prompt block to 32 dims and of the response block to 64 dims (official
   defaults; 32 + 64 + 3 scalars = 99 inputs). When there are fewer rows or features than requested, the
   block keeps ``min(requested, n_rows - 1, n_features)`` components (centred data of N rows has rank at
   most N - 1; a further component would be an arbitrary null-space direction). PCA runs in float64, as an
   eigendecomposition of the (F, F) Gram matrix when N >= F and an SVD of the data otherwise; each
   component's sign is fixed so that its largest-magnitude loading is positive, which makes the fit
   deterministic;
3. concatenate ``[prompt scores, response scores, standardised scalars]`` -> ``(N, D)``.

Heads (``PROBE_REGISTRY``):

- ``"ridge"``, ``PCARidgeProbe`` (official default): closed-form ridge, alpha = 100, unpenalised intercept,
  float64, predictions clipped to [0, 1]. "Linear ridge is competitive with larger MLP probes."
- ``"logistic"``, ``LogisticProbe``: sigmoid output trained with BCE on targets in [0, 1] by LBFGS, with an
  L2 penalty.
- ``"mlp"``, ``MLPProbe``: one hidden layer of 64 ReLU units, sigmoid output, BCE, Adam lr 1e-3, a fixed
  number of epochs, seeded mini-batch order and initialisation.

Degenerate fits never raise: with fewer than 2 rows, or when every target is equal, there is nothing to
regress, and the probe becomes a constant predictor equal to the mean target clipped to [0, 1] (0.5 when
there are no rows at all, the midpoint of the reward range). ``fit`` reports this as
``constant_fallback = 1``. Predicting before any ``fit`` raises ``RuntimeError``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "PROBE_REGISTRY",
    "LogisticProbe",
    "MLPProbe",
    "PCARidgeProbe",
    "ValueProbe",
    "build_probe",
    "ridge_fit",
]

_DTYPE = torch.float64


def _as_matrix(values: torch.Tensor, name: str) -> torch.Tensor:
    if values.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, features), got shape {tuple(values.shape)}")
    return values.detach().to(device="cpu", dtype=_DTYPE)


def _fix_signs(components: torch.Tensor) -> torch.Tensor:
    """``(c, F)`` -> same components with each row's largest-|.| loading made positive."""
    if components.numel() == 0:
        return components
    largest = components.abs().argmax(1, keepdim=True)  # (c, 1)
    signs = torch.sign(components.gather(1, largest))
    signs[signs == 0] = 1.0
    return components * signs


# Blocks with more rows or features than this use randomised PCA (scikit-learn's `svd_solver="auto"` rule).
RANDOMIZED_PCA_ABOVE = 500


def _randomized_components(z: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Top ``count`` principal axes ``(count, F)`` of the centred ``(N, F)`` block ``z`` by randomised subspace
    iteration (Halko, Martinsson and Tropp 2011), seeded so that a refit on the same rows is identical."""
    generator = torch.Generator().manual_seed(seed)
    width = min(count + 10, min(z.shape))  # oversampling
    # scikit-learn's n_iter="auto": 7 power iterations for few components, else 4.
    iterations = 7 if count < 0.1 * min(z.shape) else 4
    basis = z @ torch.randn(z.shape[1], width, generator=generator, dtype=z.dtype)  # (N, width)
    for _ in range(iterations):
        basis, _ = torch.linalg.qr(basis)
        basis, _ = torch.linalg.qr(z @ (z.T @ basis))
    basis, _ = torch.linalg.qr(basis)
    _, _, vh = torch.linalg.svd(basis.T @ z, full_matrices=False)  # (width, F) projected block
    return vh[:count].contiguous()


class _FrontEnd:
    """Standardise each block, PCA the two hidden-state blocks, concatenate (see module docstring)."""

    def __init__(self, prompt_components: int, response_components: int, std_floor: float, seed: int = 0):
        self.prompt_components = prompt_components
        self.response_components = response_components
        self.std_floor = std_floor
        self.seed = seed
        self.state: dict[str, torch.Tensor] = {}

    def _standardise_fit(self, block: torch.Tensor, prefix: str) -> torch.Tensor:
        if block.shape[0] > 0:
            mean, std = block.mean(0), block.std(0, correction=0).clamp(min=self.std_floor)
        else:  # no rows: an identity transform, so shapes still work downstream
            mean, std = torch.zeros(block.shape[1], dtype=_DTYPE), torch.ones(block.shape[1], dtype=_DTYPE)
        self.state[f"{prefix}_mean"], self.state[f"{prefix}_std"] = mean, std
        return (block - mean) / std

    def _pca_fit(self, standardised: torch.Tensor, requested: int, prefix: str) -> torch.Tensor:
        rows, features = standardised.shape
        # Centred data of N rows has rank <= N - 1: a further component would be an arbitrary direction of
        # the null space (LAPACK-dependent), so keep at most N - 1.
        count = min(requested, max(rows - 1, 0), features)
        if count == 0:
            components = torch.zeros(0, features, dtype=_DTYPE)
        elif max(rows, features) > RANDOMIZED_PCA_ABOVE and count < 0.8 * min(rows, features):
            # Large blocks (a 4096-row buffer of H = 2560 features), few components: randomised PCA, as
            # scikit-learn's PCA (the official code's) does in this regime. An exact eigendecomposition computes
            # all 2560 axes to keep 32 or 64 and took ~20 s single-threaded.
            components = _fix_signs(_randomized_components(standardised, count, self.seed))
        elif rows >= features:
            # The usual case (a 4096-row buffer, H = 2560): the principal axes are the top eigenvectors of
            # the (F, F) Gram matrix Z^T Z; one matmul + eigh is about twice as fast as an SVD of Z.
            _, eigenvectors = torch.linalg.eigh(standardised.T @ standardised)  # ascending eigenvalues
            components = _fix_signs(eigenvectors[:, -count:].flip(1).T.contiguous())
        else:
            # Few rows: Z = U S V^T is cheap; the principal axes are the rows of V^T (sorted by S).
            _, _, vh = torch.linalg.svd(standardised, full_matrices=False)
            components = _fix_signs(vh[:count].contiguous())
        self.state[f"{prefix}_components"] = components
        return standardised @ components.T

    def fit_transform(
        self, prompt: torch.Tensor, response: torch.Tensor, scalar: torch.Tensor
    ) -> torch.Tensor:
        self.state = {}
        prompt_scores = self._pca_fit(
            self._standardise_fit(prompt, "prompt"), self.prompt_components, "prompt"
        )
        response_scores = self._pca_fit(
            self._standardise_fit(response, "response"), self.response_components, "response"
        )
        scalar_scores = self._standardise_fit(scalar, "scalar")
        return torch.cat([prompt_scores, response_scores, scalar_scores], dim=1)

    def transform(self, prompt: torch.Tensor, response: torch.Tensor, scalar: torch.Tensor) -> torch.Tensor:
        state = self.state
        parts = []
        for prefix, block in (("prompt", prompt), ("response", response)):
            standardised = (block - state[f"{prefix}_mean"]) / state[f"{prefix}_std"]
            parts.append(standardised @ state[f"{prefix}_components"].T)
        parts.append((scalar - state["scalar_mean"]) / state["scalar_std"])
        return torch.cat(parts, dim=1)

    @property
    def num_prompt_components(self) -> int:
        return int(self.state["prompt_components"].shape[0])

    @property
    def num_response_components(self) -> int:
        return int(self.state["response_components"].shape[0])


class ValueProbe:
    """Base class of the value probes: a shared front end, a head, a constant fallback.

    Subclasses implement ``_fit_head(x (N, D) float64, y (N,) float64) -> dict``,
    ``_predict_head(x (N, D)) -> (N,)`` and ``_head_state`` / ``_load_head_state``.
    """

    name = "base"

    def __init__(
        self,
        prompt_components: int = 32,
        response_components: int = 64,
        std_floor: float = 1e-6,
        seed: int = 0,
    ):
        if prompt_components < 0 or response_components < 0:
            raise ValueError("the numbers of PCA components must be >= 0")
        if std_floor <= 0:
            raise ValueError(f"std_floor must be > 0, got {std_floor}")
        self.prompt_components = prompt_components
        self.response_components = response_components
        self.std_floor = std_floor
        self.seed = seed
        self._front_end = _FrontEnd(prompt_components, response_components, std_floor, seed)
        self._dims: tuple[int, int, int] | None = None  # (Hp, Hr, S) seen at fit time
        self._constant: float | None = None  # set when the last fit fell back to a constant

    # ----------------------------------------------------------------- public API
    @property
    def is_fitted(self) -> bool:
        """True once ``fit`` (or ``load_state_dict`` of a fitted probe) has run."""
        return self._dims is not None

    def config(self) -> dict[str, Any]:
        """Constructor arguments, enough to rebuild an equal probe with ``build_probe(name, **config)``."""
        return {
            "prompt_components": self.prompt_components,
            "response_components": self.response_components,
            "std_floor": self.std_floor,
            "seed": self.seed,
        }

    def fit(
        self,
        prompt_feats: torch.Tensor,
        response_feats: torch.Tensor,
        scalar_feats: torch.Tensor,
        targets: torch.Tensor,
    ) -> dict[str, float]:
        """Refit g from scratch on ``(phi_j, target_j)`` rows.

        Args:
            prompt_feats: ``(N, Hp)`` pooled prompt hidden states.
            response_feats: ``(N, Hr)`` pooled response hidden states.
            scalar_feats: ``(N, S)`` scalar features (entropy statistics; ``S`` may be 0).
            targets: ``(N,)`` in [0, 1]; in POISE the mean reward of row j's siblings (``sibling_targets``).

        Returns:
            metrics: ``rows``, ``train_mae``, ``train_rmse`` (in-sample), ``prompt_components``,
            ``response_components``, ``constant_fallback`` (1.0 when the fit degenerated to a constant).
        """
        prompt, response, scalar = self._check_inputs(prompt_feats, response_feats, scalar_feats)
        y = targets.detach().to(device="cpu", dtype=_DTYPE).reshape(-1)
        if y.shape[0] != prompt.shape[0]:
            raise ValueError(f"targets have {y.shape[0]} rows, features have {prompt.shape[0]}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("targets contain NaN or inf")
        if rows_outside := int(((y < 0) | (y > 1)).sum()):
            # Predictions are clipped to [0, 1] and the sigmoid heads use BCE: a reward in {-1, 1} (verl's
            # DAPO math score) must be mapped to correctness in {0, 1} first, as the official code does.
            raise ValueError(f"{rows_outside} target(s) outside [0, 1]; map rewards to [0, 1] before fitting")
        rows = prompt.shape[0]
        self._dims = None
        x = self._front_end.fit_transform(prompt, response, scalar)  # (N, D) float64
        self._dims = (prompt.shape[1], response.shape[1], scalar.shape[1])
        degenerate = rows < 2 or float(y.max() - y.min()) <= 1e-12
        if degenerate:
            # Nothing to regress: predict the mean target (0.5 with no rows, the middle of [0, 1]).
            self._constant = float(y.mean().clamp(0.0, 1.0)) if rows > 0 else 0.5
            head_metrics: dict[str, float] = {}
        else:
            self._constant = None
            head_metrics = self._fit_head(x, y)
        fitted = self._predict_features(x) if rows > 0 else torch.zeros(0, dtype=_DTYPE)
        error = fitted - y
        metrics = {
            "rows": float(rows),
            "train_mae": float(error.abs().mean()) if rows > 0 else 0.0,
            "train_rmse": float(error.pow(2).mean().sqrt()) if rows > 0 else 0.0,
            "prompt_components": float(self._front_end.num_prompt_components),
            "response_components": float(self._front_end.num_response_components),
            "constant_fallback": 1.0 if degenerate else 0.0,
        }
        metrics.update(head_metrics)
        return metrics

    def predict(
        self, prompt_feats: torch.Tensor, response_feats: torch.Tensor, scalar_feats: torch.Tensor
    ) -> torch.Tensor:
        """g(phi): predicted expected reward of each row.

        Args:
            prompt_feats: ``(N, Hp)``; response_feats: ``(N, Hr)``; scalar_feats: ``(N, S)``, with the
                feature sizes seen by ``fit``.

        Returns:
            ``(N,)`` float32 in [0, 1], on the device of ``prompt_feats``.
        """
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__}.predict called before fit (or load_state_dict)")
        prompt, response, scalar = self._check_inputs(prompt_feats, response_feats, scalar_feats)
        dims = (prompt.shape[1], response.shape[1], scalar.shape[1])
        if dims != self._dims:
            raise ValueError(
                f"feature sizes (Hp, Hr, S) = {dims} differ from those seen by fit: {self._dims}"
            )
        x = self._front_end.transform(prompt, response, scalar)
        return self._predict_features(x).to(dtype=torch.float32, device=prompt_feats.device)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, numbers and strings (``torch.save``-able, loadable with ``weights_only=True``)."""
        return {
            "probe": self.name,
            "config": self.config(),
            "dims": list(self._dims) if self._dims is not None else None,
            "constant": self._constant,
            "front_end": {key: value.clone() for key, value in self._front_end.state.items()},
            "head": self._head_state() if self._dims is not None and self._constant is None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a probe saved by ``state_dict`` (of the same probe class)."""
        if state.get("probe") != self.name:
            raise ValueError(f"state of probe {state.get('probe')!r} cannot be loaded into {self.name!r}")
        for key, value in state["config"].items():
            setattr(self, key, value)
        self._front_end = _FrontEnd(self.prompt_components, self.response_components, self.std_floor, self.seed)
        self._front_end.state = {key: value.clone() for key, value in state["front_end"].items()}
        self._dims = tuple(state["dims"]) if state["dims"] is not None else None
        self._constant = state["constant"]
        if self._dims is not None and self._constant is None:
            self._load_head_state(state["head"])

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _check_inputs(
        prompt_feats: torch.Tensor, response_feats: torch.Tensor, scalar_feats: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prompt = _as_matrix(prompt_feats, "prompt_feats")
        response = _as_matrix(response_feats, "response_feats")
        scalar = _as_matrix(scalar_feats, "scalar_feats")
        if not prompt.shape[0] == response.shape[0] == scalar.shape[0]:
            raise ValueError(
                f"row counts differ: prompt {prompt.shape[0]}, response {response.shape[0]}, "
                f"scalar {scalar.shape[0]}"
            )
        return prompt, response, scalar

    def _predict_features(self, x: torch.Tensor) -> torch.Tensor:
        if self._constant is not None:
            return torch.full((x.shape[0],), self._constant, dtype=_DTYPE)
        return self._predict_head(x).clamp(0.0, 1.0)

    # ----------------------------------------------------------------- head interface
    def _fit_head(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def _predict_head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _head_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError


def ridge_fit(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge with an unpenalised intercept.

    Minimises ``||y - x w - c||^2 + alpha ||w||^2``: centre x and y, solve
    ``(Xc^T Xc + alpha I) w = Xc^T yc``, then ``c = mean(y) - mean(x) w``.

    Args:
        x: ``(N, D)`` float64; y: ``(N,)`` float64; alpha >= 0 (alpha = 0 needs full column rank).

    Returns:
        ``(w (D,), c ())``.
    """
    x_mean, y_mean = x.mean(0), y.mean()
    centred_x, centred_y = x - x_mean, y - y_mean
    gram = centred_x.T @ centred_x + alpha * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, centred_x.T @ centred_y)
    return weights, y_mean - x_mean @ weights


class PCARidgeProbe(ValueProbe):
    """Standardise + PCA (32 / 64) + ridge (alpha = 100), the official POISE probe."""

    name = "ridge"

    def __init__(
        self,
        prompt_components: int = 32,
        response_components: int = 64,
        alpha: float = 100.0,
        std_floor: float = 1e-6,
        seed: int = 0,
    ):
        super().__init__(prompt_components, response_components, std_floor, seed)
        if alpha < 0:
            raise ValueError(f"ridge alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self._weights = torch.zeros(0, dtype=_DTYPE)
        self._intercept = torch.zeros((), dtype=_DTYPE)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha": self.alpha}

    def _fit_head(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self._weights, self._intercept = ridge_fit(x, y, self.alpha)
        return {}

    def _predict_head(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._weights + self._intercept

    def _head_state(self) -> dict[str, torch.Tensor]:
        return {"weights": self._weights.clone(), "intercept": self._intercept.clone()}

    def _load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        self._weights, self._intercept = state["weights"].clone(), state["intercept"].clone()


class LogisticProbe(ValueProbe):
    """Same front end, sigmoid output trained with BCE by LBFGS.

    Minimises ``mean_i BCE(sigmoid(x_i w + c), y_i) + l2 / (2 N) ||w||^2`` (sklearn's
    ``LogisticRegression`` objective with ``C = 1 / l2``; the intercept is unpenalised). The problem is
    convex and starts from ``w = 0, c = logit(mean y)``, so the result is deterministic; ``seed`` is kept
    for the common interface.
    """

    name = "logistic"

    def __init__(
        self,
        prompt_components: int = 32,
        response_components: int = 64,
        l2: float = 1.0,
        max_iter: int = 200,
        std_floor: float = 1e-6,
        seed: int = 0,
    ):
        super().__init__(prompt_components, response_components, std_floor, seed)
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2 = l2
        self.max_iter = max_iter
        self._weights = torch.zeros(0, dtype=_DTYPE)
        self._intercept = torch.zeros((), dtype=_DTYPE)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "l2": self.l2, "max_iter": self.max_iter}

    def _fit_head(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        rows = x.shape[0]
        mean = float(y.mean().clamp(1e-4, 1 - 1e-4))
        weights = torch.zeros(x.shape[1], dtype=_DTYPE, requires_grad=True)
        intercept = torch.tensor(math.log(mean / (1 - mean)), dtype=_DTYPE, requires_grad=True)
        optimiser = torch.optim.LBFGS(
            [weights, intercept],
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            logits = x @ weights + intercept
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            loss = loss + 0.5 * self.l2 / rows * weights.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            final_loss = optimiser.step(closure)
        self._weights, self._intercept = weights.detach().clone(), intercept.detach().clone()
        return {"train_loss": float(final_loss.detach())}

    def _predict_head(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x @ self._weights + self._intercept)

    def _head_state(self) -> dict[str, torch.Tensor]:
        return {"weights": self._weights.clone(), "intercept": self._intercept.clone()}

    def _load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        self._weights, self._intercept = state["weights"].clone(), state["intercept"].clone()


class MLPProbe(ValueProbe):
    """Same front end, one hidden ReLU layer (64), sigmoid output, BCE, Adam (lr 1e-3).

    Training runs a fixed number of epochs over mini-batches whose order, like the initial weights, comes
    from a ``torch.Generator`` seeded with ``seed``: the same rows give the same probe.
    """

    name = "mlp"

    def __init__(
        self,
        prompt_components: int = 32,
        response_components: int = 64,
        hidden: int = 64,
        lr: float = 1e-3,
        epochs: int = 50,
        batch_size: int = 256,
        std_floor: float = 1e-6,
        seed: int = 0,
    ):
        super().__init__(prompt_components, response_components, std_floor, seed)
        if hidden < 1 or epochs < 1 or batch_size < 1:
            raise ValueError("hidden, epochs and batch_size must all be >= 1")
        self.hidden = hidden
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self._params: dict[str, torch.Tensor] = {}

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "hidden": self.hidden,
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
        }

    def _logits(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = torch.relu(x @ params["w1"] + params["b1"])  # (N, hidden)
        return (hidden @ params["w2"] + params["b2"]).squeeze(-1)  # (N,)

    def _fit_head(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.seed)
        rows, width = x.shape

        def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
            # PyTorch's Linear initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from our generator.
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            values = torch.rand(shape, generator=generator, dtype=_DTYPE) * 2 * bound - bound
            return values.requires_grad_(True)

        params = {
            "w1": uniform((width, self.hidden), width),
            "b1": uniform((self.hidden,), width),
            "w2": uniform((self.hidden, 1), self.hidden),
            "b2": uniform((1,), self.hidden),
        }
        optimiser = torch.optim.Adam(list(params.values()), lr=self.lr)
        loss = torch.zeros((), dtype=_DTYPE)
        with torch.enable_grad():
            for _ in range(self.epochs):
                order = torch.randperm(rows, generator=generator)
                for start in range(0, rows, self.batch_size):
                    batch = order[start : start + self.batch_size]
                    optimiser.zero_grad()
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(
                        self._logits(x[batch], params), y[batch]
                    )
                    loss.backward()
                    optimiser.step()
        self._params = {key: value.detach().clone() for key, value in params.items()}
        return {"train_loss": float(loss.detach())}

    def _predict_head(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._logits(x, self._params))

    def _head_state(self) -> dict[str, torch.Tensor]:
        return {key: value.clone() for key, value in self._params.items()}

    def _load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        self._params = {key: value.clone() for key, value in state.items()}


# One registry: the config names a probe, ``build_probe`` builds it.
PROBE_REGISTRY: dict[str, type[ValueProbe]] = {
    PCARidgeProbe.name: PCARidgeProbe,
    LogisticProbe.name: LogisticProbe,
    MLPProbe.name: MLPProbe,
}


def build_probe(name: str, **kwargs: Any) -> ValueProbe:
    """Build the probe registered under ``name`` (``"ridge"``, ``"logistic"``, ``"mlp"``)."""
    if name not in PROBE_REGISTRY:
        raise ValueError(f"unknown probe {name!r}; valid names: {sorted(PROBE_REGISTRY)}")
    return PROBE_REGISTRY[name](**kwargs)
