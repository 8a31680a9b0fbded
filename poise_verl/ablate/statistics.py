"""Statistics over seeds: the target, means and spreads, time and tokens to the target, phase medians, the
probe's late Pearson. Everything as JSON-able numbers (None where not available)."""

from __future__ import annotations

import math

import pandas as pd

from poise_verl.ablate.algorithms import REFERENCE_ALGO
from poise_verl.ablate.metrics import ADVANTAGE_STD_KEYS, RunResult

# verl's per-phase timings worth comparing across algorithms (median over the run's steps, seconds).
PHASES = ("step", "gen", "old_log_prob", "update_actor", "update_weights", "testing")
# What time to target is divided by DAPO's in: training wall-clock with validations, without, and tokens.
RATIO_KEYS = ("wall_clock_s", "steps_wall_clock_s", "tokens")
PROBE_WINDOW = 10  # training steps at the end of a run over which the probe's Pearson is averaged


def seed_band(runs: list[pd.DataFrame], y: str, x: str | None = None) -> pd.DataFrame:
    """Mean and min/max of column ``y`` over seeds, per step, on the steps where every seed has ``y``.

    Returns columns ``step, y_mean, y_min, y_max, seeds`` and, with ``x``, ``x_mean`` (the x position of a
    step is the mean of the seeds' x there: wall-clock and token counts differ slightly between seeds).
    Empty when some seed never logged ``y``. A mean is never taken over a changing set of seeds.
    """
    columns = ["step", "y_mean", "y_min", "y_max", "seeds"] + (["x_mean"] if x else [])
    if not runs or any(y not in run.columns for run in runs):
        return pd.DataFrame(columns=columns)
    parts = []
    for index, run in enumerate(runs):
        wanted = [y] + ([x] if x and x != y else [])
        if any(col not in run.columns for col in wanted):
            return pd.DataFrame(columns=columns)
        part = run[wanted].dropna(subset=[y]).copy()
        part["seed_index"] = index
        part["step"] = part.index
        parts.append(part)
    rows = pd.concat(parts, ignore_index=True)
    grouped = rows.groupby("step")
    out = pd.DataFrame(
        {
            "y_mean": grouped[y].mean(),
            "y_min": grouped[y].min(),
            "y_max": grouped[y].max(),
            "seeds": grouped["seed_index"].nunique(),
        }
    )
    if x:
        out["x_mean"] = grouped[x].mean()
    out = out[out["seeds"] == len(runs)].reset_index()
    return out[columns]


def mean_sd(values: list[float]) -> dict:
    """Mean and sample sd of the values that are not None (sd None below two values)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "sd": sd, "n": len(values)}


def mean_curve_reaching(results: list[RunResult], target: float) -> dict | None:
    """First step where the seeds' mean validation accuracy reaches ``target`` (steps every seed validated)."""
    frames = [r.frame for r in results]
    accuracy = seed_band(frames, "val_accuracy", "train_wall_clock_s")
    steps_only = seed_band(frames, "val_accuracy", "steps_wall_clock_s")
    tokens = seed_band(frames, "val_accuracy", "generated_tokens")
    hits = accuracy.index[accuracy["y_mean"] >= target - 1e-12]
    if len(hits) == 0:
        return None
    row = hits[0]
    return {
        "step": int(accuracy.loc[row, "step"]),
        "wall_clock_s": float(accuracy.loc[row, "x_mean"]),
        "steps_wall_clock_s": float(steps_only.loc[row, "x_mean"]),
        "tokens": float(tokens.loc[row, "x_mean"]),
        "mean_accuracy": float(accuracy.loc[row, "y_mean"]),
    }


def late_mean(frame: pd.DataFrame, column: str, window: int = PROBE_WINDOW) -> float | None:
    """Mean of ``column`` over the run's last ``window`` steps (None where it logged no value there)."""
    if column not in frame:
        return None
    values = frame[column].dropna()
    values = values[values.index > frame.index.max() - window]
    return float(values.mean()) if not values.empty else None


def late_probe_pearson(frame: pd.DataFrame, window: int = PROBE_WINDOW) -> float | None:
    """Mean ``poise/probe_pearson`` (probe baseline vs realised reward) over the run's last ``window`` steps."""
    return late_mean(frame, "poise/probe_pearson", window)


def phase_medians(frame: pd.DataFrame) -> dict[str, float | None]:
    """Median of each ``timing_s/<phase>`` over the training steps (validations for ``testing``).

    The median of ``testing`` also gauges how busy the machine was: every algorithm validates the same prompts.
    """
    medians = {}
    for phase in PHASES:
        column = f"timing_s/{phase}"
        values = frame[column].dropna() if column in frame else pd.Series(dtype=float)
        values = values[values.index > 0]
        medians[phase] = float(values.median()) if not values.empty else None
    return medians


# Per training step, averaged over a run's steps: the paper's claim is lower advantage variance and lower gradient
# norms than its baselines; staleness and partial rollouts say how asynchronous an asynchronous run was.
STEP_STATISTICS = {
    "advantage_variance": "variance over the batch of the per-rollout advantage (training/adv_std squared)",
    "grad_norm": "actor/grad_norm (before clipping)",
    "staleness": "training/off_policy/trajectory_staleness_worst/mean (updates behind, oldest weights used)",
    "partial_share": "rollout/partial_share (rollouts generated across a weight update)",
    "batch_wait": "timing_s/gen, seconds the trainer waits for its batch (a mean, where the phase table gives medians:"
    " under the asynchronous trainer it alternates)",
    "batch_wait_fresh": "timing_s/gen on the steps whose batch is at staleness 0",
    "batch_wait_stale": "timing_s/gen on the steps whose batch is at staleness 1 or more (generated ahead)",
    "trainer_wait_share": "separate_async/trainer_wait_share, the share of a step the trainer waited for its batch"
    " (fully asynchronous trainer only)",
    "rollout_weight_wait_share": "separate_async/rollout_weight_wait_share, the share of a step the rollout was"
    " stopped for the weight sync (fully asynchronous trainer only)",
}
_STALENESS = "training/off_policy/trajectory_staleness_worst/mean"
_STEP_COLUMNS = {
    "grad_norm": "actor/grad_norm",
    "staleness": _STALENESS,
    "partial_share": "rollout/partial_share",
    "batch_wait": "timing_s/gen",
    "trainer_wait_share": "separate_async/trainer_wait_share",
    "rollout_weight_wait_share": "separate_async/rollout_weight_wait_share",
}


def step_statistics(frame: pd.DataFrame) -> dict[str, float | None]:
    """Mean over the training steps of each of ``STEP_STATISTICS`` (None where the run did not log it)."""
    training = frame[frame.index > 0]

    def mean(values: pd.Series | None) -> float | None:
        values = values.dropna() if values is not None else None
        return float(values.mean()) if values is not None and not values.empty else None

    std = next((training[key] for key in ADVANTAGE_STD_KEYS if key in training), None)
    statistics = {"advantage_variance": mean(std**2 if std is not None else None)}
    for name, column in _STEP_COLUMNS.items():
        statistics[name] = mean(training.get(column))
    wait, staleness = training.get("timing_s/gen"), training.get(_STALENESS)
    fresh = staleness == 0 if wait is not None and staleness is not None else None
    statistics["batch_wait_fresh"] = mean(wait[fresh]) if fresh is not None else None
    statistics["batch_wait_stale"] = mean(wait[staleness >= 1]) if fresh is not None else None
    return statistics


def choose_target(finals: dict[str, dict], target_accuracy: float | None) -> dict:
    """The accuracy to time: the user's, else the reference algorithm's mean final, else the lowest mean final."""
    if target_accuracy is not None:
        return {"value": target_accuracy, "source": "--target-accuracy"}
    if finals.get(REFERENCE_ALGO, {}).get("mean") is not None:
        return {"value": finals[REFERENCE_ALGO]["mean"], "source": f"mean final accuracy of {REFERENCE_ALGO}"}
    candidates = {a: f["mean"] for a, f in finals.items() if f["mean"] is not None}
    lowest = min(candidates, key=candidates.get) if candidates else None
    return {
        "value": candidates[lowest] if lowest else None,
        "source": f"lowest mean final accuracy ({lowest}; no {REFERENCE_ALGO} runs)" if lowest else "none",
    }


def run_summary(r: RunResult, target: float | None) -> dict:
    """One seed's row of the summary."""
    final, final_step = r.final_accuracy()
    return {
        "seed": r.seed,
        "finished": r.finished,
        "last_step": r.last_step,
        "launches": r.launches,
        "start_accuracy": r.start_accuracy(),
        "final_accuracy": final,
        "final_step": final_step,
        "train_wall_clock_s": float(r.frame["train_wall_clock_s"].iloc[-1]),
        "steps_wall_clock_s": float(r.frame["steps_wall_clock_s"].iloc[-1]),
        "process_wall_clock_s": r.process_wall_clock_s,
        "generated_tokens": float(r.frame["generated_tokens"].iloc[-1]),
        "to_target": r.first_reaching(target) if target is not None else None,
        "phase_median_s": phase_medians(r.frame),
        "probe_pearson_last_steps": late_probe_pearson(r.frame),
        "step_statistics": step_statistics(r.frame),
        "validations": r.validations(),
    }


def no_time_reason(algorithm: dict) -> str | None:
    """Why an algorithm has no time to target to divide by, or None when it has one."""
    if not algorithm["runs"]:
        return "no runs"
    if algorithm["to_target"] is None:
        return "not reached"
    if algorithm["to_target"]["step"] == 0:
        return "target met before training (step 0)"
    return None


def ratios_to_reference(algorithms: dict[str, dict], algos: list[str]) -> dict[str, dict]:
    """Time and tokens to the target of each algorithm over the reference algorithm's (None where missing)."""
    ratios = {}
    reference = algorithms.get(REFERENCE_ALGO, {}).get("to_target")
    for algo in algos:
        if algo == REFERENCE_ALGO or REFERENCE_ALGO not in algorithms:
            continue
        mine = algorithms[algo]["to_target"]
        ratio = {
            key: (mine[key] / reference[key] if mine and reference and reference[key] > 0 else None)
            for key in RATIO_KEYS
        }
        notes = [
            f"{a}: {no_time_reason(algorithms[a])}" for a in (algo, REFERENCE_ALGO) if no_time_reason(algorithms[a])
        ]
        ratio["note"] = "; ".join(notes) or None
        ratios[f"{algo}/{REFERENCE_ALGO}"] = ratio
    return ratios


def summarise(results: list[RunResult], algos: list[str], target_accuracy: float | None) -> dict:
    """The numbers of summary.md and summary.json, as one JSON-able dict; the report adds its caveats."""
    by_algo = {algo: [r for r in results if r.algo == algo] for algo in algos}
    finals = {a: mean_sd([r.final_accuracy()[0] for r in rs]) for a, rs in by_algo.items()}
    target = choose_target(finals, target_accuracy)
    value = target["value"]

    algorithms = {}
    for algo, rs in by_algo.items():
        per_run = [run_summary(r, value) for r in sorted(rs, key=lambda r: r.seed)]
        config = rs[0].config if rs else None
        algorithms[algo] = {
            "runs": per_run,
            "rollouts_per_step": config.rollouts_per_step if config else None,
            "n": config.n if config else None,
            "start_accuracy": mean_sd([p["start_accuracy"] for p in per_run]),
            "final_accuracy": finals[algo],
            "train_wall_clock_s": mean_sd([p["train_wall_clock_s"] for p in per_run]),
            "steps_wall_clock_s": mean_sd([p["steps_wall_clock_s"] for p in per_run]),
            "process_wall_clock_s": mean_sd([p["process_wall_clock_s"] for p in per_run]),
            "to_target": mean_curve_reaching(rs, value) if rs and value is not None else None,
            "seeds_reaching_target": sum(p["to_target"] is not None for p in per_run),
            "phase_median_s": {phase: mean_sd([p["phase_median_s"][phase] for p in per_run]) for phase in PHASES},
            "step_statistics": {
                name: mean_sd([p["step_statistics"][name] for p in per_run]) for name in STEP_STATISTICS
            },
        }
    return {
        "target_accuracy": target,
        "accuracy_metric": "mean over data sources of val-core/<source>/acc/mean@<n> (reward where no acc)",
        "spread": "min-max over seeds (plots); sample sd over seeds (tables)",
        "wall_clock": "train_wall_clock_s: cumulative timing_s/step + timing_s/testing from the metrics (no start-up, "
        "no initial validation); steps_wall_clock_s: the same without the validations (cumulative timing_s/step); "
        "process_wall_clock_s: measured around the subprocesses, all launches",
        "tokens": "cumulative response_length/mean x generated rollouts per step (budget + n x DAPO's dropped groups)",
        "algorithms": algorithms,
        "ratios": ratios_to_reference(algorithms, algos),
    }
