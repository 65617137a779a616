"""The README renders: every table row has its header's cells.

A bad replace once garbled four places, and two rows of the configuration table had a
cell too few or too many; GitHub renders such rows silently wrong, so nothing else
would notice.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _tables(text: str) -> list[list[tuple[int, str]]]:
    """Runs of `|` lines outside fenced code, with their line numbers."""
    tables: list[list[tuple[int, str]]] = []
    run: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("|"):
            run.append((number, line))
            continue
        if run:
            tables.append(run)
            run = []
    return tables + ([run] if run else [])


def _cells(row: str) -> int:
    """Cells of a row; a `|` inside code spans or escaped does not split."""
    row = re.sub(r"`[^`]*`", "code", row.strip()).replace("\\|", "pipe")
    return len(row.strip("|").split("|"))


def test_the_readme_has_tables_and_every_row_has_its_headers_cells():
    tables = _tables(README.read_text())
    assert len(tables) >= 4
    wrong = [
        f"line {number}: {_cells(row)} cells, header has {_cells(table[0][1])}"
        for table in tables
        for number, row in table
        if _cells(row) != _cells(table[0][1])
    ]
    assert not wrong, wrong


def test_a_row_with_a_missing_cell_is_found():
    table = "| a | b |\n|---|---|\n| 1 |\n"
    ((_, header), _, (_, short)) = _tables(table)[0]
    assert _cells(short) != _cells(header)


def test_no_sentence_was_pasted_into_a_setting_name():
    """The garble: "`metrics. Existing AWS Lambda stream handlers run unchanged.listen`"."""
    assert not re.search(r"`[^`\n]*\. [A-Z][^`\n]*\.[a-z_]+`", README.read_text())
