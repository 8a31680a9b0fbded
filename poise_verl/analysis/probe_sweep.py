"""The probe side of the value-estimator study: which layers, the probe fitted on each, and its cost.

At every swept layer the probe (by default the official one: PCA of the raw pooled states, one standardisation,
ridge; ``--probe-order standardise_first`` for the former order) is fitted on the training prompts' rollouts,
grouped in pairs as POISE trains (n = 2: each row's target is its sibling's reward), and predicts the held-out
rollouts; a held-out prompt's value estimate is the mean prediction over its m rollouts, and over one pair.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from poise_verl.analysis.features import RolloutFeatures
from poise_verl.core.cross_rollout import sibling_targets
from poise_verl.core.diagnostics import baseline_diagnostics
from poise_verl.core.probe import build_probe
from poise_verl.core.probe_features import RANDOMIZED_PCA_ABOVE

# POISE reads decoder layer 19 of Qwen3-4B's 36; the default probe layer keeps that relative depth.
OFFICIAL_LAYER_FRACTION = 19 / 36


def metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MAE, RMSE and Pearson of value estimates against pass rates (Pearson 0 for a constant side)."""
    diagnostics = baseline_diagnostics(rewards=target, baselines=predicted)
    return {key: diagnostics[key] for key in ("pearson", "mae", "rmse")}


def choose_layers(spec: str, probe_layer: int | None, count: int) -> tuple[list[int], int]:
    """The swept layers (``'all'`` or comma-separated, 0-based) and the main comparison's layer, which is
    always swept (default: POISE's relative depth, 19/36 of the decoder)."""
    if spec.strip().lower() == "all":
        layers = list(range(count))
    else:
        layers = sorted({int(v) for v in spec.split(",") if v.strip()})
        bad = [layer for layer in layers if not 0 <= layer < count]
        if bad:
            raise ValueError(f"--layers {bad} outside the model's {count} decoder layers (0-based)")
    main = probe_layer if probe_layer is not None else round(OFFICIAL_LAYER_FRACTION * count)
    main = min(max(main, 0), count - 1)
    return sorted({*layers, main}), main


def probe_fit_flops(rows: int, widths: tuple[int, int, int], components: tuple[int, int]) -> float:
    """Approximate floating-point operations of one ridge probe fit (order of magnitude), in the official
    order of ``core.probe_features``.

    Per hidden-state block of ``F`` features keeping ``c`` components: centring (~2NF), the PCA the core runs
    (Gram matrix 2NF^2 + symmetric eigendecomposition ~9F^3; thin SVD ~4FN^2 + 8N^3 when N < F; randomised
    subspace iteration ~2(2q+2)NF(c+10) for large blocks), projection 2NFc; then one standardisation of the
    ``D`` joined columns (~4ND) and ridge on them: 2ND^2 + D^3/3. Golub & Van Loan's operation counts.
    """
    total = 0.0
    for features, requested in zip(widths[:2], components, strict=True):
        total += 2.0 * rows * features
        count = min(requested, max(rows - 1, 0), features)
        if count == 0:
            continue
        if max(rows, features) > RANDOMIZED_PCA_ABOVE and count < 0.8 * min(rows, features):
            width = min(count + 10, min(rows, features))
            iterations = 7 if count < 0.1 * min(rows, features) else 4
            total += 2.0 * (2 * iterations + 2) * rows * features * width
        elif rows >= features:
            total += 2.0 * rows * features**2 + 9.0 * features**3
        else:
            total += 4.0 * features * rows**2 + 8.0 * rows**3
        total += 2.0 * rows * features * count
    inputs = min(components[0], widths[0], max(rows - 1, 0)) + min(components[1], widths[1], max(rows - 1, 0))
    inputs += widths[2]
    total += 4.0 * rows * inputs + 2.0 * rows * inputs**2 + inputs**3 / 3.0
    return total


@dataclass(frozen=True)
class ProbeSettings:
    prompt_components: int
    response_components: int
    alpha: float
    seed: int
    feature_order: str

    def new_probe(self):
        return build_probe(
            "ridge",
            prompt_components=self.prompt_components,
            response_components=self.response_components,
            alpha=self.alpha,
            seed=self.seed,
            feature_order=self.feature_order,
        )


@dataclass
class LayerFit:
    """The probe at one layer: its sweep row and the held-out value estimates it gives."""

    entry: dict  # the layer_sweep row of results.json
    value_m: torch.Tensor  # (H,) mean prediction over each held-out prompt's m rollouts
    value_2: torch.Tensor  # (H,) mean prediction over its first pair, as POISE sees it in training


def layer_sweep(
    features: RolloutFeatures,
    layers: list[int],
    rewards: torch.Tensor,
    train: list[int],
    heldout: list[int],
    settings: ProbeSettings,
) -> dict[int, LayerFit]:
    """Fit and evaluate the probe at every layer of ``layers`` (``rewards``: ``(P, m)``, rows prompt-major)."""
    m = rewards.shape[1]

    def rows_of(prompts: list[int]) -> torch.Tensor:
        return torch.tensor([p * m + s for p in prompts for s in range(m)])

    train_rows, heldout_rows = rows_of(train), rows_of(heldout)
    # Pairs (n = 2): rollouts 2j and 2j + 1 of a prompt are siblings; target_j = the sibling's reward.
    pair_ids = torch.tensor([p * (m // 2) + s // 2 for p in train for s in range(m)])
    targets = sibling_targets(rewards[train].reshape(-1), pair_ids)
    target_heldout = rewards[heldout].mean(1)
    scalars = features.scalars

    # One untimed fit first: the first LAPACK call of a process pays a one-off set-up that is not the probe's.
    settings.new_probe().fit(
        features.prompt[layers[0]][train_rows], features.response[layers[0]][train_rows], scalars[train_rows], targets
    )
    fits = {}
    for layer in layers:
        probe = settings.new_probe()
        x_prompt, x_response = features.prompt[layer], features.response[layer]
        clock = time.perf_counter()
        fit = probe.fit(x_prompt[train_rows], x_response[train_rows], scalars[train_rows], targets)
        fit_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        predicted = probe.predict(x_prompt[heldout_rows], x_response[heldout_rows], scalars[heldout_rows])
        predict_seconds = time.perf_counter() - clock
        predicted = predicted.reshape(len(heldout), m)
        value_m, value_2 = predicted.mean(1), predicted[:, :2].mean(1)
        widths = (x_prompt.shape[1], x_response.shape[1], scalars.shape[1])
        components = (settings.prompt_components, settings.response_components)
        entry = {
            "layer": layer,
            **metrics(value_m, target_heldout),
            "pearson_2_rollouts": metrics(value_2, target_heldout)["pearson"],
            "mae_2_rollouts": metrics(value_2, target_heldout)["mae"],
            "fit_seconds": fit_seconds,
            "predict_seconds": predict_seconds,
            "fit_flops": probe_fit_flops(len(train_rows), widths, components),
            "train_mae_in_sample": fit["train_mae"],
            "constant_fallback": fit["constant_fallback"],
        }
        fits[layer] = LayerFit(entry, value_m, value_2)
    return fits
