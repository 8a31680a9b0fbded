"""Zero-variance groups and prompt selection: what the POISE runs log about them, per run and over seeds.

Every POISE run (with or without ``poise.selection``) logs per step the share of its prompt groups whose
rewards all agree (``poise/zero_variance_share``: realised, after generation). The selection variants also
log whether the step selected (``poise/selection/active``; a probe-selected run starts selecting once its
prompt-only probe is fitted), the time it took (``timing_s/select``, inside ``timing_s/step``) and, under
``probe``, the zero-variance share predicted for the kept prompts and for all candidates, and the Pearson
correlation of the prompt-only estimate with each kept prompt's realised mean reward. DAPO and GRPO log none
of these: they get no row. A number a run did not log stays None (the report says "not logged").
"""

from __future__ import annotations

import pandas as pd

from poise_verl.ablate.metrics import RunResult
from poise_verl.ablate.statistics import PROBE_WINDOW, late_mean, mean_sd

ZERO_VARIANCE = "poise/zero_variance_share"
ACTIVE = "poise/selection/active"
PREDICTED = "poise/selection/predicted_zero_variance_share"
CANDIDATES_PREDICTED = "poise/selection/candidates_predicted_zero_variance_share"
PROMPT_PEARSON = "poise/selection/prompt_pearson"
FEATURE_DIFF = "poise/selection/feature_diff_max"
SELECT_TIME = "timing_s/select"
STEP_TIME = "timing_s/step"
# A run that logs any of these gets a row (DAPO and GRPO log none).
COLUMNS = (ZERO_VARIANCE, ACTIVE, PREDICTED, CANDIDATES_PREDICTED, PROMPT_PEARSON, SELECT_TIME)
# The per-run numbers, in the order of summary.json (each also gets mean and sd over seeds).
KEYS = (
    "zero_variance_share",
    "zero_variance_share_last_steps",
    "selection_steps",
    "zero_variance_share_selection_steps",
    "predicted_zero_variance_share",
    "candidates_predicted_zero_variance_share",
    "prompt_pearson",
    "prompt_pearson_last_steps",
    "prompt_pearson_steps",
    "select_median_s",
    "step_median_s_selection_steps",
    "select_share_of_step",
    "feature_diff_max",
)


def _training(frame: pd.DataFrame, column: str) -> pd.Series | None:
    """The logged values of ``column`` at training steps (step > 0), or None where the run never logged it."""
    if column not in frame:
        return None
    values = frame[column].dropna()
    return values[values.index > 0]


def _mean(values: pd.Series | None) -> float | None:
    return float(values.mean()) if values is not None and not values.empty else None


def run_selection(frame: pd.DataFrame, window: int = PROBE_WINDOW) -> dict | None:
    """One run's numbers (keys :data:`KEYS`), or None when it logs nothing of the kind (DAPO, GRPO).

    Means are over the training steps that logged the metric; ``*_last_steps`` over the last ``window``
    steps; ``*_selection_steps`` over the steps with ``poise/selection/active`` = 1. The selection's cost:
    median ``timing_s/select`` over the steps that timed one, divided by the median ``timing_s/step`` over
    the same steps (a step that selected includes its selection).
    """
    if not any(column in frame for column in COLUMNS):
        return None
    zero = _training(frame, ZERO_VARIANCE)
    active = _training(frame, ACTIVE)
    selecting = active.index[active >= 0.5] if active is not None else None
    pearson = _training(frame, PROMPT_PEARSON)
    select = _training(frame, SELECT_TIME)
    step = _training(frame, STEP_TIME)
    select_median = float(select.median()) if select is not None and not select.empty else None
    step_median = None
    if select_median is not None and step is not None:
        same_steps = step[step.index.isin(select.index)]
        step_median = float(same_steps.median()) if not same_steps.empty else None
    feature_diff = _training(frame, FEATURE_DIFF)
    return {
        "zero_variance_share": _mean(zero),
        "zero_variance_share_last_steps": None if zero is None else late_mean(frame, ZERO_VARIANCE, window),
        "selection_steps": None if selecting is None else len(selecting),
        "zero_variance_share_selection_steps": (
            _mean(zero[zero.index.isin(selecting)]) if zero is not None and selecting is not None else None
        ),
        "predicted_zero_variance_share": _mean(_training(frame, PREDICTED)),
        "candidates_predicted_zero_variance_share": _mean(_training(frame, CANDIDATES_PREDICTED)),
        "prompt_pearson": _mean(pearson),
        "prompt_pearson_last_steps": None if pearson is None else late_mean(frame, PROMPT_PEARSON, window),
        "prompt_pearson_steps": None if pearson is None else len(pearson),
        "select_median_s": select_median,
        "step_median_s_selection_steps": step_median,
        "select_share_of_step": (
            select_median / step_median if select_median is not None and step_median else None
        ),
        "feature_diff_max": None if feature_diff is None or feature_diff.empty else float(feature_diff.max()),
    }


def summarise_selection(results: list[RunResult], algos: list[str], window: int = PROBE_WINDOW) -> dict:
    """{algo: {"runs": [{"seed", **numbers}], key: mean_sd over seeds, ...}} for each algorithm that logs
    any of :data:`COLUMNS`, in the order of ``algos``; the others are left out."""
    summary = {}
    for algo in algos:
        runs = []
        for r in sorted((r for r in results if r.algo == algo), key=lambda r: r.seed):
            numbers = run_selection(r.frame, window)
            if numbers is not None:
                runs.append({"seed": r.seed, **numbers})
        if runs:
            summary[algo] = {"runs": runs, **{key: mean_sd([run[key] for run in runs]) for key in KEYS}}
    return summary
