"""Every figure the README gives is read from its text and compared with the committed report it comes from.

The results table names its report (``Report: `docs/results/<folder>/` ``, written by ``python -m poise_verl.ablate``);
each row is checked against that report's ``summary.json``, so a rerun whose report replaces the committed one
fails here until the README says its figures. The shipped build's figures are checked in
tests/tiny/test_shipped_build_claims.py, and the feature-capture cost against the GPU check's report here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from markdown_tables import section, table_rows

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECTION = "## Result on the tiny default"
# The README's name of each arm, and the ablation's.
LABELS = {
    "POISE": "poise",
    "POISE + prompt selection": "poise_select",
    "POISE + history filter": "poise_history",
    "POISE async (colocated)": "poise_async",
    "POISE fully async": "poise_fully_async",
    "DAPO": "dapo",
    "GRPO": "grpo",
}


def _section() -> str:
    return section(ROOT / "README.md", SECTION)


def _report() -> tuple[Path, dict]:
    found = re.search(r"Report: `(docs/results/[^`]+)/`", _section())
    assert found, "the README's results section names no report"
    folder = ROOT / found.group(1)
    return folder, json.loads((folder / "summary.json").read_text())


def _rows() -> dict[str, list[str]]:
    return {LABELS[cells[0]]: cells for cells in table_rows(_section(), 4) if cells[0] in LABELS}


def test_the_table_has_every_arm_of_its_report():
    _, report = _report()
    assert set(_rows()) == set(report["algorithms"])


def test_each_row_is_its_report():
    _, report = _report()
    target_algo = report["target_accuracy"]["source"].split()[-1]  # "mean final accuracy of dapo"
    for algo, cells in _rows().items():
        arm = report["algorithms"][algo]
        start, final = arm["start_accuracy"]["mean"], arm["final_accuracy"]
        assert cells[1] == f"{start:.3f} -> {final['mean']:.3f} ± {final['sd']:.3f}", (algo, cells[1])
        assert cells[2] == f"{arm['train_wall_clock_s']['mean']:.0f} s", (algo, cells[2])
        ratio = report["ratios"].get(f"{algo}/{target_algo}")
        if algo == target_algo:
            expected = "1x, 1x"
        elif ratio is None or ratio["wall_clock_s"] is None:
            expected = "not reached"
        else:
            expected = f"{ratio['wall_clock_s']:.2f}x, {ratio['tokens']:.2f}x"
        assert cells[3] == expected, (algo, cells[3])


def test_the_section_shows_a_plot_of_its_report():
    folder, _ = _report()
    plots = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", _section())
    assert plots and all((ROOT / p).is_file() and (ROOT / p).parent == folder for p in plots), plots


def test_the_feature_capture_cost_is_the_gpu_checks():
    report = json.loads((ROOT / "docs" / "results" / "gpu_check_h200.json").read_text())
    said = f"Feature capture costs {report['summary']['capture_overhead_pct']:.2f}% of the actor's log-prob forward"
    assert said in " ".join(README.split())
