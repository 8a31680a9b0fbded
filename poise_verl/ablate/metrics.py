"""Metrics: a run's JSONL files (verl's ``file`` logger, the launcher's attempts) as one DataFrame per run."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from poise_verl.ablate.plan import ATTEMPTS, AlgoConfig, Run

# verl's validation metrics: val-core/<data_source>/<acc or reward>/mean@<n>.
VAL_CORE = re.compile(r"^val-core/(?P<source>.+)/(?P<var>acc|reward)/mean@(?P<n>\d+)$")
# Std over the batch of the per-rollout advantage A_i: every trainer mode of this project logs training/adv_std;
# poise/adv_std is where runs of older versions logged it.
ADVANTAGE_STD_KEYS = ["training/adv_std", "poise/adv_std"]
# verl counts DAPO's dropped groups (prompts) per step under these keys, only when there were some.
DROPPED_GROUP_KEYS = (
    "training/filter_groups/evicted_samples",
    "training/filter_groups/discarded_surplus_samples",
)


def attempts(folder: Path) -> list[dict]:
    """The launches of the run in ``folder`` (``attempts.jsonl``), oldest first."""
    path = folder / ATTEMPTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_metrics(folder: Path) -> pd.DataFrame:
    """{step: metrics} of a run as a DataFrame indexed by step, over every launch's metrics JSONL.

    Files are read in launch order (their names start with the launch time). A resumed launch restarts at
    its checkpoint step r: its rows replace the earlier launches' rows after r (work redone after an
    interruption), and its row at r (the validation verl repeats on resume) is merged into the earlier one.
    """
    steps: dict[int, dict[str, float]] = {}
    for path in sorted((folder / "metrics").glob("*.jsonl")):
        rows = []
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a launch killed mid-write leaves a torn last line
                    continue
        if not rows:
            continue
        first = min(int(row["step"]) for row in rows)
        steps = {step: values for step, values in steps.items() if step <= first}
        for row in rows:
            steps.setdefault(int(row["step"]), {}).update(row["data"])
    frame = pd.DataFrame.from_dict(steps, orient="index").sort_index()
    frame.index.name = "step"
    return frame.apply(pd.to_numeric, errors="coerce")


def validation_accuracy(frame: pd.DataFrame, metric: str | None = None) -> pd.Series:
    """Validation accuracy per step (NaN where there was no validation).

    ``metric`` names one column; by default the unweighted mean over data sources of verl's
    ``val-core/<source>/acc/mean@<n>`` (``reward`` where a source has no ``acc``), as the paper averages
    benchmarks.
    """
    if metric is not None:
        return frame[metric] if metric in frame else pd.Series(float("nan"), index=frame.index)
    by_source: dict[str, str] = {}
    for column in frame.columns:
        match = VAL_CORE.match(str(column))
        if match and (match["var"] == "acc" or match["source"] not in by_source):
            by_source[match["source"]] = column
    if not by_source:
        return pd.Series(float("nan"), index=frame.index)
    return frame[sorted(by_source.values())].mean(axis=1, skipna=False)


def add_derived_columns(frame: pd.DataFrame, config: AlgoConfig, metric: str | None = None) -> pd.DataFrame:
    """``val_accuracy``, ``train_wall_clock_s``, ``steps_wall_clock_s`` and ``generated_tokens`` (cumulative, 0
    at step 0). ``train_wall_clock_s`` counts the training steps and the validations, ``steps_wall_clock_s`` the
    training steps alone (every algorithm validates the same prompts, so validation time dilutes their ratios).

    Generated rollouts per step: the budget, plus n for each group DAPO's dynamic sampling dropped (verl
    logs their count); their lengths are not logged, so tokens use the kept rollouts' mean length for them.
    """
    frame = frame.copy()
    frame["val_accuracy"] = validation_accuracy(frame, metric)
    training = frame.index > 0

    def column(name: str) -> pd.Series:
        return frame[name].fillna(0.0) if name in frame else pd.Series(0.0, index=frame.index)

    step_seconds = (column("timing_s/step") + column("timing_s/testing")).where(training, 0.0)
    frame["train_wall_clock_s"] = step_seconds.cumsum()
    frame["steps_wall_clock_s"] = column("timing_s/step").where(training, 0.0).cumsum()
    dropped_groups = sum((column(key) for key in DROPPED_GROUP_KEYS), pd.Series(0.0, index=frame.index))
    frame["generated_rollouts"] = (config.rollouts_per_step + config.n * dropped_groups).where(training, 0.0)
    tokens = (column("response_length/mean") * frame["generated_rollouts"]).where(training, 0.0)
    frame["generated_tokens"] = tokens.cumsum()
    return frame


def describe_progress(frame: pd.DataFrame, config: AlgoConfig) -> str:
    """One line on how far a run got, for the launcher's log."""
    if frame.empty:
        return "no metrics logged"
    frame = add_derived_columns(frame, config)
    accuracy = frame["val_accuracy"].dropna()
    last_step = int(frame.index.max())
    text = (
        f"{last_step} steps, training wall-clock {frame['train_wall_clock_s'].iloc[-1]:.0f} s (from metrics)"
    )
    if not accuracy.empty:
        text += f", validation accuracy {accuracy.iloc[0]:.3f} -> {accuracy.iloc[-1]:.3f} (step {int(accuracy.index[-1])})"
    return text


@dataclass
class RunResult:
    """One run's merged metrics (with the derived columns) and what its launches measured."""

    algo: str
    seed: int
    finished: bool
    frame: pd.DataFrame
    config: AlgoConfig
    process_wall_clock_s: float | None
    launches: int
    last_step: int = field(init=False)

    def __post_init__(self):
        self.last_step = int(self.frame.index.max()) if not self.frame.empty else 0

    @property
    def accuracy(self) -> pd.Series:
        return self.frame["val_accuracy"].dropna() if "val_accuracy" in self.frame else pd.Series(dtype=float)

    def start_accuracy(self) -> float | None:
        accuracy = self.accuracy
        return float(accuracy.loc[0]) if 0 in accuracy.index else None

    def final_accuracy(self) -> tuple[float | None, int | None]:
        accuracy = self.accuracy[self.accuracy.index > 0]
        if accuracy.empty:
            return None, None
        return float(accuracy.iloc[-1]), int(accuracy.index[-1])

    def validations(self) -> list[dict]:
        """Every validation of the run: step, accuracy, and training wall-clock (with and without validations)
        and tokens up to it. Kept in summary.json so that a later report can re-read the curves (a time to a
        new target, runs added from another day) once the run folders are gone."""
        return [
            {
                "step": int(step),
                "accuracy": float(accuracy),
                "wall_clock_s": float(self.frame.loc[step, "train_wall_clock_s"]),
                "steps_wall_clock_s": float(self.frame.loc[step, "steps_wall_clock_s"]),
                "tokens": float(self.frame.loc[step, "generated_tokens"]),
            }
            for step, accuracy in self.accuracy.items()
        ]

    def first_reaching(self, target: float) -> dict | None:
        """Step, training wall-clock (with and without validations) and tokens at the first validation at or
        above ``target``."""
        reached = self.accuracy[self.accuracy >= target - 1e-12]
        if reached.empty:
            return None
        step = int(reached.index[0])
        return {
            "step": step,
            "wall_clock_s": float(self.frame.loc[step, "train_wall_clock_s"]),
            "steps_wall_clock_s": float(self.frame.loc[step, "steps_wall_clock_s"]),
            "tokens": float(self.frame.loc[step, "generated_tokens"]),
        }


def collect(runs: list[Run], metric: str | None = None) -> list[RunResult]:
    """The runs that have logged metrics, each read from its folder."""
    results = []
    for run in runs:
        frame = load_metrics(run.folder) if (run.folder / "metrics").exists() else pd.DataFrame()
        if frame.empty:
            continue
        frame = add_derived_columns(frame, run.config, metric)
        history = attempts(run.folder)
        process = round(sum(a["wall_clock_s"] for a in history), 3) if history else None
        results.append(
            RunResult(run.algo, run.seed, run.status() == "done", frame, run.config, process, len(history))
        )
    return results
