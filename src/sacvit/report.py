"""Text outputs of every command: aligned tables, CSV and JSON files.

One writer for the result rows of ``sacvit eval``, ``bench``, ``demo`` and ``calibrate``: a row is
a ``dict``; a table is described by :class:`Column` s (header, key, format).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = ["Column", "format_table", "write_csv", "write_json"]


@dataclass(frozen=True)
class Column:
    """One table column: ``header``, the row ``key`` and a ``format``: a spec applied to the value
    (``"{:.2f}"``) or a function of the whole row."""

    header: str
    key: str
    format: str | Callable[[dict[str, Any]], str] = "{}"

    def cell(self, row: dict[str, Any]) -> str:
        v = row.get(self.key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return self.format(row) if callable(self.format) else self.format.format(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], left: int = 1,
                 drop_empty: bool = True) -> str:
    """The rows as an aligned text table; the first ``left`` columns are left-aligned.

    Columns without any value are left out when ``drop_empty``.
    """
    cols = [c for c in columns if not drop_empty or any(r.get(c.key) is not None for r in rows)]
    cells = [[c.header for c in cols]] + [[c.cell(r) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    fmt = lambda line: "  ".join(v.ljust(w) if i < left else v.rjust(w)  # noqa: E731
                                 for i, (v, w) in enumerate(zip(line, widths)))
    return "\n".join([fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(line) for line in cells[1:]])


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], fieldnames: Sequence[str]) -> Path:
    """Write ``rows`` (only ``fieldnames``, in order; ``None`` as empty) to a CSV file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in fieldnames})
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (unknown types as strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path
