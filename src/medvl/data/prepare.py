"""``medvl data prepare``: a cache of preprocessed volumes, memory-mappable, bound to one processor config.

Reading and resampling a CT costs far more than a training step. ``prepare_volumes`` runs the model's
volume processor once per distinct volume and writes ``<cache>/<hash>.npy`` files plus
``manifest.json`` holding the processor configuration and its fingerprint. A dataset given the cache
loads ``volume_values`` from it (``np.load(mmap_mode="r")``) and refuses a cache built with another
processor configuration, so a changed window or target shape can never be trained on silently.

Storage dtypes:

* ``float16`` (default): the final tensor (C, D, H, W), half the size of float32; differs from
  direct processing by float16 rounding (relative 2^-11).
* ``float32``: the final tensor, bit-identical to direct processing.
* ``int16``: HU after the spatial steps (orientation, spacing, crop, resize), rounded to integers;
  the intensity mapping runs at load time. Smallest for multi-window (3-channel) processors.
  Standard mode only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np
import torch

from medvl.data.records import Record
from medvl.errors import MedVLDataError

if TYPE_CHECKING:
    from medvl.imaging import Volume
    from medvl.models.volume_processing_medvl import MedVLVolumeProcessor

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CacheDtype = Literal["float16", "float32", "int16"]
DTYPES = ("float16", "float32", "int16")


class PrepareSummary(TypedDict):
    """What :func:`prepare_volumes` did (printed by ``medvl data prepare``)."""

    cached: int  # volumes in the cache now
    written: int  # preprocessed by this call
    kept: int  # already cached, unchanged
    failed: int  # skipped (on_error="skip")
    bytes: int  # size of the cache files
    fingerprint: str  # of the volume processor configuration
    dtype: str


def processor_fingerprint(volume_processor: MedVLVolumeProcessor) -> str:
    """SHA-256 of a volume processor's settings (``to_dict()``, keys sorted).

    Args:
        volume_processor: a ``MedVLVolumeProcessor``.
    """
    text = json.dumps(volume_processor.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _source_stamp(path: str) -> dict[str, int | float]:
    p = Path(path)
    if p.is_dir():  # DICOM series: the newest file and the count stand for the folder
        files = [f for f in p.iterdir() if f.is_file()]
        return {
            "size": sum(f.stat().st_size for f in files),
            "n_files": len(files),
            "mtime": max((f.stat().st_mtime for f in files), default=0.0),
        }
    st = p.stat()
    return {"size": st.st_size, "mtime": st.st_mtime}


class VolumeCache:
    """A folder written by :func:`prepare_volumes`.

    Args:
        folder: the cache folder (holds ``manifest.json``).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise ValueError(
                f"{self.folder} is not a volume cache (no {MANIFEST}); create it with `medvl data prepare`"
            )
        self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
        self.dtype: str = self.manifest["dtype"]
        self.entries: dict[str, dict[str, Any]] = self.manifest["entries"]
        self._processor: MedVLVolumeProcessor | None = None

    def check_processor(self, volume_processor: MedVLVolumeProcessor | None) -> None:
        """Refuse the cache unless it was built with exactly this processor configuration.

        Args:
            volume_processor: the model's ``MedVLVolumeProcessor``.
        """
        if volume_processor is None:
            raise ValueError(f"a volume cache ({self.folder}) was given but the model has no volume processor")
        if processor_fingerprint(volume_processor) != self.manifest["fingerprint"]:
            cached, current = self.manifest["volume_processor"], volume_processor.to_dict()
            diff = [
                f"{k}: cache {cached.get(k)!r} vs model {current.get(k)!r}"
                for k in sorted(set(cached) | set(current))
                if cached.get(k) != current.get(k)
            ]
            raise ValueError(
                f"the volume cache {self.folder} was built with another volume processor configuration "
                f"({'; '.join(diff) or 'fingerprint differs'}); rebuild it with `medvl data prepare` for this model"
            )
        self._processor = volume_processor

    def get(self, path: str, record: str | None = None) -> torch.Tensor | None:
        """The cached ``(C, D, H, W)`` float32 tensor of a volume, or None if it is not cached.

        Args:
            path: the volume's absolute path (as in ``Record.volumes``).
            record: record id for error messages.
        """
        entry = self.entries.get(str(path))
        if entry is None:
            return None
        if Path(path).exists() and _source_stamp(path) != entry["source"]:
            raise MedVLDataError(
                f"the volume changed after the cache {self.folder} was built; run `medvl data prepare` again",
                record=record,
                path=str(path),
            )
        cached = self.folder / entry["file"]
        try:
            array = np.load(cached, mmap_mode="r")
        except (OSError, ValueError, EOFError) as err:  # numpy says "EOF: reading array header" and no file
            raise MedVLDataError(
                f"the volume cache file {cached} is damaged ({type(err).__name__}: {err}); run "
                "`medvl data prepare` again, or drop data.volume_cache",
                record=record,
                path=str(path),
            ) from None
        if self.dtype == "int16":
            if self._processor is None:
                raise ValueError("call check_processor(volume_processor) before reading an int16 (HU) cache")
            return torch.from_numpy(
                np.ascontiguousarray(self._processor.intensity_map(np.asarray(array, np.float32)), np.float32)
            )
        return torch.from_numpy(np.array(array, dtype=np.float32))  # a private copy of the mapped file

    def __contains__(self, path: str) -> bool:
        return str(path) in self.entries


def prepare_volumes(
    records: Iterable[Record],
    volume_processor: MedVLVolumeProcessor,
    out_dir: str | Path,
    *,
    dtype: CacheDtype = "float16",
    volume_loader: Callable[[str], Volume] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    progress: bool = True,
) -> PrepareSummary:
    """Preprocess every distinct volume of the records into a cache folder (incremental).

    Volumes already cached with the same processor fingerprint and unchanged source files are kept.

    Args:
        records: records whose ``volumes`` are cached.
        volume_processor: the model's ``MedVLVolumeProcessor``.
        out_dir: cache folder (created; an existing cache of another configuration is refused).
        dtype: ``float16``, ``float32`` or ``int16`` (see the module docstring).
        volume_loader: path -> volume (default :func:`medvl.imaging.load_volume`).
        on_error: ``raise`` on a bad volume, or ``skip`` it (it is then processed on the fly).
        progress: show a progress bar.

    Returns:
        Summary: ``{"cached", "written", "kept", "failed", "bytes", "fingerprint", "dtype"}``.
    """
    _check_prepare_settings(volume_processor, dtype, on_error)
    from medvl.imaging import load_volume

    loader = volume_loader or load_volume
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = processor_fingerprint(volume_processor)
    entries = _reusable_entries(out, fingerprint, dtype)
    paths: dict[str, str] = {}  # each distinct volume once, with the first record naming it (for messages)
    for rec in records:
        for path in rec.media_paths("volume"):
            paths.setdefault(path, rec.id)
    iterator: Iterable[tuple[str, str]] = paths.items()
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(paths.items(), desc="prepare volumes", unit="vol")
    written = kept = failed = 0
    for path, rid in iterator:
        if path in entries and Path(path).exists() and entries[path]["source"] == _source_stamp(path):
            kept += 1
            continue
        try:
            array = _preprocess(path, rid, volume_processor, loader, dtype)
        except MedVLDataError as err:
            if on_error == "raise":
                raise
            logger.warning("volume skipped (%s): %s", path, err)
            failed += 1
            continue
        entries[path] = _write_array(out, path, array)
        written += 1
    _write_manifest(out, fingerprint, volume_processor, dtype, entries)
    size = sum((out / e["file"]).stat().st_size for e in entries.values() if (out / e["file"]).exists())
    summary = PrepareSummary(
        cached=len(entries), written=written, kept=kept, failed=failed, bytes=size, fingerprint=fingerprint, dtype=dtype
    )
    logger.info("volume cache %s: %s", out, summary)
    return summary


def _check_prepare_settings(volume_processor: MedVLVolumeProcessor, dtype: str, on_error: str) -> None:
    """Refuse an unknown dtype or error policy, and an HU cache of a processor that cannot split its steps."""
    if dtype not in DTYPES:
        raise ValueError(f"invalid cache dtype {dtype!r}; valid choices: {', '.join(DTYPES)}")
    if dtype == "int16" and getattr(volume_processor, "mode", "standard") != "standard":
        raise ValueError("dtype int16 (HU cache) needs a volume processor in mode 'standard'; use float16 or float32")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"invalid on_error {on_error!r}; valid choices: raise, skip")


def _reusable_entries(out: Path, fingerprint: str, dtype: str) -> dict[str, dict[str, Any]]:
    """The entries of a cache already in ``out`` (empty without one); a cache of another configuration is refused."""
    if not (out / MANIFEST).is_file():
        return {}
    old = VolumeCache(out)
    if old.manifest["fingerprint"] != fingerprint or old.dtype != dtype:
        raise ValueError(
            f"{out} holds a cache of another volume processor configuration or dtype ({old.dtype}); "
            "choose another folder or delete it"
        )
    return dict(old.entries)


def _preprocess(
    path: str, rid: str, volume_processor: MedVLVolumeProcessor, volume_loader: Callable[[str], Volume], dtype: str
) -> np.ndarray:
    """One volume as the cache stores it: HU after the spatial steps (int16) or the final tensor.

    Raises:
        MedVLDataError: a missing or unreadable volume, or a processing failure (names record and file).
    """
    if not Path(path).exists():
        raise MedVLDataError("volume file or folder not found", record=rid, path=path)
    try:
        volume = volume_loader(path)
        if dtype == "int16":
            hu, _ = volume_processor.spatial(volume)
            return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
        return volume_processor([volume])["volume_values"][0].numpy().astype(dtype)
    except MedVLDataError:
        raise
    except Exception as err:
        raise MedVLDataError(f"cannot preprocess volume: {type(err).__name__}: {err}", record=rid, path=path) from err


def _write_array(out: Path, path: str, array: np.ndarray) -> dict[str, Any]:
    """Write one cache file atomically; returns its manifest entry."""
    name = hashlib.sha1(path.encode()).hexdigest()[:20] + ".npy"
    tmp = out / (name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, out / name)
    return {"file": name, "shape": list(array.shape), "source": _source_stamp(path)}


def _write_manifest(
    out: Path, fingerprint: str, volume_processor: MedVLVolumeProcessor, dtype: str, entries: dict[str, dict[str, Any]]
) -> None:
    """Write ``manifest.json`` atomically: the processor configuration, its fingerprint, the dtype and the entries."""
    manifest = {
        "format": "medvl-volume-cache/1",
        "fingerprint": fingerprint,
        "volume_processor": volume_processor.to_dict(),
        "dtype": dtype,
        "entries": entries,
    }
    tmp = out / (MANIFEST + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
