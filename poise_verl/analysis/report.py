"""The value-estimator study's outputs: results.json, results.md, layer_sweep.png and scatter.png."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def check_finite(value, path: str = "results") -> None:
    """Raise ``ValueError`` naming the first NaN or infinite number in a nested dict/list."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_finite(item, f"{path}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} is {value}")


def write(results: dict, output: Path, target: torch.Tensor, scatter: dict[str, torch.Tensor]) -> None:
    """Every output into ``output`` (created); ``target`` and ``scatter``: the held-out pass rates and the
    estimates drawn against them. Refuses a NaN or infinite number anywhere in ``results``."""
    check_finite(results)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / "results.md").write_text(markdown(results))
    plot_layer_sweep(results["layer_sweep"], results["settings"]["probe"]["probe_layer"], output / "layer_sweep.png")
    plot_scatter(target, scatter, output / "scatter.png", results["settings"]["m"])


def _flops(value: float) -> str:
    return "0" if value == 0 else f"{value:.2e}"


def _seconds(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def markdown(results: dict) -> str:
    settings, data, timing = results["settings"], results["data_summary"], results["timing"]
    probe, critic = settings["probe"], settings["critic"]
    m = settings["m"]
    lines = [
        "# Value estimators: POISE probe vs critic",
        "",
        f"Model `{settings['model']}` ({settings['model_kind']}), data {', '.join(f'`{d}`' for d in settings['data'])}.",
        (
            f"{settings['num_prompts']} prompts x m={m} rollouts (temperature {settings['temperature']}, "
            f"top_p {settings['top_p']}, seed {settings['seed']}); {data['train_prompts']} training prompts, "
            f"{data['heldout_prompts']} held out. Mean pass rate {data['mean_pass_rate']:.3f} "
            f"({data['fraction_prompts_all_wrong']:.0%} of prompts all wrong, "
            f"{data['fraction_prompts_all_right']:.0%} all right); mean response {data['mean_response_tokens']:.1f} "
            f"tokens, {data['truncated_fraction']:.1%} truncated."
        ),
        "",
        f"## Held-out prompts, target = empirical pass rate over the m={m} rollouts",
        "",
        "| estimator | Pearson | MAE | train time (s) | train FLOPs (approx.) | predict time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for entry in results["estimators"].values():
        lines.append(
            f"| {entry['label']} | {entry['pearson']:.3f} | {entry['mae']:.3f} | {_seconds(entry['train_seconds'])} "
            f"| {_flops(entry['train_flops'])} | {_seconds(entry['predict_seconds'])} |"
        )
    anchor = results["paper_anchor"]
    lines += [
        (
            f"| *paper: POISE probe ({anchor['setting']})* | *{anchor['probe']['pearson']:.3f}* "
            f"| *{anchor['probe']['mae']:.3f}* | | | |"
        ),
        (
            f"| *paper: critic fine-tuned from Qwen3-4B* | *{anchor['critic']['pearson']:.3f}* "
            f"| *{anchor['critic']['mae']:.3f}* | | | |"
        ),
        "",
        "- Pearson of a constant predictor is reported as 0 (undefined otherwise).",
        (
            f"- Noise ceiling: an estimator that does not see the sampled outcomes can reach a Pearson of about "
            f"{data['pearson_ceiling_heldout']:.3f} against an {m}-sample pass rate (binomial noise). The probe and "
            "the 2-rollout mean read rollouts that are part of the target, so they can exceed it; see the next table."
        ),
        (
            f"- Probe: features are free in training (they come from the actor's old-log-prob forward); its cost is "
            f"the fit (PCA {probe['prompt_components']}/{probe['response_components']} of the raw pooled states, one "
            f"standardisation, ridge alpha "
            f"{probe['alpha']:g}) on {data['train_prompts'] * m} rollouts. Feature extraction here took "
            f"{_seconds(timing['feature_extraction_seconds'])} s for {data['rollouts']} rollouts and "
            f"{len(results['layer_sweep'])} layer(s) in one forward."
        ),
        (
            f"- Critic: {critic['parameters']:,} parameters, Adam lr {critic['lr']:g}, {critic['epochs']} epoch(s), "
            f"{critic['tokens']:,} prompt tokens; FLOPs = 6 x parameters x tokens. lr and epochs picked on "
            f"{critic['validation_prompts']} training prompts from lr {critic['lr_grid']} x up to {critic['max_epochs']} "
            f"epochs (selection: {_seconds(results['estimators']['critic']['selection_seconds'])} s, "
            f"{_flops(results['estimators']['critic']['selection_flops'])} FLOPs, not in the table)."
        ),
        "",
        f"## Held-out prompts, target = pass rate over rollouts 3..{m} only",
        "",
        (
            "The 2-rollout estimators read rollouts 1-2; this target leaves them out, so no estimator sees the "
            "outcomes it is scored against."
        ),
        "",
        "| estimator | Pearson | MAE |",
        "|---|---:|---:|",
    ]
    for name, entry in results["disjoint_target"].items():
        lines.append(
            f"| {results['estimators'][name]['label']} | {entry['pearson']:.3f} | {entry['mae']:.3f} |"
        )
    lines += [
        "",
        f"## Probe layer sweep (0-based decoder layer whose output is pooled; main table: layer {probe['probe_layer']})",
        "",
        f"| layer | Pearson (m={m}) | MAE (m={m}) | Pearson (2 rollouts) | MAE (2 rollouts) | fit time (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in results["layer_sweep"]:
        lines.append(
            f"| {entry['layer']} | {entry['pearson']:.3f} | {entry['mae']:.3f} | {entry['pearson_2_rollouts']:.3f} "
            f"| {entry['mae_2_rollouts']:.3f} | {_seconds(entry['fit_seconds'])} |"
        )
    lines += [
        "",
        "## Time",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    for name, seconds in timing.items():
        lines.append(f"| {name.removesuffix('_seconds').replace('_', ' ')} | {_seconds(seconds)} |")
    lines += ["", f"Device {settings['device']}, {settings['threads']} torch thread(s).", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_sweep(sweep: list[dict], probe_layer: int, path: Path) -> None:
    plt = _pyplot()
    layers = [entry["layer"] for entry in sweep]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, key, label in ((axes[0], "pearson", "Pearson"), (axes[1], "mae", "MAE")):
        axis.plot(layers, [entry[key] for entry in sweep], "o-", label="mean over m rollouts")
        axis.plot(
            layers, [entry[f"{key}_2_rollouts"] for entry in sweep], "s--", label="mean over 2 rollouts"
        )
        axis.axvline(probe_layer, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("decoder layer (0-based)")
        axis.set_ylabel(label)
        axis.set_xticks(layers)
    axes[0].legend(fontsize=8)
    figure.suptitle("POISE probe vs held-out pass rate, by layer")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_scatter(target: torch.Tensor, predictions: dict[str, torch.Tensor], path: Path, m: int) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(predictions), figsize=(4 * len(predictions), 4), squeeze=False)
    for axis, (name, predicted) in zip(axes[0], predictions.items(), strict=True):
        axis.scatter(target.numpy(), predicted.numpy(), s=12, alpha=0.6)
        axis.plot([0, 1], [0, 1], color="grey", linewidth=1)
        axis.set_xlim(-0.05, 1.05)
        axis.set_ylim(-0.05, 1.05)
        axis.set_xlabel(f"empirical pass rate (m={m})")
        axis.set_ylabel(f"{name} value estimate")
        axis.set_title(name)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
