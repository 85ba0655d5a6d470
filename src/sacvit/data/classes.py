"""Class names, compared by name wherever a checkpoint meets labelled data.

A checkpoint stores the class names its head was trained on (index = class id); a dataset has
``classes`` (an image folder: its sorted sub-folder names). Comparing only their number lets a
renamed or reordered class folder shift every label by one place — a 100% model then scores 0%
without a word. :func:`check_class_names` compares the names, in order, and says in one line
what differs.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_class_names", "count_images", "describe_data", "IGNORE_HINT"]

#: What the commands that have the escape hatch add to the message.
IGNORE_HINT = "--ignore-class-names, or check_names=False in Python, matches classes by index instead"

_SHOWN = 4  # names listed per difference before "… and N more"


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f" … and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def count_images(n: int, noun: str = "image") -> str:
    """``10 000 images`` (groups of three digits, as the README writes counts; ``noun`` e.g.
    ``"training image"``)."""
    return f"{n:,}".replace(",", " ") + f" {noun}" + ("" if n == 1 else "s")


def describe_data(name: str, root=None, split: str | None = None) -> str:
    """A dataset as a message names it: ``--data imagefolder /data/pets (test split)``."""
    return f"--data {name}" + (f" {root}" if root is not None else "") + (f" ({split} split)" if split else "")


def check_class_names(checkpoint_names: Sequence[str], data_names: Sequence[str], where: str,
                      hint: str | None = None) -> None:
    """Raise unless ``data_names`` are ``checkpoint_names``, in the same order.

    Args:
        checkpoint_names: the class names a checkpoint records (index = the head's output).
        data_names: the dataset's ``classes`` (index = the label).
        where: what is compared, for the message, e.g. ``"runs/a/last.safetensors vs DIR/val"``.
        hint: appended to the message in parentheses (e.g. :data:`IGNORE_HINT`).

    Raises:
        ValueError: one line naming the difference: the names only one side has (one on each
            side: ``renamed``), or ``same names in a different order`` with the first positions
            that differ.
    """
    ckpt, data = [str(n) for n in checkpoint_names], [str(n) for n in data_names]
    if ckpt == data:
        return
    if sorted(ckpt) == sorted(data):
        moved = [(i, a, b) for i, (a, b) in enumerate(zip(ckpt, data)) if a != b]
        pairs = ", ".join(f"#{i} {a!r} vs {b!r}" for i, a, b in moved[:3])
        more = f" … ({len(moved)} positions differ)" if len(moved) > 3 else ""
        what = f"same names in a different order: checkpoint vs data {pairs}{more}"
    else:
        data_set, ckpt_set = set(data), set(ckpt)
        missing = [n for n in ckpt if n not in data_set]
        extra = [n for n in data if n not in ckpt_set]
        if len(missing) == 1 and len(extra) == 1:
            what = f"class {missing[0]!r} of the checkpoint is {extra[0]!r} in the data (renamed?)"
        else:
            parts = []
            if missing:
                parts.append(f"missing from the data: {_names(missing)}")
            if extra:
                parts.append(f"not in the checkpoint: {_names(extra)}")
            if not parts:  # the same names, repeated a different number of times
                parts.append(f"{len(ckpt)} names in the checkpoint, {len(data)} in the data")
            what = "; ".join(parts)
        if len(ckpt) != len(data):
            what += f" ({len(ckpt)} classes in the checkpoint, {len(data)} in the data)"
    raise ValueError(f"class names differ, {where}: {what}" + (f" ({hint})" if hint else ""))
