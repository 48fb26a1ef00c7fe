"""Tables in README.md and docs/ that say where their numbers come from are checked against that file.

A table is checked when the line before it (blank lines allowed) is a comment

    <!-- numbers: benchmarks/server.json columns: 4,5,6 -->

naming the JSON file(s) of the repository (comma-separated) and the 1-based columns whose numbers
they hold. Every number in
those cells must equal a numeric value of the file to the decimals shown (within half a unit of the
last digit shown), directly or
scaled by 1e-3 (ms -> s), 1e3 or 100 (a fraction shown as a percentage); `1,234` is 1234. A row
that disagrees fails with the file, the row and both values (the shown one and the nearest in the
source).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*numbers:\s*(.+?)\s+columns:\s*([\d,\s]+?)\s*-->")
NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")
SCALES = (1.0, 1e-3, 1e3, 100.0)


def numeric_leaves(data: object) -> Iterator[float]:
    if isinstance(data, dict):
        for value in data.values():
            yield from numeric_leaves(value)
    elif isinstance(data, list):
        for value in data:
            yield from numeric_leaves(value)
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        yield float(data)


def checked_tables(doc: Path) -> Iterator[tuple[list[Path], list[int], list[tuple[int, str]]]]:
    """(source files, columns, [(line number, row)]) for every marked table of `doc`."""
    lines = doc.read_text().splitlines()
    for i, line in enumerate(lines):
        match = MARKER.search(line)
        if not match:
            continue
        columns = [int(c) for c in match.group(2).replace(" ", "").split(",") if c]
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        rows = []
        while j < len(lines) and lines[j].lstrip().startswith("|"):
            rows.append((j + 1, lines[j]))
            j += 1
        sources = [ROOT / name.strip() for name in match.group(1).split(",") if name.strip()]
        yield sources, columns, rows[2:]  # after the header and its rule


def shown(token: str) -> tuple[float, int]:
    text = token.replace(",", "")
    return float(text), len(text.split(".")[1]) if "." in text else 0


def problems(doc: Path) -> list[str]:
    found = []
    for sources, columns, rows in checked_tables(doc):
        missing = [str(source.relative_to(ROOT)) for source in sources if not source.is_file()]
        if missing:
            found.append(f"{doc.name}: the table's source {missing} does not exist")
            continue
        values = [v for source in sources for v in numeric_leaves(json.loads(source.read_text()))]
        names = ", ".join(str(source.relative_to(ROOT)) for source in sources)
        for number, row in rows:
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            for column in columns:
                if column > len(cells):
                    found.append(f"{doc.name}:{number}: row has no column {column}: {row.strip()}")
                    continue
                for token in NUMBER.findall(cells[column - 1]):
                    value, decimals = shown(token)
                    candidates = [v * s for v in values for s in SCALES]
                    if any(abs(c - value) <= 0.5 * 10.0**-decimals * (1 + 1e-9) for c in candidates):
                        continue
                    nearest = min(candidates, key=lambda c: abs(c - value)) if candidates else float("nan")
                    found.append(f"{doc.name}:{number}: {token} in column {column} of row {row.strip()!r} is not in "
                                 f"{names} (nearest value there: {nearest:.6g})")
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_marked_tables_match_their_source(doc):
    assert not problems(doc), "\n".join(problems(doc))


def test_at_least_the_benchmark_tables_are_marked():
    tables = [(doc, sources, rows) for doc in DOCS for sources, _, rows in checked_tables(doc)]
    marked = {source.name for _, sources, _ in tables for source in sources}
    assert {"server.json", "server_load.json", "pusht_env.json", "cpu.json"} <= marked, marked
    assert all(rows for _, _, rows in tables), [(doc.name, sources) for doc, sources, rows in tables if not rows]


def test_a_wrong_number_is_reported_with_both_values(tmp_path, monkeypatch):
    source = tmp_path / "r.json"
    source.write_text(json.dumps({"a": {"p50_ms": 12.345, "ratio": 0.8195}}))
    doc = tmp_path / "d.md"
    doc.write_text(f"<!-- numbers: {source.name} columns: 2,3 -->\n| case | p50 | ratio |\n|---|---|---|\n"
                   "| x | 12.35 ms | 0.82x |\n| y | 12.3 ms | 0.91x |\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = problems(doc)
    assert len(found) == 1
    assert found[0] == ("d.md:5: 0.91 in column 3 of row '| y | 12.3 ms | 0.91x |' is not in r.json "
                        "(nearest value there: 0.8195)")
