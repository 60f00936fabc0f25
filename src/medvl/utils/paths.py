"""Output-path safety and run fingerprints shared by the verbs that write files.

A verb must never overwrite what it reads (``medvl infer --data d.jsonl --out d.jsonl``), write
into a checkpoint it loads, or mix one model's outputs into another's resumable run. The helpers
here are the one place these rules live.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _real(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def refuse_output_over_inputs(
    out: str | Path,
    *,
    inputs: Sequence[str | Path | None] = (),
    folders: Sequence[str | Path | None] = (),
    flag: str = "--out",
) -> None:
    """Raise ``ValueError`` when an output path is one of the inputs or lies inside an input folder.

    Paths are compared after ``..`` and symlinks are resolved.

    Args:
        out: the output file or folder.
        inputs: files read by the command (the output may not be one of them).
        folders: folders read by the command, e.g. the model checkpoint (the output may not be
            inside one, nor be one).
        flag: the option that named ``out`` (for the message).
    """
    real_out = _real(out)
    for f in inputs:
        if f is not None and real_out == _real(f):
            raise ValueError(
                f"{flag} {out} is the input file {f}; writing there would replace it: choose another {flag}"
            )
    for d in folders:
        if d is None:
            continue
        real_d = _real(d)
        if real_out == real_d or real_out.is_relative_to(real_d):
            raise ValueError(
                f"{flag} {out} is inside the folder {d} that this command reads (a checkpoint or "
                f"input folder); choose a {flag} outside it"
            )
        if real_d.is_relative_to(real_out) and real_out.exists():
            raise ValueError(f"{flag} {out} contains the input folder {d}; choose another {flag}")


def model_fingerprint(model_dir: str | Path) -> str:
    """A short fingerprint of a checkpoint folder: its ``config.json`` and its weight files.

    Two folders with the same fingerprint hold the same configuration and the same weights (a
    SHA-256 of every weight file, whole: a LoRA merge may change only a few tensors in the middle
    of the file, so sampling parts would miss it; about 2 s per GB). Copying or moving a
    checkpoint keeps its fingerprint.

    Args:
        model_dir: the checkpoint folder (a file is fingerprinted the same way).
    """
    root = Path(model_dir)
    h = hashlib.sha256()
    files = (
        [root]
        if root.is_file()
        else sorted(
            p
            for p in root.iterdir()
            if p.name in ("config.json", "adapter_config.json") or p.suffix in _WEIGHT_SUFFIXES
        )
        if root.is_dir()
        else []
    )
    if not files:
        h.update(str(_real(root)).encode())  # not a folder we can read: fall back to the path
    for p in files:
        h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
        with p.open("rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def settings_fingerprint(**parts: Any) -> str:
    """A short fingerprint of JSON-able settings (generation options, model fingerprint, ...).

    Args:
        **parts: named settings; order does not matter.
    """
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@contextlib.contextmanager
def fresh_output_dir(
    out: str | Path,
    *,
    overwrite: bool = False,
    reads: Sequence[str | Path | None] = (),
    flag: str = "OUT",
) -> Iterator[Path]:
    """Write a checkpoint folder safely: yield a staging folder that becomes ``out`` only when complete.

    ``out`` must be new or empty, unless ``overwrite`` (then the old folder is replaced as a whole,
    atomically, once the new one is complete). It may never be, contain or lie inside a folder the
    command reads (exporting onto the source would destroy it). On an error nothing in ``out`` changes
    and the staging folder (a hidden sibling) is removed.

    Args:
        out: the final folder.
        overwrite: replace a non-empty ``out``.
        reads: folders the command reads (source checkpoint, parts).
        flag: the option or argument that named ``out`` (for the messages).
    """
    from medvl.train.checkpoint import atomic_dir

    out = Path(out)
    refuse_output_over_inputs(out, folders=[r for r in reads if r is not None], flag=flag)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{flag} {out} is a file, not a folder; choose a new folder")
    if out.is_dir() and not overwrite:
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise FileExistsError(
                f"{flag} {out} is not empty ({shown}); choose a new or empty folder, or pass --overwrite to replace it"
            )
    with atomic_dir(out) as staging:
        try:
            yield staging
        except Exception as err:
            # safetensors reports a full disk as "SafetensorError: ... No space left on device" and names
            # no file; say which folder could not be written (the staging folder is removed either way)
            if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err):
                raise OSError(errno.ENOSPC, f"No space left on device while writing {flag} {out}", str(out)) from err
            raise
