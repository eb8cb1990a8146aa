"""Figures quoted in prose, read from the results files: the README and the docs cite, they do not type numbers.

A figure in a Markdown file is written between two comments that say where it comes from::

    <!-- fig rate_fmnist | method=**rate_** | bytes -->3567 ± 111<!-- /fig -->
    <!-- fig full_lenet300_seeds | * | drop (pt) | mean_sd:.2f -->1.14 ± 0.37<!-- /fig -->

The fields: the results file (``bench/results/NAME.json``), the row (``*`` for every row, or ``column=prefix``: the
first row whose cell in ``column`` starts with ``prefix``; several joined by ``&``; a ``column!=prefix`` among them
selects every row that passes), the column,
and optionally a statistic over the selected rows (``mean``, ``mean_sd``, ``min``, ``max``, with a format spec).
Without a statistic the cell is quoted as the file has it.

``python -m bench.figures`` rewrites the figures of README.md and docs/ from the files; ``--check`` only says where
they differ (and exits 1). The mkdocs hook renders them when the site is built, and a test checks that the README
and the docs already say what the files say.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FIGURE = re.compile(r"<!-- fig ([^>]+?) -->(.*?)<!-- /fig -->", re.DOTALL)
_NUMBER = re.compile(r"[-+]?\d[\d,]*\.?\d*")


class FigureError(ValueError):
    """A figure names a file, row or column that the results do not have."""


@cache
def _table(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise FigureError(f"no results file {path.relative_to(ROOT)}")
    table = json.loads(path.read_text()).get("table")
    if not table:
        raise FigureError(f"{path.relative_to(ROOT)} has no table")
    return list(table)


def _rows(name: str, selector: str) -> list[dict[str, Any]]:
    rows = _table(name)
    if selector == "*":
        return rows
    conditions = []
    for condition in selector.split("&"):
        negated = "!=" in condition
        column, prefix = condition.split("!=" if negated else "=", 1)
        conditions.append((column.strip(), prefix.strip(), negated))
    found = [
        row
        for row in rows
        if all(str(row.get(column, "")).startswith(prefix) != negated for column, prefix, negated in conditions)
    ]
    if not found:
        raise FigureError(f"{name}: no row where {selector}")
    # an exclusion selects every row that passes; inclusions alone name one row, the first
    return found if any(negated for *_, negated in conditions) else found[:1]


def _number(cell: Any) -> float:
    match = _NUMBER.search(str(cell))
    if match is None:
        raise FigureError(f"no number in {cell!r}")
    return float(match.group().replace(",", ""))


def value(spec: str) -> str:
    """The text of one figure, from its spec ``NAME | ROW | COLUMN [| STAT:FORMAT]``.

    Examples:
        >>> value("rate_fmnist | method=**rate_** | bytes")
        '3567 ± 111'
    """
    fields = [f.strip() for f in spec.split("|")]
    if len(fields) not in (3, 4):
        raise FigureError(f"a figure is 'file | row | column [| statistic]', got {spec!r}")
    name, selector, column = fields[:3]
    rows = _rows(name, selector)
    if any(column not in row for row in rows):
        raise FigureError(f"{name}: no column {column!r} (columns: {list(rows[0])})")
    if len(fields) == 3:
        if len(rows) != 1:
            raise FigureError(f"{spec!r} selects {len(rows)} rows: give a statistic")
        return str(rows[0][column])
    stat, _, fmt = fields[3].partition(":")
    numbers = [_number(row[column]) for row in rows]
    fmt = fmt or ".2f"
    if stat == "mean":
        return format(statistics.fmean(numbers), fmt)
    if stat == "mean_sd":
        sd = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
        return f"{format(statistics.fmean(numbers), fmt)} ± {format(sd, fmt)}"
    if stat in ("min", "max"):
        return format(min(numbers) if stat == "min" else max(numbers), fmt)
    raise FigureError(f"unknown statistic {stat!r} (mean, mean_sd, min, max)")


def render(text: str) -> str:
    """``text`` with every figure replaced by what its results file says."""
    return FIGURE.sub(lambda m: f"<!-- fig {m.group(1)} -->{value(m.group(1))}<!-- /fig -->", text)


def documents() -> list[Path]:
    """The files whose figures are kept: the README and every docs page."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check``, compare) the figures of the README and the docs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report figures that differ; exit 1 if any")
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        text = path.read_text()
        fresh = render(text)
        if fresh != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(fresh)
    for path in stale:
        print(f"{'differs' if args.check else 'rewritten'}: {path}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
