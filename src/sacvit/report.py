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

from .engine.calibrate import Calibration, curve_rows

__all__ = ["Column", "CURVE_TABLE", "SWEEP_TABLE", "calibration_report", "format_table", "with_interval", "write_csv",
           "write_json"]


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


def with_interval(row: dict[str, Any]) -> str:
    """``"top1 [low, high]"`` of a row, for tables."""
    if row.get("top1_low") is None:
        return f"{row['top1']:.2f}"
    return f"{row['top1']:.2f} [{row['top1_low']:.1f}, {row['top1_high']:.1f}]"


#: The table ``sacvit eval`` (and the demo) print.
SWEEP_TABLE = (Column("", "label"), Column("η", "threshold", "{:g}"), Column("top-1 % [95% CI]", "top1", with_interval),
         Column("exit @ EE", "exit_share", "{:.1%}"), Column("top-1 exited", "top1_exited", "{:.2f}"),
         Column("top-1 SAC", "top1_sac", "{:.2f}"), Column("GMACs/img", "gmacs", "{:.4f}"),
         Column("img/s", "img_per_s", "{:.1f}"))


#: The curve table ``sacvit calibrate`` prints.
CURVE_TABLE = (Column("η", "threshold", "{:.4f}"), Column("exit @ EE", "exit_share", "{:.1%}"),
               Column("top-1 %", "top1", "{:.2f}"), Column("GMACs/img", "gmacs", "{:.4f}"), Column("", "chosen"))


def calibration_report(result: Calibration, checkpoint, out=None) -> str:
    """The text ``sacvit calibrate`` prints; with ``out``, also the whole curve as CSV and a plot."""
    from . import plots  # matplotlib only when a plot is asked for (start-up time)

    c, ch = result.curve, result.choice
    lines = [f"curve on {ch.images} held-out images ({len(c.threshold)} operating points; a sample):",
             format_table(curve_rows(c, chosen=ch.threshold), CURVE_TABLE, left=0)]
    top1 = "–" if ch.top1 is None else f"{ch.top1:.2f}%"
    if ch.threshold is None:
        lines.append(f"not certified ({ch.criterion}): {ch.statement}")
    else:
        lines.append(f"chosen: η = {ch.threshold:.6g} ({ch.criterion}): top-1 {top1}, {ch.gmacs:.4f} GMACs/image, "
                     f"{ch.exit_share:.1%} exit at EE")
        if ch.statement:
            lines.append(ch.statement)
    lines.append(f"stored in {checkpoint}" if result.written else "the checkpoint is unchanged")
    if out is not None:
        rows = [{"threshold": float(t), "exit_share": float(e), "top1": float(a), "gmacs": float(g)}
                for t, e, a, g in zip(c.threshold, c.exit_share, c.top1, c.gmacs)]
        csv = write_csv(f"{out}/calibration.csv", rows, ("threshold", "exit_share", "top1", "gmacs"))
        sweep = [result.records.row(r["threshold"]) for r in curve_rows(c, points=21, chosen=ch.threshold)]
        png = plots.accuracy_vs_gmacs(sweep, f"{out}/calibration.png", f"calibration on {ch.images} images",
                                      chosen=ch.threshold)
        lines.append(f"wrote {csv}  {png}")
    return "\n".join(lines)
