"""Exceptions raised by the data package."""

from __future__ import annotations


class DatasetNotFoundError(FileNotFoundError):
    """A dataset directory or file is missing.

    Subclasses :class:`FileNotFoundError` so generic handlers keep working; the
    message always names the missing path and says how to provide it.
    """
