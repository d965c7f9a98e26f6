"""The one table writer: Markdown (padded, numbers right-aligned) and CSV.

The evaluation's tables, the workflow's paper tables and the sweep's trials
table all go through `markdown` and `csv_text`, so they look alike and a change
of style is made once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any


def cell(value: Any, digits: int = 2) -> str:
    """A value as a table shows it: floats to `digits` places, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(
    header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Iterable[str] = ()
) -> str:
    """A Markdown table, columns padded to their widest cell; the columns named
    in `numeric` are right-aligned. Cells that are not strings go through `cell`."""
    right = set(numeric)
    lines = [[c if isinstance(c, str) else cell(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if name in right else c.ljust(w)
            for c, w, name in zip(cells, widths, header, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + (":" if name in right else "-")
        for w, name in zip(widths, header, strict=True)
    )
    return "\n".join([line(header), rule + "|", *map(line, lines)]) + "\n"


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The same table as CSV: None as an empty cell, floats as Python prints them
    unless the caller formatted them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])
    return buffer.getvalue()


__all__ = ["cell", "csv_text", "markdown"]
