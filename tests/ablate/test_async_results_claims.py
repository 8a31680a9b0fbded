"""The asynchronous ablation's figures in docs/RESULTS.md are the ones its reports measured.

``python -m poise_verl.ablate`` writes ``summary.json``; the reports of the asynchronous ablation are committed
under docs/results/tiny_ablation_async/ (the current run at the top, the run before the batched client in a dated
folder, GRPO sync against async in grpo_sync_vs_async/). Each figure the docs give is read from their text and compared with the report it names, so a rerun
whose report replaces the committed one fails here until the docs say the new figures.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "docs" / "results" / "tiny_ablation_async"
# The RESULTS table's first column, and the report each of its rows comes from.
RUNS = {"evening": REPORTS, "afternoon": REPORTS / "2026-12-05-per-request-client"}
# The RESULTS table's algorithm column (up to the first comma), and the report's name for it.
ALGORITHMS = {"POISE async": "poise_async", "POISE": "poise", "DAPO": "dapo", "rloo2": "rloo2"}


def _one_line(path: Path) -> str:
    return " ".join(path.read_text().split())


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _mean_sd(block: dict) -> str:
    return f"{block['mean']:.3f} ± {block['sd']:.3f}"


# The two tables of the section, each told apart by the shape of one column: (column, pattern).
TABLES = {"main": (4, r"\d+ s \(\d+ s\)"), "per-step": (5, r"[\d.]+%|0")}


def _rows(table: str) -> list[tuple[str, str, list[str]]]:
    """(run, algorithm, cells) of every row of one of the asynchronous ablation's tables in docs/RESULTS.md."""
    column, pattern = TABLES[table]
    rows = []
    for line in (ROOT / "docs" / "RESULTS.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        algorithm = cells[1].split(",")[0] if len(cells) == 7 else None
        if algorithm in ALGORITHMS and cells[0] in RUNS and re.fullmatch(pattern, cells[column]):
            rows.append((cells[0], ALGORITHMS[algorithm], cells))
    return rows


def _params(table: str) -> list:
    return [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in _rows(table)]


@pytest.mark.parametrize("table", TABLES)
def test_each_table_has_every_arm_of_both_runs(table):
    found = {(run, algo) for run, algo, _ in _rows(table)}
    for run, folder in RUNS.items():
        expected = {(run, algo) for algo in _summary(folder)["algorithms"]}
        assert expected <= found, f"docs/RESULTS.md's {table} table lacks {sorted(expected - found)} of {folder}"


@pytest.mark.parametrize("run, algo, cells", _params("main"))
def test_a_results_row_is_its_report(run, algo, cells):
    report = _summary(RUNS[run])["algorithms"][algo]
    assert cells[2].strip("*") == _mean_sd(report["final_accuracy"])
    per_seed = ", ".join(f"{r['final_accuracy']:.3f}" for r in sorted(report["runs"], key=lambda r: r["seed"]))
    assert cells[3] == per_seed
    train, steps = report["train_wall_clock_s"]["mean"], report["steps_wall_clock_s"]["mean"]
    assert cells[4] == f"{train:.0f} s ({steps:.0f} s)"
    assert cells[5] == f"{report['process_wall_clock_s']['mean']:.0f} s"
    to_target = report["to_target"]
    if to_target is None or to_target.get("step") is None:
        assert cells[6] == "not reached"
    else:
        expected = (
            f"{to_target['wall_clock_s']:.0f} s ({to_target['steps_wall_clock_s']:.0f} s), "
            f"step {to_target['step']}, {to_target['tokens'] / 1000:.0f}k"
        )
        assert cells[6].split(": ")[-1] == expected


@pytest.mark.parametrize("run", RUNS)
def test_the_results_ratios_to_dapo_are_the_reports(run):
    results = _one_line(ROOT / "docs" / "RESULTS.md").replace("**", "")
    for algo, name in (("poise_async", "POISE async"), ("poise", "POISE")):
        ratio = _summary(RUNS[run])["ratios"][f"{algo}/dapo"]
        said = f"{name} {ratio['wall_clock_s']:.2f}x ({ratio['steps_wall_clock_s']:.2f}x"
        line = re.search(rf"- {run}: (.*?)\. ", results)
        assert line and said in line.group(1), f"docs/RESULTS.md's {run!r} ratios no longer say: {said}"


@pytest.mark.parametrize("run, algo, cells", _params("per-step"))
def test_a_per_step_row_is_its_report(run, algo, cells):
    report = _summary(RUNS[run])["algorithms"][algo]
    statistics, phases = report["step_statistics"], report["phase_median_s"]
    step, gen, testing = (phases[key]["mean"] for key in ("step", "gen", "testing"))
    assert cells[6] == f"{step:.2f} s, {gen:.2f} s, {testing:.1f} s"
    for cell, key in ((cells[2], "advantage_variance"), (cells[3], "grad_norm")):
        mean_sd = _mean_sd(statistics[key])
        # A row whose sd rounds to zero (DAPO's -1/1 rewards fix the variance) may give the mean alone.
        assert cell in (mean_sd, mean_sd.split(" ± ")[0] if mean_sd.endswith("± 0.000") else mean_sd), key
    assert cells[4] == ("0" if statistics["staleness"]["mean"] == 0 else f"{statistics['staleness']['mean']:.2f}")
    partial = statistics["partial_share"]["mean"]
    assert cells[5] == ("0" if partial == 0 else f"{100 * partial:.1f}%")


# The GRPO sync-vs-async table: its own report, its own columns (no DAPO arm, so no time to DAPO's accuracy).
GRPO_REPORT = REPORTS / "grpo_sync_vs_async"
GRPO_ALGORITHMS = {"GRPO async": "grpo_async", "GRPO": "grpo"}


def _grpo_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (ROOT / "docs" / "RESULTS.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in GRPO_ALGORITHMS and re.fullmatch(r"\d+ s \(\d+ s\)", cells[3]):
            rows[GRPO_ALGORITHMS[cells[0]]] = cells
    return rows


def _seconds(value) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def test_the_grpo_table_is_its_report():
    algorithms = _summary(GRPO_REPORT)["algorithms"]
    rows = _grpo_rows()
    assert set(rows) == set(algorithms), f"docs/RESULTS.md's GRPO table has {sorted(rows)}, its report {sorted(algorithms)}"
    for algo, cells in rows.items():
        report = algorithms[algo]
        statistics = report["step_statistics"]
        assert cells[1] == _mean_sd(report["final_accuracy"]), algo
        assert cells[2] == ", ".join(f"{r['final_accuracy']:.3f}" for r in sorted(report["runs"], key=lambda r: r["seed"]))
        assert cells[3] == f"{report['train_wall_clock_s']['mean']:.0f} s ({report['steps_wall_clock_s']['mean']:.0f} s)"
        staleness, partial = statistics["staleness"]["mean"], statistics["partial_share"]["mean"]
        assert cells[4] == ("0, 0" if staleness == 0 and partial == 0 else f"{staleness:.2f}, {100 * partial:.1f}%"), algo
        waits = ", ".join(_seconds(statistics[key]["mean"]) for key in ("batch_wait", "batch_wait_fresh", "batch_wait_stale"))
        assert cells[5] == f"{report['phase_median_s']['step']['mean']:.2f} s; {waits}", algo


def test_the_grpo_ratios_are_its_reports():
    algorithms = _summary(GRPO_REPORT)["algorithms"]
    train = {algo: algorithms[algo]["train_wall_clock_s"]["mean"] for algo in GRPO_ALGORITHMS.values()}
    steps = {algo: algorithms[algo]["steps_wall_clock_s"]["mean"] for algo in GRPO_ALGORITHMS.values()}
    said = (
        f"Its training wall-clock is {train['grpo_async'] / train['grpo']:.2f}x the sync one "
        f"({steps['grpo_async'] / steps['grpo']:.2f}x without validations)"
    )
    assert said in _one_line(ROOT / "docs" / "RESULTS.md"), f"docs/RESULTS.md no longer says: {said}"
