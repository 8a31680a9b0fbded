"""The five-algorithm ablation's tables in docs/RESULTS.md are the ones its committed report measured.

``python -m poise_verl.ablate --algos poise,poise_select,poise_history,dapo,grpo --seeds 0,1,2`` wrote the report in
docs/results/tiny_ablation/. Each cell of the section's two tables is read from the text and compared with the
report's ``summary.json``, so a rerun whose report replaces the committed one fails here until the section says its
figures. (The asynchronous sections have their own tests in tests/ablate/.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from markdown_tables import section, table_rows

ROOT = Path(__file__).resolve().parents[2]
REPORT = json.loads((ROOT / "docs" / "results" / "tiny_ablation" / "summary.json").read_text())
SECTION = "## Five algorithms at the same 128 rollouts per step"
LABELS = {"POISE": "poise", "POISE + selection": "poise_select", "POISE + history filter": "poise_history",
          "DAPO": "dapo", "GRPO": "grpo"}


RESULTS = ROOT / "docs" / "RESULTS.md"


def _section() -> str:
    return section(RESULTS, SECTION)


def _table(columns: int, suffix: str = "") -> dict[str, list[str]]:
    """{arm: cells} of the section's rows with COLUMNS cells whose first cell is an arm's name + SUFFIX."""
    rows = {}
    for cells in table_rows(_section(), columns):
        name = cells[0].removesuffix(suffix)
        if cells[0].endswith(suffix) and name in LABELS:
            rows[LABELS[name]] = cells
    return rows


def test_the_main_table_has_every_arm():
    assert set(_table(7)) == set(REPORT["algorithms"])


@pytest.mark.parametrize("algo", sorted(LABELS.values()))
def test_a_main_table_row_is_its_report(algo):
    arm, cells = REPORT["algorithms"][algo], _table(7)[algo]
    final = arm["final_accuracy"]
    assert cells[1].strip("*") == f"{final['mean']:.3f} ± {final['sd']:.3f}"
    assert cells[2] == ", ".join(f"{r['final_accuracy']:.3f}" for r in sorted(arm["runs"], key=lambda r: r["seed"]))
    assert cells[3] == f"{arm['train_wall_clock_s']['mean']:.0f} s ({arm['steps_wall_clock_s']['mean']:.0f} s)"
    assert cells[4] == f"{arm['process_wall_clock_s']['mean']:.0f} s"
    hit = arm["to_target"]
    if hit is None:
        assert cells[5] == cells[6] == "not reached"
    else:
        assert cells[5] == f"{hit['wall_clock_s']:.0f} s ({hit['steps_wall_clock_s']:.0f} s), step {hit['step']}"
        assert cells[6] == f"{hit['tokens'] / 1000:.0f}k"


def test_the_target_and_the_start_are_the_reports():
    header = next(line for line in _section().splitlines() if line.startswith("| algorithm"))
    target = REPORT["target_accuracy"]["value"]
    assert f"to DAPO's final {target:.3f}:" in header
    starts = {round(arm["start_accuracy"]["mean"], 3) for arm in REPORT["algorithms"].values()}
    assert starts == {0.423} and "All start at 0.423." in _section()


def test_the_ratio_table_is_the_reports():
    rows = _table(4, suffix=" / DAPO")
    assert set(rows) == {"poise", "poise_select", "poise_history"}
    for algo, cells in rows.items():
        ratio = REPORT["ratios"][f"{algo}/dapo"]
        assert cells[1:] == [f"{ratio['wall_clock_s']:.2f}x", f"{ratio['steps_wall_clock_s']:.2f}x",
                             f"{ratio['tokens']:.2f}x"], algo


ESTIMATORS = ROOT / "docs" / "results" / "value_estimator_tiny"
# The value-estimator table's rows: (the row's first cell, up to its first " (", the probe order whose runs it reads,
# the estimator's key in results.json).
ESTIMATOR_ROWS = {
    "POISE probe, official order": ("official", "probe_m_rollouts"),
    "POISE probe, `standardise_first`": ("standardise_first", "probe_m_rollouts"),
    "critic": ("official", "critic"),
    "training-set mean": ("official", "train_mean"),
    "the prompt's own mean over 2 rollouts": ("official", "group_mean_2"),
}


def _estimator_runs(order: str) -> list[dict]:
    return [json.loads((ESTIMATORS / order / f"seed_{seed}" / "results.json").read_text()) for seed in range(3)]


def _value_estimator_rows() -> dict[str, list[str]]:
    return {cells[0].split(" (")[0]: cells for cells in table_rows(section(RESULTS, "## Value estimators"), 4)}


@pytest.mark.parametrize("row", sorted(ESTIMATOR_ROWS))
def test_a_value_estimator_row_is_its_three_runs(row):
    order, key = ESTIMATOR_ROWS[row]
    runs, cells = _estimator_runs(order), _value_estimator_rows()[row]
    pearson = [run["estimators"][key]["pearson"] for run in runs]
    mean = sum(pearson) / 3
    if key == "train_mean":  # a constant prediction: no correlation
        assert cells[1] == "0" and cells[3] == "0" and max(map(abs, pearson)) < 1e-9
    else:
        assert cells[1] == " / ".join(f"{p:.3f}" for p in pearson) + f" ({mean:.3f})"
        disjoint = sum(run["disjoint_target"]["probe_2_rollouts" if key == "probe_m_rollouts" else key]["pearson"]
                       for run in runs) / 3
        assert cells[3] == f"{disjoint:.3f}"
    assert cells[2] == f"{sum(run['estimators'][key]['mae'] for run in runs) / 3:.3f}"


def test_the_papers_row_is_the_anchor_the_runs_carry():
    anchor = _estimator_runs("official")[0]["paper_anchor"]
    cells = _value_estimator_rows()["paper, Qwen3-4B on DAPO-Math: probe / critic"]
    assert cells[1] == f"{anchor['probe']['pearson']:.3f} / {anchor['critic']['pearson']:.3f}"
    assert cells[2] == f"{anchor['probe']['mae']:.3f} / {anchor['critic']['mae']:.3f}"


def _selection_rows() -> dict[str, list[str]]:
    rows = table_rows(section(RESULTS, "## Prompt selection before generation"), 4)
    return {cells[0].split(" (")[0].split(",")[0]: cells[1:] for cells in rows if cells[0]}


def test_the_selection_table_is_the_reports():
    selection, rows = REPORT["selection"], _selection_rows()
    arms = ("poise", "poise_select", "poise_history")

    def mean_sd(algo: str, key: str) -> str:
        return f"{selection[algo][key]['mean']:.3f} ± {selection[algo][key]['sd']:.3f}"

    assert rows["realised zero-variance share of pairs"] == [mean_sd(a, "zero_variance_share") for a in arms]
    select = selection["poise_select"]
    assert rows["predicted zero-variance share: kept prompts / all candidates"] == [
        "-", (f"{select['predicted_zero_variance_share']['mean']:.3f} / "
             f"{select['candidates_predicted_zero_variance_share']['mean']:.3f}"), "-"]
    assert rows["prompt-only estimate vs realised mean reward"] == ["-", mean_sd("poise_select", "prompt_pearson"), "-"]
    assert rows["choosing's share of a step"] == [
        "-",
        (f"{select['select_share_of_step']['mean']:.3f} ({select['select_median_s']['mean']:.3f} s of "
        f"{select['step_median_s_selection_steps']['mean']:.2f} s)"),
        f"{selection['poise_history']['select_share_of_step']['mean']:.3f}",
    ]
