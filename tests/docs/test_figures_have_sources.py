"""Every figure in the README and docs/ comes from somewhere a reader can check.

A figure (a number with a decimal point as a doc prints it, or a whole number with a unit: s, min, %, x, k, MiB)
passes when a committed report that its own section
cites (``docs/results/...``, ``benchmarks/....json``) holds it at the printed precision: the same text, or a number
that rounds to it (a percentage also as a fraction). Every other figure is listed below with what it is: a setting
or version, an example, the paper's or the official code's number, a value the claims tests compute from a
report (``derived``), or a measurement whose command the doc names (``command``). A figure the doc gains without
a source fails here, and so does an entry below that no longer matches its doc.

Whole numbers are a weak check (a report of hundreds of numbers holds most small ones); decimals, at their printed
precision, a firmer one. This checks provenance, not the value's meaning: the tables' cells are recomputed from their reports by
tests/docs/test_readme_claims.py, test_results_claims.py, test_performance_claims.py and the ablation claims tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# docs/OFFICIAL_SETTINGS.md is itself a source: the paper's and the official code's settings and results, each with
# the line of the paper or the file of the official code it comes from.
DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md") if p.name != "OFFICIAL_SETTINGS.md")]
FIGURE = re.compile(r"(?<![\w.\-/`])(\d+\.\d+)(%?)(?![\w.])")
WHOLE_WITH_UNIT = re.compile(r"(?<![\w.\-/`,])(\d+)(?= ?(?:s|ms|min|%|x|k|MiB|GiB)\b)")
CITED = re.compile(r"(?:docs/)?results/[\w./\-]+|benchmarks/[\w\-]+\.json")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")
REPORT_SUFFIXES = {".json", ".md", ".csv", ".txt", ".jsonl"}

SETTING, VERSION, EXAMPLE, PAPER = "a setting", "a version", "an example", "the paper's or the official code's"

# (doc, the figure as printed): what it is, where no report cited in its section holds it. A figure printed several
# times in a doc is listed once.
NOT_FROM_A_REPORT = {
    ("README.md", "3.10"): VERSION,
    ("docs/RESULTS.md", "1.1"): "derived: the binomial standard error of 2048 prompts at 50%, sqrt(0.25 / 2048)",
    ("docs/RESULTS.md", "0.423"): "derived: every arm's start_accuracy mean (test_results_claims.py)",
    ("docs/RESULTS.md", "1.4"): "derived: the largest spread of the per-seed finals in the table above",
    ("docs/RESULTS.md", "0.4917"): "derived: the mean-over-seeds validation curve of the async report at step 50",
    ("docs/RESULTS.md", "0.25"): SETTING,
    ("docs/RESULTS.md", "19.3"): "derived: 1 - 0.807 of the selection table",
    ("docs/RESULTS.md", "21.6"): "derived: 1 - 0.784 of the selection table",
    ("docs/RESULTS.md", "0.43"): "derived: 0.425 of the selection table, rounded",
    ("docs/RESULTS.md", "0.579"): "derived: the value-estimator table's mean of three seeds (test_results_claims.py)",
    ("docs/RESULTS.md", "0.648"): "derived: the value-estimator table's mean of three seeds (test_results_claims.py)",
    ("docs/RESULTS.md", "0.444"): "derived: the value-estimator table's mean of three seeds (test_results_claims.py)",
    ("docs/RESULTS.md", "0.247"): "derived: the value-estimator table's mean of three seeds (test_results_claims.py)",
    ("docs/RESULTS.md", "0.879"): "derived: the value-estimator table's mean of three seeds (test_results_claims.py)",
    ("docs/RESULTS.md", "0.781"): "derived: the value-estimator table's mean of three seeds (test_results_claims.py)",
    ("docs/RESULTS.md", "0.068"): "derived: a per-seed difference of the value-estimator table",
    ("docs/RESULTS.md", "0.022"): "derived: a per-seed difference of the value-estimator table",
    ("docs/RESULTS.md", "0.114"): "derived: the value-estimator table's mean of three seeds (test_results_claims.py)",
    ("docs/RESULTS.md", "0.200"): "derived: the value-estimator table's mean of three seeds (test_results_claims.py)",
    ("docs/RESULTS.md", "0.222"): "derived: the value-estimator table's mean of three seeds (test_results_claims.py)",
    ("docs/RESULTS.md", "0.631"): "derived: the value-estimator table's mean of three seeds (test_results_claims.py)",
    ("docs/RESULTS.md", "7.5"): "derived: 60 steps x 128 candidates over the 1024-prompt pool",
    ("docs/RESULTS.md", "7.0"): "derived: docs/PERFORMANCE.md's CPU-step ratios",
    ("docs/PERFORMANCE.md", "2.07"): "command: benchmarks.cpu_step, a run under load the section describes",
    ("docs/PERFORMANCE.md", "40.5"): "command: benchmarks.cpu_step, its start-up figure",
    ("docs/PERFORMANCE.md", "43.9"): "command: benchmarks.cpu_step, its start-up figure",
    ("docs/CPU_PLATFORM.md", "8.9"): "command: time python -c 'import verl' (named in the doc), before the change",
    ("docs/CPU_PLATFORM.md", "4.7"): "command: time python -c 'import verl' (named in the doc), before the change",
    ("docs/CPU_PLATFORM.md", "3.9"): "command: time python -c 'import verl' (named in the doc)",
    ("docs/CPU_PLATFORM.md", "1.05"): "command: python -X importtime -c 'import verl.checkpoint_engine' (named in "
    "the doc), before the change",
    ("docs/CPU_PLATFORM.md", "0.01"): "command: python -X importtime -c 'import verl.checkpoint_engine' (named in "
    "the doc)",
    ("docs/CPU_PLATFORM.md", "5.10"): VERSION,
    ("docs/CPU_PLATFORM.md", "2.60"): VERSION,
    ("docs/FIDELITY.md", "0.6"): PAPER,
    ("docs/FIDELITY.md", "0.95"): PAPER,
    ("docs/FIDELITY.md", "1.0"): PAPER,
    ("docs/FIDELITY.md", "0.500"): PAPER,
    ("docs/FIDELITY.md", "0.508"): PAPER,
    ("docs/FIDELITY.md", "2.94"): "derived: 51,200 prompt draws over the official data's 17,398 problems",
    ("docs/FIDELITY.md", "2.86"): "derived: 51,200 prompt draws over the official data's 17,917 problems",
    ("docs/FIDELITY.md", "0.36"): "derived: 6,400 prompts over the official data's 17,917 problems",
    ("docs/FIDELITY.md", "0.56"): "derived: 51,200 prompts over ~91.4k",
    ("docs/FIDELITY.md", "0.94"): "derived: 51,200 prompts over 54.4k",
    ("docs/FIDELITY.md", "0.0"): SETTING,
    ("docs/FIDELITY.md", "10.0"): PAPER,
    ("docs/FIDELITY.md", "3.14"): PAPER,
    ("docs/FIDELITY.md", "0.1"): "command: tests/core/test_probe.py, the randomised PCA's error bound",
    ("docs/FIDELITY.md", "0.096"): "command: tests/core/test_capture_sequence_parallel.py, sdpa across slices",
    ("README.md", "8"): SETTING,
    ("docs/CPU_PLATFORM.md", "2"): SETTING,
    ("docs/FIDELITY.md", "5"): PAPER,
    ("docs/FIDELITY.md", "8"): PAPER,
    ("docs/FIDELITY.md", "10"): PAPER,
    ("docs/FIDELITY.md", "30"): PAPER,
    ("docs/FIDELITY.md", "70"): PAPER,
    ("docs/FIDELITY.md", "200"): PAPER,
    ("docs/FIDELITY.md", "300"): SETTING,
    ("docs/PERFORMANCE.md", "32"): SETTING,
    ("docs/PERFORMANCE.md", "512"): SETTING,
    ("docs/PERFORMANCE.md", "30"): SETTING,
    ("docs/PERFORMANCE.md", "120"): SETTING,
    ("docs/PERFORMANCE.md", "330"): SETTING,
    ("docs/PERFORMANCE.md", "650"): PAPER,
    ("docs/RESULTS.md", "2"): "a target the issue set (GRPO's step within 2x a plain trainer's)",
    ("docs/RESULTS.md", "37"): "derived: the six runs' process_wall_clock_s in the report, summed",
}


def _sections(text: str):
    """(heading, body) of each part of a markdown file, split at its headings (not inside code blocks)."""
    heading, body, fenced = "(top)", [], False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            yield heading, "\n".join(body)
            heading, body = line, []
        else:
            body.append(line)
    yield heading, "\n".join(body)


def _report_text(body: str) -> str:
    files: set[Path] = set()
    for cited in CITED.findall(body):
        path = REPO / (cited if cited.startswith(("docs/", "benchmarks/")) else f"docs/{cited}")
        path = Path(str(path).rstrip("./"))
        if path.is_file():
            files.add(path)
        elif path.is_dir():
            files.update(p for p in path.rglob("*") if p.is_file() and p.suffix in REPORT_SUFFIXES)
    return "\n".join(p.read_text(errors="replace") for p in sorted(files))


def _holds(report: str, numbers: list[float], figure: str, percent: bool) -> bool:
    if not report:
        return False
    if re.search(rf"(?<![\d.]){re.escape(figure)}(?!\d)", report):
        return True
    digits = len(figure.split(".")[1]) if "." in figure else 0
    value = float(figure)
    if any(abs(round(x, digits) - value) < 1e-9 for x in numbers):
        return True
    return percent and any(abs(round(100 * x, digits) - value) < 1e-9 for x in numbers)


def _unsourced() -> dict[tuple[str, str], list[str]]:
    """(doc, figure) -> the headings of the sections where no cited report holds it."""
    found: dict[tuple[str, str], list[str]] = {}
    for doc in DOCS:
        for heading, body in _sections((REPO / doc).read_text()):
            report = _report_text(body)
            numbers = [float(n) for n in NUMBER.findall(report)]
            fenced = False
            for line in body.splitlines():
                fenced ^= line.startswith("```")
                if fenced or line.startswith("```"):
                    continue  # commands, not figures
                figures = [(m.group(1), bool(m.group(2))) for m in FIGURE.finditer(line)]
                figures += [(m.group(1), False) for m in WHOLE_WITH_UNIT.finditer(line)]
                for figure, percent in figures:
                    if not _holds(report, numbers, figure, percent):
                        found.setdefault((doc, figure), []).append(heading)
    return found


@pytest.fixture(scope="module")
def unsourced():
    return _unsourced()


def test_every_figure_has_a_source(unsourced):
    missing = {key: headings for key, headings in unsourced.items() if key not in NOT_FROM_A_REPORT}
    assert not missing, (
        "figures no report cited in their section holds; cite the report there, or say what the figure is in "
        f"NOT_FROM_A_REPORT: {missing}"
    )


def test_every_listed_figure_is_still_in_its_doc(unsourced):
    stale = sorted(key for key in NOT_FROM_A_REPORT if key not in unsourced)
    assert not stale, f"listed, but now sourced or gone from the doc: remove them from NOT_FROM_A_REPORT: {stale}"
