"""What docs/results holds: the reports the docs cite, an index of the earlier ones, and no machine's folders."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
# A folder of the machine a report was made on: a temporary folder, a home or a work tree.
MACHINE_FOLDER = re.compile(r"(?<![\w<])(/tmp/|/root/|/home/|/work/)\S*")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _text_files():
    return [p for p in sorted(RESULTS.rglob("*")) if p.suffix in {".json", ".md", ".txt"}]


def test_no_committed_report_names_a_machine_folder():
    found = [f"{p.relative_to(ROOT)}:{n}: {m.group(0)}" for p in _text_files()
             for n, line in enumerate(p.read_text().splitlines(), 1) for m in [MACHINE_FOLDER.search(line)] if m]
    assert not found, "reports carry this machine's folders:\n" + "\n".join(found[:20])


def test_every_report_folder_is_cited_by_a_doc():
    """A report nobody cites is history: it belongs in git and docs/results/INDEX.md, not in the tree."""
    cited = " ".join(p.read_text() for p in DOCS)
    folders = sorted({p.parent for p in RESULTS.rglob("*") if p.is_file() and p.parent != RESULTS})

    def is_cited(folder: Path) -> bool:  # the folder or one above it, below docs/results
        return any(str(f.relative_to(ROOT / "docs")) in cited for f in [folder, *folder.parents] if RESULTS in f.parents)

    uncited = [str(f.relative_to(ROOT / "docs")) for f in folders if not is_cited(f)]
    loose = [p.name for p in RESULTS.iterdir() if p.is_file() and p.name != "INDEX.md" and p.name not in cited]
    assert not uncited and not loose, f"cited by no doc: {uncited + loose}"


def test_the_index_names_a_commit_that_holds_each_earlier_report():
    text = (RESULTS / "INDEX.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 20")]
    assert rows, "docs/results/INDEX.md lists no earlier report"
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.search(r"`docs/results/\S+`", cells[1]), row
        assert re.search(r"`python -m \S+", cells[2]), row
        assert re.search(r"`[0-9a-f]{7}`", cells[3]), row
