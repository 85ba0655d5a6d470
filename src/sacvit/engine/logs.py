"""The run logs of training: ``metrics.jsonl`` (one line per epoch) and ``steps.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io.run_files import METRICS, STEPS

__all__ = ["append_json", "restore_logs"]


def append_json(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def restore_logs(out: Path, history: list[dict[str, Any]], step: int) -> None:
    """Make the logs end at the checkpoint being resumed.

    ``metrics.jsonl`` becomes the checkpoint's epoch records (a run can stop between saving a
    checkpoint and appending its line, or after logging epochs that a damaged checkpoint held);
    ``steps.jsonl`` loses the lines after ``step``.
    """
    (out / METRICS).write_text("".join(json.dumps(r) + "\n" for r in history))
    path = out / STEPS
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if _step(line) is not None and _step(line) <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _step(line: str) -> int | None:
    """The step of a ``steps.jsonl`` line; ``None`` for a line cut short by a kill."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
