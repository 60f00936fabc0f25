"""3D volume loading: NIfTI, DICOM series folders and ``.npy``/``.npz`` -> :class:`Volume` (HU, RAS affine).

Conventions (as nibabel): ``Volume.array`` is indexed (i, j, k) and ``Volume.affine`` maps voxel
indices to RAS+ world millimetres (x increases towards the patient's Right, y Anterior,
z Superior). DICOM's LPS patient coordinates are converted to RAS on load.

* NIfTI (``.nii``, ``.nii.gz``): nibabel, data scaled by ``scl_slope``/``scl_inter``, the image's best
  affine (sform, else qform). A trailing length-1 4th axis is dropped; real 4D data is an error.
* DICOM series folder, or an enhanced (multi-frame) DICOM file (or a folder holding only that
  file): :func:`medvl.imaging.dicom.read_dicom_volume` (one series, one orientation, evenly spaced
  slices sorted along the normal; the modality LUT gives HU for CT; the array is (column, row,
  slice) so that i runs along the DICOM row direction).
* Release conventions (:func:`load_volume` keywords, set by benchmark tasks through a record's
  ``meta["volume_load"]``): ``intensity="unit"`` marks values already scaled to 0..1 (M3D-Data), so
  the volume processor maps them without an HU window; ``rescale=(slope, intercept)`` turns stored
  values into HU and ``spacing=(si, sj, sk)`` replaces the voxel size of the file's affine (CT-RATE's
  metadata CSV, as CT-CLIP's loader applies it).
* ``.npy``: a 3D array in HU stored already oriented as (D, H, W) = ``"SPL"`` (medvl's processed
  layout, also MedM-VL's CT-RATE arrays), 1 mm voxels. A leading channel axis of length 1
  (``(1, D, H, W)``, M3D-Data's layout) is dropped. ``.npz``: the array under ``volume``,
  ``image``, ``array``, ``data`` or ``arr_0``, optionally ``affine`` (4x4, voxel -> RAS) or
  ``spacing`` (3 values, mm, for the SPL layout).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvl.errors import MedVLDataError
from medvl.imaging.dicom import is_dicom_file, read_dicom_volume
from medvl.models.volume_processing_medvl import axcodes_affine

logger = logging.getLogger(__name__)

NPZ_ARRAY_KEYS = ("volume", "image", "array", "data", "arr_0")


@dataclass
class Volume:
    """A 3D image in HU (or scanner units for MR) with its geometry.

    Args:
        array: float32 values indexed (i, j, k).
        affine: 4x4 voxel -> RAS world (mm).
        source: the file or folder it came from (used in error messages).
        intensity: what the values are: ``"hu"`` (HU, or scanner units for MR) or ``"unit"``
            (already scaled to 0..1 by the release's own preprocessing, e.g. M3D-Data); the volume
            processor reads it to pick its intensity mapping.
    """

    array: np.ndarray
    affine: np.ndarray
    source: str = ""
    intensity: str = "hu"

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along i, j, k: the lengths of the affine's columns."""
        si, sj, sk = (float(v) for v in np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0)))
        return si, sj, sk

    @property
    def shape(self) -> tuple[int, int, int]:
        """(i, j, k) sizes of the array (3D: :func:`load_volume` checks it)."""
        ni, nj, nk = (int(n) for n in self.array.shape)
        return ni, nj, nk


VOLUME_INTENSITIES = ("hu", "unit")


def load_volume(
    path: str | Path,
    record: str | int | None = None,
    *,
    intensity: str = "hu",
    rescale: tuple[float, float] | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> Volume:
    """Load a CT/MR volume.

    Args:
        path: ``.nii``/``.nii.gz`` file, DICOM series folder, ``.npy`` or ``.npz`` file.
        record: record id, used in error messages.
        intensity: ``"hu"`` or ``"unit"`` (values already in 0..1, checked); see :class:`Volume`.
        rescale: (slope, intercept) applied to the stored values (``slope * v + intercept``), for
            releases that keep the scanner's raw values and put the rescale in a side file (CT-RATE).
        spacing: voxel size (mm) along the array axes (i, j, k), replacing the lengths of the
            affine's columns (directions are kept), for releases whose headers lack it (CT-RATE).

    Returns:
        :class:`Volume` with float32 values and a voxel -> RAS affine.

    Raises:
        MedVLDataError: missing or unreadable input, NaN/inf voxels, not 3D, or an inconsistent DICOM
            series (mixed series, mixed orientations, uneven spacing, duplicate slices); the message
            names the record and file.
    """
    if intensity not in VOLUME_INTENSITIES:
        raise ValueError(f"unknown volume intensity {intensity!r}; valid: {', '.join(VOLUME_INTENSITIES)}")
    path = Path(path)
    if not path.exists():
        raise MedVLDataError("volume file or folder not found", record=record, path=str(path))
    name = path.name.lower()
    if path.is_dir():
        volume = _load_dicom(path, record)
    elif name.endswith(".nii") or name.endswith(".nii.gz"):
        volume = _load_nifti(path, record)
    elif name.endswith(".npy"):
        volume = _load_npy(path, record)
    elif name.endswith(".npz"):
        volume = _load_npz(path, record)
    elif is_dicom_file(path):
        volume = _load_dicom(path, record)
    else:
        raise MedVLDataError(
            "unsupported volume format; expected .nii, .nii.gz, .npy, .npz, a DICOM series folder or a "
            "multi-frame DICOM file",
            record=record,
            path=str(path),
        )
    if rescale is not None:
        slope, intercept = (float(v) for v in rescale)
        if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
            raise MedVLDataError(f"invalid rescale slope/intercept {rescale!r}", record=record, path=str(path))
        volume.array = (volume.array.astype(np.float64) * slope + intercept).astype(np.float32)
    if spacing is not None:
        steps = np.asarray([float(v) for v in spacing], dtype=np.float64)
        if steps.shape != (3,) or not (steps > 0).all() or not np.isfinite(steps).all():
            raise MedVLDataError(
                f"spacing must be 3 positive numbers (mm), got {spacing!r}", record=record, path=str(path)
            )
        affine = np.asarray(volume.affine, dtype=np.float64).copy()
        norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        affine[:3, :3] = affine[:3, :3] / np.where(norms > 0, norms, 1.0) * steps
        volume.affine = affine
    volume.intensity = intensity
    _validate(volume, record)
    if intensity == "unit":
        low, high = float(volume.array.min()), float(volume.array.max())
        # M3D's preprocessing min-max scales each volume; a small tolerance absorbs interpolation overshoot.
        if low < -1e-3 or high > 1 + 1e-3:
            raise MedVLDataError(
                f"volume declared as 0..1 (intensity 'unit') has values in [{low:g}, {high:g}]",
                record=record,
                path=str(path),
            )
    return volume


# fewest voxels along any axis of a volume (fewer: a slice or a line, not a volume)
MIN_VOLUME_EXTENT = 2


def _validate(volume: Volume, record: str | int | None) -> None:
    array = volume.array
    if array.ndim != 3:
        raise MedVLDataError(f"volume must be 3D, got shape {tuple(array.shape)}", record=record, path=volume.source)
    if min(array.shape) == 0:
        raise MedVLDataError(f"volume is empty, shape {tuple(array.shape)}", record=record, path=volume.source)
    if min(array.shape) < MIN_VOLUME_EXTENT:
        # resampled to the model's shape it would be a constant (or one slice repeated): nothing 3D to see
        raise MedVLDataError(
            f"degenerate volume of shape {tuple(array.shape)} (a single voxel, line or slice): a volume needs at least "
            f"{MIN_VOLUME_EXTENT} voxels along every axis; give a single slice as an image (<image>) instead",
            record=record,
            path=volume.source,
        )
    finite = np.isfinite(array)
    if not finite.all():
        raise MedVLDataError(
            f"volume has {int((~finite).sum())} NaN or infinite voxel(s)", record=record, path=volume.source
        )
    affine = np.asarray(volume.affine)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise MedVLDataError(f"invalid affine {affine.tolist()}", record=record, path=volume.source)


# ---------------------------------------------------------------- NIfTI and numpy


def _load_nifti(path: Path, record: str | int | None) -> Volume:
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    try:
        img = nib.load(str(path))
        if not isinstance(img, SpatialImage):  # a .nii name on another nibabel format (no affine)
            raise TypeError(f"{type(img).__name__} is not a spatial image")
        array = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors, ...
        raise MedVLDataError(
            f"unreadable NIfTI file: {type(exc).__name__}: {exc}", record=record, path=str(path)
        ) from exc
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise MedVLDataError(f"NIfTI must hold one 3D volume, got shape {array.shape}", record=record, path=str(path))
    return Volume(array=array, affine=np.asarray(img.affine, dtype=np.float64), source=str(path))


def _load_npy(path: Path, record: str | int | None) -> Volume:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise MedVLDataError(
            f"unreadable .npy file: {type(exc).__name__}: {exc}", record=record, path=str(path)
        ) from exc
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]  # (1, D, H, W): M3D-Data's channel-first layout
    return Volume(array=_float32(array, path, record), affine=axcodes_affine((1.0, 1.0, 1.0), "SPL"), source=str(path))


def _load_npz(path: Path, record: str | int | None) -> Volume:
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {k: data[k] for k in data.files}
    except Exception as exc:
        raise MedVLDataError(
            f"unreadable .npz file: {type(exc).__name__}: {exc}", record=record, path=str(path)
        ) from exc
    key = next((k for k in NPZ_ARRAY_KEYS if k in contents), None)
    if key is None:
        raise MedVLDataError(
            f".npz holds {sorted(contents)}; expected the volume under one of {list(NPZ_ARRAY_KEYS)}",
            record=record,
            path=str(path),
        )
    array = _float32(contents[key], path, record)
    if "affine" in contents:
        affine = np.asarray(contents["affine"], dtype=np.float64)
    elif "spacing" in contents:
        spacing = np.asarray(contents["spacing"], dtype=np.float64).ravel()
        if spacing.shape != (3,) or not (spacing > 0).all():
            raise MedVLDataError(
                f"'spacing' must be 3 positive numbers, got {spacing.tolist()}", record=record, path=str(path)
            )
        affine = axcodes_affine(tuple(spacing), "SPL")
    else:
        affine = axcodes_affine((1.0, 1.0, 1.0), "SPL")
    return Volume(array=array, affine=affine, source=str(path))


def _load_dicom(path: Path, record: str | int | None) -> Volume:
    array, affine = read_dicom_volume(path, record)
    return Volume(array=array, affine=affine, source=str(path))


def _float32(array: np.ndarray, path: Path, record: str | int | None) -> np.ndarray:
    if not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_
    ):
        raise MedVLDataError(f"volume has non-numeric dtype {array.dtype}", record=record, path=str(path))
    return array.astype(np.float32, copy=False)


__all__ = ["Volume", "load_volume"]
