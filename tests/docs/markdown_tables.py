"""Reading a doc's section and its table rows, for the tests that compare a doc's figures with their reports."""

from __future__ import annotations

from pathlib import Path


def section(path: Path, heading: str) -> str:
    """The text of PATH from the line starting with HEADING to the next heading of level 2."""
    text = path.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else None]


def table_rows(text: str, columns: int) -> list[list[str]]:
    """The cells of every table row in TEXT with COLUMNS cells (separator rows left out)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == columns and not set(cells[0]) <= set("-: "):
            rows.append(cells)
    return rows
