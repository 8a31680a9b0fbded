"""The report: caveats, ``summary.md`` and ``summary.json`` of an ablation, and its figures (:mod:`.plots`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from poise_verl.ablate.algorithms import ALGORITHMS, REFERENCE_ALGO
from poise_verl.ablate.metrics import RunResult
from poise_verl.ablate.plan import AlgoConfig
from poise_verl.ablate.selection import ACTIVE as SELECTION_ACTIVE
from poise_verl.ablate.selection import summarise_selection
from poise_verl.ablate.statistics import PHASES, PROBE_WINDOW, RATIO_KEYS, STEP_STATISTICS, summarise

# One validation's binomial standard error an ablation needs to tell the algorithms apart on the tiny task:
# at most 1.2 accuracy points (512 validation prompts give about 2.2 there, more than the gaps measured).
MAX_VALIDATION_SE = 0.012


def _validation_size(config: AlgoConfig) -> int | None:
    """Validation prompts per evaluation: val_max_samples, else the rows of the validation files."""
    total = _parquet_rows(config.val_files)
    if config.val_max_samples > 0:
        return config.val_max_samples if total is None else min(config.val_max_samples, total)
    return total


def _parquet_rows(paths) -> int | None:
    if not paths:
        return None
    try:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(path).metadata.num_rows for path in paths)
    except (OSError, ValueError):  # not readable here (remote, not built yet, not parquet): size unknown
        return None


def validation_noise(results: list[RunResult]) -> dict | None:
    """One validation's binomial standard error sqrt(p (1 - p) / N) against :data:`MAX_VALIDATION_SE`.

    N: the validation prompts (:func:`_validation_size`). The error at the mean final accuracy over all runs
    (the one the final accuracies carry; 0.5 without any), and the largest at any validation of the ablation
    or that mean, at the accuracy nearest 0.5 (the verdict: each must meet the requirement). Several samples
    per prompt can only lower the error: this is the bound for one sample. None without runs; the errors and
    the verdict are None where N is unknown here.
    """
    if not results:
        return None
    config = results[0].config
    size = _validation_size(config)
    finals = [r.final_accuracy()[0] for r in results if r.final_accuracy()[0] is not None]
    final = sum(finals) / len(finals) if finals else 0.5
    validated = [final] + [float(a) for r in results for a in r.accuracy]
    nearest = min(validated, key=lambda a: abs(a - 0.5))

    def error(p: float) -> float | None:
        return math.sqrt(p * (1 - p) / size) if size else None

    largest = error(nearest)
    return {
        "prompts": size,
        "samples_per_prompt": config.val_samples_per_prompt,
        "accuracy": final,
        "accuracy_source": "mean final accuracy over all runs" if finals else "0.5 (no final accuracy)",
        "standard_error": error(final),
        "largest_standard_error": largest,
        "largest_at_accuracy": nearest,
        "standard_error_at_half": error(0.5),
        "required_at_most": MAX_VALIDATION_SE,
        # Every accuracy 0 or 1 (an untrained policy, say): the estimate says 0 and proves nothing.
        "meets_requirement": None if not largest else largest <= MAX_VALIDATION_SE + 1e-12,
        "prompts_needed": math.ceil(nearest * (1 - nearest) / MAX_VALIDATION_SE**2 - 1e-9) or None,
        "prompts_needed_at_half": math.ceil(0.25 / MAX_VALIDATION_SE**2 - 1e-9),
    }


def validation_text(noise: dict) -> str:
    """The sentence of summary.md (and the caveats) on one validation's standard error."""
    required = f"required: at most {100 * noise['required_at_most']:.1f} points"
    if noise["standard_error"] is None:
        return (
            "Validation set size unknown here (validation files not readable from this machine), so one "
            f"validation's standard error is unknown; {required} ({noise['prompts_needed_at_half']} prompts at "
            "accuracy 0.5)."
        )
    n = noise["prompts"]
    if noise["meets_requirement"] is None:
        return (
            f"Validation: {n} prompts x {noise['samples_per_prompt']} sample(s) each; every validation scored 0 "
            f"or 1, where the binomial estimate of the standard error is 0 and says nothing; at accuracy 0.5 it "
            f"is {100 * noise['standard_error_at_half']:.2f} points; {required} "
            f"({noise['prompts_needed_at_half']} prompts at 0.5)."
        )
    verdict = "met" if noise["meets_requirement"] else "NOT met"
    return (
        f"Validation: {n} prompts x {noise['samples_per_prompt']} sample(s) each; one validation's binomial "
        f"standard error sqrt(p(1-p)/{n}) is {noise['standard_error']:.4f} "
        f"({100 * noise['standard_error']:.2f} points) at accuracy {noise['accuracy']:.3f} "
        f"({noise['accuracy_source']}), at most {noise['largest_standard_error']:.4f} "
        f"({100 * noise['largest_standard_error']:.2f} points) over the ablation's validations (accuracy "
        f"{noise['largest_at_accuracy']:.3f}, the nearest 0.5) and {100 * noise['standard_error_at_half']:.2f} "
        f"points at 0.5; {required}: {verdict} (it takes {noise['prompts_needed']} prompts at accuracy "
        f"{noise['largest_at_accuracy']:.3f}, {noise['prompts_needed_at_half']} at 0.5). More samples per prompt "
        "can only lower it."
    )


def caveats(results: list[RunResult], algos: list[str], target: dict) -> list[str]:
    """What a reader must keep in mind about the numbers: seeds, validation noise, how targets are read."""
    notes = []
    seeds = sorted({r.seed for r in results})
    notes.append(
        f"{len(seeds)} seed(s) per algorithm ({', '.join(map(str, seeds))}): the sd and the min-max band "
        "rest on that few samples; differences within them are noise."
    )
    config = results[0].config if results else None
    if config is not None:
        notes.append(validation_text(validation_noise(results)))
        if config.val_max_samples > 0 and config.shuffle:
            notes.append(
                f"data.val_max_samples={config.val_max_samples} with data.shuffle=true: verl draws that "
                "subset with data.seed, so each seed validates on a different subset (algorithms at one "
                "seed share it). Start accuracies differ between seeds for that reason."
            )
        notes.append(
            f"Time to target is read at validations (every {config.test_freq} steps): the first "
            "validation at or above the target; the crossing may lie up to that many steps earlier."
        )
    notes.append(
        f"Target: {target['source']}. "
        + (
            f"{REFERENCE_ALGO} reaches its own mean final accuracy by construction (at its last step at the latest)."
            if target["source"].startswith("mean final")
            else ""
        )
    )
    notes.append(
        "Wall-clock depends on the hardware and sizes of this run: the paper's 0.73x (POISE/DAPO) is on "
        "Qwen3-4B with long generations on 2 x B200, where generation dominates a step."
    )
    dropping = sorted({r.algo for r in results if r.algo in ALGORITHMS and ALGORITHMS[r.algo].dynamic_sampling})
    if dropping:
        notes.append(
            f"The token count of {', '.join(dropping)} adds n rollouts per group dynamic sampling dropped, at the "
            "kept rollouts' mean length (verl does not log the dropped lengths)."
        )
    selecting = sorted({r.algo for r in results if SELECTION_ACTIVE in r.frame}, key=algos.index)
    if selecting:
        notes.append(
            f"{', '.join(selecting)} generate the budget's rollouts for prompts chosen from more candidates: the "
            "choosing (timing_s/select, a prompt-only forward under probe) is in the wall-clock, not in the "
            "generated tokens; like DAPO's filter it changes which prompts are trained on."
        )
    unfinished = [f"{r.algo} seed {r.seed} (step {r.last_step})" for r in results if not r.finished]
    if unfinished:
        notes.append("Unfinished runs included as far as they got: " + ", ".join(unfinished) + ".")
    missing = [a for a in algos if not any(r.algo == a for r in results)]
    if missing:
        notes.append("No metrics for: " + ", ".join(missing) + ".")
    return notes


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_seconds(seconds) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 600:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def fmt_count(value) -> str:
    if value is None:
        return "n/a"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def mean_sd_text(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    return fmt(stats["mean"]) + ("" if stats["sd"] is None else f" ± {fmt(stats['sd'])}")


def time_to_target(hit: dict) -> str:
    """'<with validations> (<without>) (step N)' for a table cell."""
    return f"{fmt_seconds(hit['wall_clock_s'])} ({fmt_seconds(hit['steps_wall_clock_s'])}) (step {hit['step']})"


def render_markdown(summary: dict, plots: list[str]) -> str:
    """summary.md: the tables, the plots and the caveats of ``summary``."""
    target = summary["target_accuracy"]
    lines = [f"# Ablation: {', '.join(summary['algorithms'])} at one generation budget", ""]
    budgets = {a: (s["rollouts_per_step"], s["n"]) for a, s in summary["algorithms"].items() if s["n"]}
    lines.append(
        "Budget: "
        + ", ".join(f"{a} {b} rollouts/step (n={n}, {b // n} prompts)" for a, (b, n) in budgets.items())
    )
    lines += [
        "",
        f"Target accuracy: {fmt(target['value'])} ({target['source']}).",
        f"Accuracy: {summary['accuracy_metric']}.",
        (
            "Wall-clock: training wall-clock reconstructed from the metrics (cumulative timing_s/step + "
            "timing_s/testing), in brackets without the validations (cumulative timing_s/step: every algorithm "
            "validates the same prompts, so their time dilutes the ratios); process wall-clock (start-up "
            "included, all launches) in the last column."
        ),
    ]
    if summary.get("validation"):
        lines.append(validation_text(summary["validation"]))
    lines.append("")
    lines += [
        (
            "| algorithm | seeds | start acc | final acc (mean ± sd) | final acc per seed | wall-clock to target "
            "| tokens to target | seeds reaching | training wall-clock | process wall-clock |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for algo, s in summary["algorithms"].items():
        per_seed = (
            ", ".join(
                f"{p['seed']}: {fmt(p['final_accuracy'])}" + ("" if p["finished"] else "*")
                for p in s["runs"]
            )
            or "n/a"
        )
        hit, missing = s["to_target"], "not reached" if s["runs"] else "no runs"
        to_time = time_to_target(hit) if hit else missing
        to_tokens = fmt_count(hit["tokens"]) if hit else missing
        lines.append(
            f"| {algo} | {len(s['runs'])} | {mean_sd_text(s['start_accuracy'])} | "
            f"{mean_sd_text(s['final_accuracy'])} | {per_seed} | {to_time} | {to_tokens} | "
            f"{s['seeds_reaching_target']}/{len(s['runs'])} | {fmt_seconds(s['train_wall_clock_s']['mean'])} "
            f"({fmt_seconds(s['steps_wall_clock_s']['mean'])}) | "
            f"{fmt_seconds(s['process_wall_clock_s']['mean'])} |"
        )
    lines += ["", "\\* unfinished run. Time and tokens to target: on the mean-over-seeds curve.", ""]
    if summary["ratios"]:
        lines += ["## Ratios to DAPO (time / tokens to reach the target)", ""]
        for name, ratio in summary["ratios"].items():
            wall, steps_only, tokens = (
                "n/a" if ratio[key] is None else f"{ratio[key]:.2f}x" for key in RATIO_KEYS
            )
            note = f" ({ratio['note']})" if ratio["note"] else ""
            lines.append(
                f"- {name}: wall-clock {wall} ({steps_only} without validations), tokens {tokens}{note}"
            )
        lines += [
            "",
            (
                "The paper reports about 0.73x wall-clock for POISE/DAPO on Qwen3-4B; targets on the tiny CPU "
                "default: poise/dapo <= 0.7x, poise_select/dapo <= 0.6x (and below poise_history/dapo)."
            ),
            "",
        ]
    lines += [
        "## Per seed: wall-clock and tokens to target",
        "",
        (
            "| algorithm | seed | last step | wall-clock to target | tokens to target | training wall-clock "
            "| process wall-clock | launches |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for algo, s in summary["algorithms"].items():
        for p in s["runs"]:
            hit = p["to_target"]
            lines.append(
                f"| {algo} | {p['seed']} | {p['last_step']}{'' if p['finished'] else '*'} | "
                f"{time_to_target(hit) if hit else 'not reached'} | "
                f"{fmt_count(hit['tokens']) if hit else 'not reached'} | {fmt_seconds(p['train_wall_clock_s'])} "
                f"({fmt_seconds(p['steps_wall_clock_s'])}) | "
                f"{fmt_seconds(p['process_wall_clock_s'])} | {p['launches']} |"
            )
    lines += [
        "",
        "## Where a step's time goes",
        "",
        (
            "Median seconds per step of verl's timing_s/<phase> (testing: per validation), mean over seeds; the "
            "testing column per seed gauges how busy the machine was (every algorithm validates the same prompts)."
        ),
        "",
        "| algorithm | " + " | ".join(PHASES) + " | testing per seed |",
        "|---|" + "---|" * (len(PHASES) + 1),
    ]
    for algo, s in summary["algorithms"].items():
        cells = [fmt(s["phase_median_s"][phase]["mean"], 2) for phase in PHASES]
        gauge = ", ".join(f"{p['seed']}: {fmt(p['phase_median_s']['testing'], 2)}" for p in s["runs"]) or "n/a"
        lines.append(f"| {algo} | " + " | ".join(cells) + f" | {gauge} |")
    probes = {
        algo: [(p["seed"], p["probe_pearson_last_steps"]) for p in s["runs"] if p["probe_pearson_last_steps"] is not None]
        for algo, s in summary["algorithms"].items()
    }
    probes = {algo: pairs for algo, pairs in probes.items() if pairs}
    if probes:
        lines += [
            "",
            f"Probe baseline vs realised reward, mean poise/probe_pearson over the last {PROBE_WINDOW} steps: "
            + "; ".join(
                f"{algo} " + ", ".join(f"seed {seed} {fmt(value)}" for seed, value in pairs)
                for algo, pairs in probes.items()
            )
            + ".",
        ]
    lines += [
        "",
        "## Per step: advantage variance, gradient norm, staleness",
        "",
        "Mean over a run's training steps, then mean ± sd over seeds: "
        + "; ".join(f"{name}: {text}" for name, text in STEP_STATISTICS.items())
        + ".",
        "",
        "| algorithm | " + " | ".join(STEP_STATISTICS) + " |",
        "|---|" + "---|" * len(STEP_STATISTICS),
    ]
    for algo, s in summary["algorithms"].items():
        cells = [mean_sd_text(s["step_statistics"][name]) for name in STEP_STATISTICS]
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    lines += selection_markdown(summary.get("selection") or {})
    lines += ["", "## Plots", "", f"Curves: mean over seeds; band: {summary['spread']}.", ""]
    lines += [f"- ![{name}]({name})" for name in plots]
    lines += ["", "## Caveats", ""] + [f"- {note}" for note in summary["caveats"]]
    return "\n".join(lines) + "\n"


def _logged(stats: dict) -> str:
    """mean ± sd over seeds, or "not logged" where no run logged the metric."""
    return "not logged" if stats["mean"] is None else mean_sd_text(stats)


def selection_markdown(selection: dict) -> list[str]:
    """The zero-variance and prompt-selection table of summary.md (:mod:`.selection`); empty without rows."""
    if not selection:
        return []
    lines = [
        "",
        "## Zero-variance groups and prompt selection",
        "",
        (
            "Share of a step's prompt groups whose rewards all agree (poise/zero_variance_share: realised, after "
            "generation), mean over the training steps, then mean ± sd over seeds; selection steps: those with "
            "poise/selection/active = 1 (a probe-selected run selects once its prompt-only probe is fitted). "
            "Predicted: P(all n rewards agree) = p^n + (1-p)^n at the prompt-only probe's pass rate p, for the "
            "kept prompts and for all candidates. Prompt-only Pearson: poise/selection/prompt_pearson, the "
            "estimate p against each kept prompt's realised mean reward. Selection cost: median timing_s/select "
            "over median timing_s/step on the steps that selected (the selection is part of the step). "
            '"not logged": the algorithm\'s runs do not log it.'
        ),
        "",
        (
            f"| algorithm | seeds | zero-variance share, all steps | last {PROBE_WINDOW} steps | selection steps "
            "per seed | realised on selection steps | predicted, kept | predicted, candidates | prompt-only "
            f"Pearson (last {PROBE_WINDOW} steps) | select / step (median s) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for algo, s in selection.items():
        steps = [run["selection_steps"] for run in s["runs"]]
        steps_text = (
            "not logged"
            if all(n is None for n in steps)
            else ", ".join(f"{run['seed']}: {'n/a' if n is None else n}" for run, n in zip(s["runs"], steps))
        )
        pearson = _logged(s["prompt_pearson"])
        if s["prompt_pearson"]["mean"] is not None:
            pearson += f" ({_logged(s['prompt_pearson_last_steps'])})"
        cost = _logged(s["select_share_of_step"])
        if s["select_share_of_step"]["mean"] is not None:
            seconds = (s["select_median_s"]["mean"], s["step_median_s_selection_steps"]["mean"])
            cost += " ({:.3g} s / {:.3g} s)".format(*seconds)  # a history filter takes well under 1 ms
        cells = [
            str(len(s["runs"])),
            _logged(s["zero_variance_share"]),
            _logged(s["zero_variance_share_last_steps"]),
            steps_text,
            _logged(s["zero_variance_share_selection_steps"]),
            _logged(s["predicted_zero_variance_share"]),
            _logged(s["candidates_predicted_zero_variance_share"]),
            pearson,
            cost,
        ]
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    diffs = {
        algo: max(values)
        for algo, s in selection.items()
        if (values := [run["feature_diff_max"] for run in s["runs"] if run["feature_diff_max"] is not None])
    }
    if diffs:
        lines += [
            "",
            "Pre-generation vs old-log-prob prompt state, largest difference over the runs "
            "(poise/selection/feature_diff_max; ~0 when both passes agree): "
            + ", ".join(f"{algo} {value:.2e}" for algo, value in diffs.items())
            + ".",
        ]
    return lines


def write_report(
    results: list[RunResult], algos: list[str], report_dir: Path, target_accuracy: float | None
) -> dict:
    """Write summary.json, summary.md and the figures into ``report_dir``; returns the summary."""
    from poise_verl.ablate.plots import draw_figures  # matplotlib: only when a report is written

    report_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(results, algos, target_accuracy)
    summary["validation"] = validation_noise(results)
    summary["selection"] = summarise_selection(results, algos)
    summary["caveats"] = caveats(results, algos, summary["target_accuracy"])
    frames = {
        algo: [r.frame for r in sorted(results, key=lambda r: r.seed) if r.algo == algo] for algo in algos
    }
    frames = {algo: runs for algo, runs in frames.items() if runs}
    plots = draw_figures(frames, report_dir, summary["target_accuracy"]["value"])
    summary["plots"] = [p.name for p in plots]
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (report_dir / "summary.md").write_text(render_markdown(summary, summary["plots"]))
    return summary
