"""The value probe g: predicts a rollout's expected reward from the actor's own internal state.

GRPO/DAPO need no value model: they normalise rewards within a large group of rollouts (n = 16 for DAPO).
PPO trains a separate critic network. POISE instead fits a tiny probe g on features phi the actor already
computes (pooled hidden states of one layer plus entropy statistics) and uses g's predictions on sibling
rollouts as baselines: b_i = mean_{j != i} g(phi_j), A_i = R_i - b_i (see ``cross_rollout``). The probe is
refit from scratch every step on a replay buffer of (phi_j, mean reward of j's siblings) rows.

Every probe shares one input transform (``probe_features.FeatureTransform``, by default the official order: PCA
of the raw pooled states to 32 / 64 dims, concatenation with the scalars, one standardisation; the former
``standardise_first`` order by name) and differs in its
head (``PROBE_REGISTRY``), each matching the official ``fit_estimator`` (holi-lab/POISE
``src/poise/estimator.py``) with the official fit config's single ``alpha`` as its penalty:

- ``"ridge"``, ``PCARidgeProbe`` (official default): closed-form ridge, alpha = 100, unpenalised intercept,
  float64. "Linear ridge is competitive with larger MLP probes."
- ``"logistic"``, ``LogisticProbe`` (official ``sigmoid_bce``): sigmoid output, BCE against targets clipped
  to [1e-6, 1 - 1e-6], L2 penalty ``l2 / (2 N) ||w||^2``, LBFGS from w = 0 and the intercept at the logit
  of the mean target.
- ``"mlp"``, ``MLPProbe`` (official: scikit-learn's ``MLPRegressor``): one hidden ReLU layer of 64, identity
  output, squared loss plus ``l2 / (2 b) ||W||^2`` per mini-batch of b rows, Adam lr 1e-3, mini-batches of
  min(8192, N) rows reshuffled every epoch, at most ``epochs`` (1000) epochs, stopping once the epoch loss
  has not improved by 1e-4 for 10 epochs (scikit-learn's ``tol`` and ``n_iter_no_change``), Glorot-uniform
  initialisation from a seeded generator.

Predictions are clipped to [0, 1] (the reward range). Degenerate fits never raise: with fewer than 2 rows,
or when every target is equal, there is nothing to regress, and the probe becomes a constant predictor
equal to the mean target clipped to [0, 1] (0.5 with no rows at all, the midpoint of the reward range);
``fit`` reports it as ``constant_fallback = 1``. Predicting before any ``fit`` raises ``RuntimeError``.

Hyperparameters have no defaults here: the one source of defaults is the ``poise.probe`` section of the
Hydra tree (``hydra_configs/poise_trainer.yaml``), read by ``poise_verl.config``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from poise_verl.core.probe_features import FeatureTransform

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


class ValueProbe:
    """Base class of the value probes: the shared input transform, a head, a constant fallback.

    Subclasses implement ``_fit_head(x (N, D) float64, y (N,) float64) -> dict``,
    ``_predict_head(x (N, D)) -> (N,)``, ``_head_state`` / ``_load_head_state`` and ``config``.
    """

    name = "base"

    def __init__(self, prompt_components: int, response_components: int, seed: int, feature_order: str):
        self.prompt_components = prompt_components
        self.response_components = response_components
        self.seed = seed
        self.feature_order = feature_order
        self._transform = FeatureTransform(prompt_components, response_components, seed, feature_order)
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
            "seed": self.seed,
            "feature_order": self.feature_order,
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
            # Predictions are clipped to [0, 1] and the sigmoid head uses BCE: a reward in {-1, 1} (verl's
            # DAPO math score) must be mapped to correctness in {0, 1} first, as the official code does.
            raise ValueError(f"{rows_outside} target(s) outside [0, 1]; map rewards to [0, 1] before fitting")
        rows = prompt.shape[0]
        self._dims = None
        x = self._transform.fit_transform(prompt, response, scalar)  # (N, D) float64
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
            "prompt_components": float(self._transform.num_prompt_components),
            "response_components": float(self._transform.num_response_components),
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
        x = self._transform.transform(prompt, response, scalar)
        return self._predict_features(x).to(dtype=torch.float32, device=prompt_feats.device)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, numbers and strings (``torch.save``-able, loadable with ``weights_only=True``)."""
        return {
            "probe": self.name,
            "config": self.config(),
            "dims": list(self._dims) if self._dims is not None else None,
            "constant": self._constant,
            "transform": {key: value.clone() for key, value in self._transform.state.items()},
            "head": self._head_state() if self._dims is not None and self._constant is None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a probe saved by ``state_dict`` (of the same probe class)."""
        if state.get("probe") != self.name:
            raise ValueError(f"state of probe {state.get('probe')!r} cannot be loaded into {self.name!r}")
        if "transform" not in state:
            raise ValueError(
                "this probe state predates the official feature order (PCA of the raw states, then one "
                "standardisation); it cannot be loaded: start the run in a new folder"
            )
        for key, value in state["config"].items():
            setattr(self, key, value)
        self._transform = FeatureTransform(
            self.prompt_components, self.response_components, self.seed, self.feature_order
        )
        self._transform.state = {key: value.clone() for key, value in state["transform"].items()}
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


class _LinearHead(ValueProbe):
    """A head with a weight vector and an intercept (ridge, logistic)."""

    def __init__(self, prompt_components: int, response_components: int, seed: int, feature_order: str):
        super().__init__(prompt_components, response_components, seed, feature_order)
        self._weights = torch.zeros(0, dtype=_DTYPE)
        self._intercept = torch.zeros((), dtype=_DTYPE)

    def _head_state(self) -> dict[str, torch.Tensor]:
        return {"weights": self._weights.clone(), "intercept": self._intercept.clone()}

    def _load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        self._weights, self._intercept = state["weights"].clone(), state["intercept"].clone()


class PCARidgeProbe(_LinearHead):
    """PCA (32 / 64) + standardise + ridge (alpha = 100): the official POISE probe."""

    name = "ridge"

    def __init__(
        self, *, prompt_components: int, response_components: int, seed: int, feature_order: str, alpha: float
    ):
        super().__init__(prompt_components, response_components, seed, feature_order)
        if alpha < 0:
            raise ValueError(f"ridge alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha": self.alpha}

    def _fit_head(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self._weights, self._intercept = ridge_fit(x, y, self.alpha)
        return {}

    def _predict_head(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._weights + self._intercept


class LogisticProbe(_LinearHead):
    """Same transform, sigmoid output trained with BCE by LBFGS (the official ``sigmoid_bce`` head).

    Minimises ``mean_i BCE(sigmoid(x_i w + c), y_i) + l2 / (2 N) ||w||^2`` with targets clipped to
    [1e-6, 1 - 1e-6]; convex, started from ``w = 0, c = logit(mean y)``, so the result is deterministic.
    """

    name = "logistic"
    TARGET_EPS = 1e-6

    def __init__(
        self,
        *,
        prompt_components: int,
        response_components: int,
        seed: int,
        feature_order: str,
        l2: float,
        max_iter: int,
    ):
        super().__init__(prompt_components, response_components, seed, feature_order)
        if l2 < 0 or max_iter < 1:
            raise ValueError(
                f"logistic probe needs l2 >= 0 and max_iter >= 1, got l2={l2}, max_iter={max_iter}"
            )
        self.l2 = l2
        self.max_iter = max_iter

    def config(self) -> dict[str, Any]:
        return {**super().config(), "l2": self.l2, "max_iter": self.max_iter}

    def _fit_head(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        rows = x.shape[0]
        y = y.clamp(self.TARGET_EPS, 1 - self.TARGET_EPS)
        mean = float(y.mean())
        weights = torch.zeros(x.shape[1], dtype=_DTYPE, requires_grad=True)
        intercept = torch.tensor(math.log(mean / (1 - mean)), dtype=_DTYPE, requires_grad=True)
        optimiser = torch.optim.LBFGS(
            [weights, intercept], lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weights + intercept, y)
            loss = loss + 0.5 * self.l2 / rows * weights.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            final_loss = optimiser.step(closure)
        self._weights, self._intercept = weights.detach().clone(), intercept.detach().clone()
        return {"train_loss": float(final_loss.detach())}

    def _predict_head(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x @ self._weights + self._intercept)


class MLPProbe(ValueProbe):
    """Same transform, one hidden ReLU layer, identity output, squared loss (scikit-learn's MLPRegressor).

    Mini-batch order and initial weights come from a ``torch.Generator`` seeded with ``seed``: the same rows
    give the same probe.
    """

    name = "mlp"
    TOLERANCE = 1e-4  # scikit-learn's MLP tol
    PATIENCE = 10  # scikit-learn's n_iter_no_change

    def __init__(
        self,
        *,
        prompt_components: int,
        response_components: int,
        seed: int,
        feature_order: str,
        hidden: int,
        lr: float,
        epochs: int,
        batch_size: int,
        l2: float,
    ):
        super().__init__(prompt_components, response_components, seed, feature_order)
        if hidden < 1 or epochs < 1 or batch_size < 1 or lr <= 0 or l2 < 0:
            raise ValueError(
                "mlp probe needs hidden, epochs, batch_size >= 1, lr > 0 and l2 >= 0; got "
                f"hidden={hidden}, epochs={epochs}, batch_size={batch_size}, lr={lr}, l2={l2}"
            )
        self.hidden, self.lr, self.epochs, self.batch_size, self.l2 = hidden, lr, epochs, batch_size, l2
        self._params: dict[str, torch.Tensor] = {}

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "hidden": self.hidden,
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "l2": self.l2,
        }

    @staticmethod
    def _forward(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = torch.relu(x @ params["w1"] + params["b1"])  # (N, hidden)
        return (hidden @ params["w2"] + params["b2"]).squeeze(-1)  # (N,)

    def _fit_head(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.seed)
        rows, width = x.shape

        def glorot(fan_in: int, fan_out: int, shape: tuple[int, ...]) -> torch.Tensor:
            bound = math.sqrt(6.0 / (fan_in + fan_out))  # scikit-learn's init for ReLU layers
            return (torch.rand(shape, generator=generator, dtype=_DTYPE) * 2 * bound - bound).requires_grad_(
                True
            )

        params = {
            "w1": glorot(width, self.hidden, (width, self.hidden)),
            "b1": glorot(width, self.hidden, (self.hidden,)),
            "w2": glorot(self.hidden, 1, (self.hidden, 1)),
            "b2": glorot(self.hidden, 1, (1,)),
        }
        optimiser = torch.optim.Adam(list(params.values()), lr=self.lr, eps=1e-8)
        batch = min(self.batch_size, rows)
        best, stale, epochs_run, epoch_loss = math.inf, 0, 0, math.inf
        with torch.enable_grad():
            for _ in range(self.epochs):
                order = torch.randperm(rows, generator=generator)
                total = 0.0
                for start in range(0, rows, batch):
                    index = order[start : start + batch]
                    optimiser.zero_grad()
                    error = self._forward(x[index], params) - y[index]
                    penalty = params["w1"].pow(2).sum() + params["w2"].pow(2).sum()
                    loss = 0.5 * error.pow(2).mean() + 0.5 * self.l2 * penalty / index.numel()
                    loss.backward()
                    optimiser.step()
                    total += float(loss.detach()) * index.numel()
                epoch_loss, epochs_run = total / rows, epochs_run + 1
                stale = stale + 1 if epoch_loss > best - self.TOLERANCE else 0
                best = min(best, epoch_loss)
                if stale >= self.PATIENCE:
                    break
        self._params = {key: value.detach().clone() for key, value in params.items()}
        return {"train_loss": epoch_loss, "epochs": float(epochs_run)}

    def _predict_head(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, self._params)

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
