"""The fully asynchronous ablation's figures in docs/RESULTS.md (and README.md) are the ones its report measured.

``python -m poise_verl.ablate --algos poise_fully_async,poise,dapo`` writes ``summary.json``; its report is
committed in docs/results/tiny_ablation_fully_async/. Each figure the docs give is read from their text and compared
with that report, so a rerun whose report replaces the committed one fails here until the docs say its figures.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "results" / "tiny_ablation_fully_async"
# The section's algorithm column, and the report's name for it.
ALGORITHMS = {"POISE fully async": "poise_fully_async", "POISE": "poise", "DAPO": "dapo"}
SECTION = "## POISE fully asynchronous"


def _summary() -> dict:
    return json.loads((REPORT / "summary.json").read_text())


def _section() -> str:
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end >= 0 else None]


def _rows(columns: int) -> dict[str, list[str]]:
    """{report name: cells} of the section's table rows with COLUMNS cells."""
    rows = {}
    for line in _section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == columns and cells[0] in ALGORITHMS:
            rows[ALGORITHMS[cells[0]]] = cells
    return rows


def _mean_sd(block: dict) -> str:
    """mean ± sd over seeds, as the report writes it (the mean alone from one seed)."""
    return f"{block['mean']:.3f}" + ("" if block["sd"] is None else f" ± {block['sd']:.3f}")


def _share(block: dict | None) -> str:
    return "n/a" if block is None or block["mean"] is None else f"{100 * block['mean']:.1f}%"


def test_the_tables_have_every_arm_of_the_report():
    arms = set(_summary()["algorithms"])
    assert set(ALGORITHMS.values()) == arms
    assert set(_rows(5)) == arms and set(_rows(7)) == arms


@pytest.mark.parametrize("algo", sorted(ALGORITHMS.values()))
def test_a_results_row_is_its_report(algo):
    report = _summary()["algorithms"][algo]
    cells = _rows(5)[algo]
    assert cells[1].strip("*") == _mean_sd(report["final_accuracy"])
    assert cells[2] == ", ".join(f"{r['final_accuracy']:.3f}" for r in sorted(report["runs"], key=lambda r: r["seed"]))
    assert cells[3] == f"{report['train_wall_clock_s']['mean']:.0f} s ({report['steps_wall_clock_s']['mean']:.0f} s)"
    hit = report["to_target"]
    if hit is None or hit.get("step") is None:
        assert cells[4] == "not reached"
    else:
        expected = (f"{hit['wall_clock_s']:.0f} s ({hit['steps_wall_clock_s']:.0f} s), step {hit['step']}, "
                    f"{hit['tokens'] / 1000:.0f}k")
        assert cells[4].split(": ")[-1] == expected


@pytest.mark.parametrize("algo", sorted(ALGORITHMS.values()))
def test_a_per_step_row_is_its_report(algo):
    report = _summary()["algorithms"][algo]
    cells = _rows(7)[algo]
    phases, statistics = report["phase_median_s"], report["step_statistics"]
    parts = ("step", "old_log_prob", "update_actor", "update_weights")
    assert cells[1] == ", ".join(f"{phases[p]['mean']:.2f} s" for p in parts)
    staleness, partial = statistics["staleness"]["mean"], statistics["partial_share"]["mean"]
    assert cells[2] == ("0" if staleness == 0 else f"{staleness:.2f}")
    assert cells[3] == ("0" if partial == 0 else f"{100 * partial:.1f}%")
    assert cells[4] == _share(statistics.get("trainer_wait_share"))
    assert cells[5] == _share(statistics.get("rollout_weight_wait_share"))
    assert cells[6] == f"{phases['testing']['mean']:.1f} s"


def test_the_ratios_to_dapo_are_the_reports():
    ratios = _summary()["ratios"]
    fully, sync = ratios["poise_fully_async/dapo"], ratios["poise/dapo"]
    said = (
        f"POISE fully async {fully['wall_clock_s']:.2f}x of DAPO's wall-clock to DAPO's final accuracy "
        f"({fully['steps_wall_clock_s']:.2f}x without validations) and {fully['tokens']:.2f}x of its tokens; "
        f"sync POISE {sync['wall_clock_s']:.2f}x ({sync['steps_wall_clock_s']:.2f}x) and {sync['tokens']:.2f}x"
    )
    section = " ".join(_section().replace("**", "").split())
    assert said in section, f"docs/RESULTS.md no longer says: {said}"


def test_the_section_shows_the_reports_plot():
    plots = re.findall(r"!\[[^\]]*\]\((results/tiny_ablation_fully_async/[^)]+\.png)\)", _section())
    assert plots, "the section shows no plot of its report"
    for plot in plots:
        assert (ROOT / "docs" / plot).is_file(), plot
