"""Atomic directory writes: a folder appears under its final name only once it is complete.

A checkpoint is written into a hidden staging folder, every file and folder is fsync'ed, then the
staging folder is renamed to its final name (``rename`` is atomic on POSIX file systems). A crash
at any point leaves either the previous state or the complete new folder, plus maybe a hidden
staging folder that :func:`clean_staging` removes. Trainer's ``get_last_checkpoint`` only matches
``checkpoint-<step>``, so staging folders are never mistaken for checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"


def fsync_tree(path: str | Path) -> None:
    """Flush every file and directory under ``path`` (and ``path`` itself) to disk.

    Args:
        path: a file or directory.
    """
    path = Path(path)
    if path.is_file():
        _fsync(path, os.O_RDONLY)
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            _fsync(Path(root) / name, os.O_RDONLY)
        _fsync_dir(Path(root))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes the rename / new entries durable; some file systems refuse it.
    try:
        _fsync(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        pass


def staging_path(final: str | Path) -> Path:
    """The hidden staging folder used while ``final`` is being written (same parent directory).

    Args:
        final: the folder's final path.
    """
    final = Path(final)
    return final.parent / f"{STAGING_PREFIX}{final.name}"


def commit_dir(staging: str | Path, final: str | Path) -> Path:
    """Make ``staging`` durable and move it to ``final`` atomically (replacing an older ``final``).

    Args:
        staging: the completely written folder.
        final: where it must appear.
    Returns:
        ``final`` as a Path.
    """
    staging, final = Path(staging), Path(final)
    fsync_tree(staging)
    old = None
    if final.exists():
        # rename() cannot replace a non-empty folder: move the old one aside first (also atomic).
        old = final.parent / f"{STAGING_PREFIX}old-{final.name}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Context manager: write into the yielded staging folder; on success it becomes ``final``.

    On an exception the staging folder is removed and ``final`` is left as it was.

    Args:
        final: the folder's final path.
    """
    final = Path(final)
    staging = staging_path(final)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_dir(staging, final)


def clean_staging(folder: str | Path) -> list[Path]:
    """Remove staging folders left in ``folder`` by a crash while saving.

    Args:
        folder: a run's output folder.
    Returns:
        the removed paths.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for child in folder.iterdir():
            if child.name.startswith(STAGING_PREFIX) and child.is_dir():
                logger.warning("removing %s, an incomplete save left by an interrupted run", child)
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed
