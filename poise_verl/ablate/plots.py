"""Figures of an ablation: curves of several algorithms, each the mean over seeds with a min-max band.

Pure pandas + matplotlib (Agg backend, no display needed). Each run is a DataFrame indexed by training step
with one column per metric (verl's names, plus the derived ``train_wall_clock_s``, ``generated_tokens`` and
``val_accuracy`` columns of :mod:`.metrics`). A band aggregates the seeds of one algorithm step by step
(:func:`.statistics.seed_band`), over the steps every seed has a value for.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from poise_verl.ablate.algorithms import ALGORITHMS
from poise_verl.ablate.algorithms import colour as algo_colour
from poise_verl.ablate.metrics import ADVANTAGE_STD_KEYS
from poise_verl.ablate.selection import PREDICTED, ZERO_VARIANCE
from poise_verl.ablate.statistics import seed_band

SPREAD = "min-max over seeds"


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds < 600:
        return 1.0, "s"
    if seconds < 7200:
        return 60.0, "min"
    return 3600.0, "h"


def _draw(
    ax,
    runs_by_algo: dict[str, list[pd.DataFrame]],
    y: str,
    x: str | None,
    x_scale: float = 1.0,
    label_suffix: str = "",
    linestyle: str = "-",
    colour: str | None = None,
) -> bool:
    drawn = False
    for index, (algo, runs) in enumerate(runs_by_algo.items()):
        band = seed_band(runs, y, x)
        if band.empty:
            continue
        xs = (band["x_mean"] if x else band["step"]) / x_scale
        line_colour = colour or algo_colour(algo, index)
        label = f"{algo}{label_suffix} ({len(runs)} seed{'s' if len(runs) != 1 else ''})"
        ax.plot(
            xs,
            band["y_mean"],
            linestyle,
            color=line_colour,
            label=label,
            marker="o" if len(band) < 30 else None,
            markersize=3,
        )
        ax.fill_between(xs, band["y_min"], band["y_max"], color=line_colour, alpha=0.2, linewidth=0)
        drawn = True
    return drawn


def _label(ax, title: str, xlabel: str, ylabel: str, drawn: bool, empty: str | None = "no data logged") -> None:
    """Title, axis labels and grid; the legend when something was drawn, else the ``empty`` note."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    elif empty:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)


def _finish(fig, ax, path: Path, title: str, xlabel: str, ylabel: str, drawn: bool) -> Path:
    _label(ax, title, xlabel, ylabel, drawn)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_figure(
    runs_by_algo, x: str, path: Path, target: float | None, xlabel: str, time_axis: bool = False
) -> Path:
    """Validation accuracy against ``x`` (a column, or None for the step), with the target as a dashed line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    scale, unit = 1.0, ""
    if time_axis:
        longest = max(
            (float(run[x].max()) for runs in runs_by_algo.values() for run in runs if x in run), default=0.0
        )
        scale, unit = _time_unit(longest)
        xlabel = f"{xlabel} ({unit})"
    drawn = _draw(ax, runs_by_algo, "val_accuracy", x, x_scale=scale)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.3f}")
        ax.legend(fontsize=8)
    return _finish(
        fig, ax, path, f"Validation accuracy (mean, band: {SPREAD})", xlabel, "validation accuracy", drawn
    )


def metric_figure(runs_by_algo, y: str, path: Path, title: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = _draw(ax, runs_by_algo, y, None)
    return _finish(fig, ax, path, f"{title} (mean, band: {SPREAD})", "training step", ylabel, drawn)


def advantage_figure(runs_by_algo, std_keys: list[str], path: Path) -> Path:
    """Left: std over the batch of the per-rollout advantage A_i, for each algorithm that logs it (the first of
    ``std_keys`` its runs have). Right: verl's token-advantage max and min, every algorithm."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn_left = False
    for algo, runs in runs_by_algo.items():
        key = next((k for k in std_keys if runs and all(k in run.columns for run in runs)), None)
        if key is not None:
            drawn_left |= _draw(left, {algo: runs}, key, None, label_suffix=f" {key}")
    title = f"Per-rollout advantage std (band: {SPREAD})"
    empty = "no algorithm logged an advantage std"
    _label(left, title, "training step", "std of A_i over the batch", drawn_left, empty)
    drawn_max = _draw(right, runs_by_algo, "critic/advantages/max", None, label_suffix=" max")
    drawn_min = _draw(right, runs_by_algo, "critic/advantages/min", None, label_suffix=" min", linestyle="--")
    return _finish(
        fig, right, path, "Token advantage max / min", "training step", "advantage", drawn_max or drawn_min
    )


def probe_figure(algo: str, runs: list[pd.DataFrame], path: Path) -> Path:
    """A probe algorithm: the probe's mean prediction against the realised mean reward, and its Pearson r."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = _draw(
        left,
        {algo: runs},
        "poise/prediction_mean",
        None,
        label_suffix=" prediction_mean",
        colour=algo_colour(algo, 0),
    )
    drawn |= _draw(
        left,
        {algo: runs},
        "poise/reward_mean",
        None,
        label_suffix=" reward_mean",
        linestyle="--",
        colour="tab:red",
    )
    title = f"Probe prediction vs realised reward (band: {SPREAD})"
    _label(left, title, "training step", "batch mean", drawn, empty=None)
    drawn_r = _draw(right, {algo: runs}, "poise/probe_pearson", None)
    return _finish(
        fig, right, path, "Probe baseline vs reward: Pearson r", "training step", "Pearson r", drawn_r
    )


def zero_variance_figure(runs_by_algo, path: Path) -> Path:
    """The realised share of zero-variance groups per step of each algorithm that logs it (the POISE variants),
    and, dashed, the share a probe-selected run predicted for the prompts it kept."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = False
    for index, (algo, runs) in enumerate(runs_by_algo.items()):
        line_colour = algo_colour(algo, index)
        drawn |= _draw(ax, {algo: runs}, ZERO_VARIANCE, None, label_suffix=" realised", colour=line_colour)
        drawn |= _draw(
            ax, {algo: runs}, PREDICTED, None, label_suffix=" predicted (kept)", linestyle="--", colour=line_colour
        )
    title = f"Groups whose rewards all agree (mean, band: {SPREAD})"
    return _finish(fig, ax, path, title, "training step", "zero-variance share", drawn)


def draw_figures(runs_by_algo: dict[str, list[pd.DataFrame]], folder: Path, target: float | None) -> list[Path]:
    """Every figure of the report, written into ``folder``: accuracy against wall-clock, tokens and steps,
    gradient norm, advantages, the zero-variance share of the algorithms that log it, and a probe figure per
    algorithm that has a probe."""
    figures = [
        accuracy_figure(
            runs_by_algo,
            "train_wall_clock_s",
            folder / "accuracy_vs_wall_clock.png",
            target,
            "training wall-clock (from metrics)",
            time_axis=True,
        ),
        accuracy_figure(
            runs_by_algo, "generated_tokens", folder / "accuracy_vs_tokens.png", target, "generated response tokens"
        ),
        accuracy_figure(runs_by_algo, None, folder / "accuracy_vs_step.png", target, "training step"),
        metric_figure(
            runs_by_algo,
            "actor/grad_norm",
            folder / "grad_norm.png",
            "Actor gradient norm",
            "actor/grad_norm (before clipping)",
        ),
        advantage_figure(runs_by_algo, ADVANTAGE_STD_KEYS, folder / "advantages.png"),
    ]
    logging_zero_variance = {
        algo: runs for algo, runs in runs_by_algo.items() if any(ZERO_VARIANCE in run for run in runs)
    }
    if logging_zero_variance:
        figures.append(zero_variance_figure(logging_zero_variance, folder / "zero_variance_share.png"))
    for algo, runs in runs_by_algo.items():
        if algo in ALGORITHMS and ALGORITHMS[algo].probe:
            figures.append(probe_figure(algo, runs, folder / f"{algo}_probe.png"))
    return figures
