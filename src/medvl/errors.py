"""Exceptions shared across medvl."""

from __future__ import annotations


class MedVLDataError(ValueError):
    """A data problem (bad record, unreadable file, marker mismatch, ...).

    The message always names the record, the file and what is wrong, so that a user can fix the
    input without reading medvl's code.

    Args:
        message: what is wrong.
        record: the record id (or line number) the problem belongs to, if known.
        path: the file involved, if any.
    """

    def __init__(self, message: str, *, record: str | int | None = None, path: str | None = None):
        self.record = record
        self.path = path
        where = []
        if record is not None:
            where.append(f"record {record!r}")
        if path is not None:
            where.append(f"file {str(path)!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)


class MediaOutsideRootError(MedVLDataError):
    """A record's media path leaves its data root (after ``..`` and symlinks are resolved)."""
