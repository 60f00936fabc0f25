"""The ``volume`` suite: a synthetic HU chest CT through medvl's volume reading and preprocessing.

NIfTI (256x256x128 by default) -> :func:`medvl.imaging.load_volume` ->
:class:`~medvl.models.volume_processing_medvl.MedVLVolumeProcessor`: volumes/s and input-voxel GB/s as
a fraction of the memory bandwidth; and the ``medvl data prepare`` cache (:mod:`medvl.data.prepare`,
memory-mapped ``.npy``) vs raw loading.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvl.tools.bench.sizes import BenchSizes
from medvl.tools.bench.timing import best_time, safe_ratio

if TYPE_CHECKING:
    from medvl.models.volume_processing_medvl import MedVLVolumeProcessor

logger = logging.getLogger(__name__)


def synthetic_ct(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A chest-like HU phantom (int16): air, an elliptic body, two lungs, a spine, scanner noise.

    Args:
        shape: (X, Y, Z) voxels.
        seed: noise seed.
    """
    x, y, z = shape
    gx, gy = np.meshgrid(np.linspace(-1, 1, x), np.linspace(-1, 1, y), indexing="ij")
    slab = np.full((x, y), -1000.0, dtype=np.float32)
    slab[(gx / 0.9) ** 2 + (gy / 0.65) ** 2 < 1] = 40.0  # soft tissue
    for cx in (-0.4, 0.4):
        slab[((gx - cx) / 0.3) ** 2 + (gy / 0.45) ** 2 < 1] = -850.0  # lungs
    slab[(gx / 0.08) ** 2 + ((gy - 0.45) / 0.08) ** 2 < 1] = 700.0  # vertebra
    rng = np.random.default_rng(seed)
    volume = np.repeat(slab[:, :, None], z, axis=2) + rng.normal(0, 20, (x, y, z)).astype(np.float32)
    return np.clip(np.rint(volume), -1024, 3071).astype(np.int16)


def write_nifti(array: np.ndarray, spacing: Sequence[float], path: Path) -> Path:
    """Save an HU array as NIfTI (RAS affine with ``spacing``), int16 like scanners' exports.

    Args:
        array: (X, Y, Z) HU values.
        spacing: voxel size (mm) along X, Y, Z.
        path: the ``.nii`` / ``.nii.gz`` file to write.
    """
    import nibabel as nib

    affine = np.diag([*map(float, spacing), 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def bench_volume(sizes: BenchSizes, bandwidth_gbs: float | None, workdir: str | Path | None = None) -> dict[str, Any]:
    """Volume preprocessing throughput: NIfTI -> ``volume_values``, raw vs the prepared cache.

    Args:
        sizes: problem sizes (CT shape and spacing, processor target shape).
        bandwidth_gbs: measured memory bandwidth for the fraction (None: skipped).
        workdir: folder for the synthetic files (default: a temporary folder, removed afterwards).
    """
    from medvl.models.volume_processing_medvl import MedVLVolumeProcessor

    processor = MedVLVolumeProcessor(target_shape=sizes.volume_target, window="lung")
    with contextlib.ExitStack() as stack:
        folder = (
            Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medvl-bench-")))
        )
        folder.mkdir(parents=True, exist_ok=True)
        array = synthetic_ct(sizes.volume_shape)
        files = {
            suffix: write_nifti(array, sizes.volume_spacing, folder / f"ct{suffix}") for suffix in (".nii.gz", ".nii")
        }
        out: dict[str, Any] = {
            "volume_shape": list(sizes.volume_shape),
            "voxel_spacing_mm": list(sizes.volume_spacing),
            "target_shape": list(sizes.volume_target),
            "input_voxels": int(array.size),
        }
        for suffix, path in files.items():
            key = "nii_gz" if suffix.endswith(".gz") else "nii"
            out[key] = _time_raw_volume(processor, path, int(array.size), sizes.repeats, bandwidth_gbs)
        out["cache"] = _time_volume_cache(processor, files[".nii.gz"], sizes, folder / "cache", out["nii_gz"])
    logger.info("volume: %.2f volumes/s raw (.nii.gz)", out["nii_gz"]["volumes_per_s"])
    return out


def _time_raw_volume(
    processor: MedVLVolumeProcessor, path: Path, voxels: int, repeats: int, bandwidth_gbs: float | None
) -> dict[str, Any]:
    """Loading, processing and both together of one file, with the voxel throughput."""
    from medvl.imaging import load_volume

    voxel_bytes = voxels * 4  # the float32 HU array every step reads
    t_load = best_time(lambda: load_volume(path), repeats)
    volume = load_volume(path)
    t_proc = best_time(lambda: processor([volume]), repeats)
    t_total = best_time(lambda: processor([load_volume(path)]), repeats)
    gbs = voxel_bytes / t_total / 1e9
    return {
        "load_seconds": t_load,
        "process_seconds": t_proc,
        "total_seconds": t_total,
        "volumes_per_s": 1.0 / t_total,
        "voxel_gbs": gbs,
        "fraction_of_memory_bandwidth": safe_ratio(gbs, bandwidth_gbs),
    }


def _time_volume_cache(
    processor: MedVLVolumeProcessor, path: Path, sizes: BenchSizes, cache_dir: Path, raw: dict[str, Any]
) -> dict[str, Any]:
    """``medvl data prepare``'s cache (float16 and int16) of the file: preparing, then reading it back."""
    from medvl.data.prepare import VolumeCache, prepare_volumes
    from medvl.data.records import Record

    record = Record("bench-ct", [{"role": "user", "content": "<volume>"}], volumes=[str(path)])
    out: dict[str, Any] = {"available": True, "reference": "nii_gz"}
    for dtype in ("float16", "int16"):
        folder = cache_dir / dtype
        start = time.perf_counter()
        summary = prepare_volumes([record], processor, folder, dtype=dtype, progress=False)
        t_prepare = time.perf_counter() - start
        cache = VolumeCache(folder)
        cache.check_processor(processor)
        t_get = best_time(functools.partial(cache.get, str(path)), sizes.repeats)
        out[dtype] = {
            "prepare_seconds": t_prepare,
            "cache_bytes": summary["bytes"],
            "load_seconds": t_get,
            "volumes_per_s": 1.0 / t_get,
            "cached_over_raw": safe_ratio(raw["total_seconds"], t_get),
        }
    return out
