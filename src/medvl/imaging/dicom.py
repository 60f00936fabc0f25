"""DICOM reading with pydicom: single files, series folders and enhanced multi-frame files.

The one DICOM module of medvl: the 2D loader (:mod:`medvl.imaging.image2d`) renders a file's first
frame as 8 bits with :func:`read_dicom_image`, the 3D loader (:mod:`medvl.imaging.volume3d`) stacks
the planes of a series folder or a multi-frame file into a volume with :func:`read_dicom_volume`, and
the server and the demo unpack an uploaded zipped series with :func:`unzip_dicom_series`.

Pixel values, in DICOM's order (PS3.4 N.2):

1. **Modality LUT** (PS3.3 C.11.1): Rescale Slope/Intercept or a Modality LUT Sequence, with pydicom's
   ``apply_modality_lut``; CT values become HU. Both loaders stop here for 3D and for an explicit
   window.
2. **VOI** (PS3.3 C.11.2; 2D only, when no window is asked for): the file's VOI LUT Sequence
   (pydicom's ``apply_voi``), else its first Window Center/Width with its VOI LUT Function (LINEAR,
   LINEAR_EXACT, SIGMOID: pydicom's ``apply_windowing``), mapped from the VOI's output range onto
   0..255. Without a VOI in the file, CT gets the ``"wide"`` HU window (-1000..1000) and other
   modalities (MR, US, ...: no absolute intensity scale) their own min..max. An explicit window (a
   preset of :mod:`medvl.models.windows`, ``(center, width)``, ``"minmax"``) replaces the file's VOI.
3. **Presentation**: MONOCHROME1 is inverted after the VOI so that dense tissue is bright. Colour
   data (RGB, YBR, palette) becomes 8-bit RGB.

Enhanced (multi-frame) CT/MR files keep each frame's rescale, window and geometry in the per-frame
or shared functional groups (PS3.3 C.7.6.16); pydicom's LUT functions read the top-level modules
only, so :func:`frame_view` lifts one frame's values to the top level and the same pydicom calls
serve classic and enhanced files (``FUNCTIONAL_GROUPS`` says which macro holds which attribute).

Geometry (3D): every plane (a file of a series, or a frame) carries ImagePositionPatient,
ImageOrientationPatient and PixelSpacing in DICOM's LPS patient coordinates. A series folder (not
recursive; DICOMDIR and obvious non-DICOM files such as ``.txt``/``.json`` are skipped) must hold
readable images of ONE SeriesInstanceUID with one orientation; planes are sorted along the slice
normal and must be evenly spaced (1% tolerance). The array is (column, row, slice), so that i runs
along the DICOM row direction, and the affine maps voxels to RAS millimetres (as nibabel's).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvl.errors import MedVLDataError
from medvl.models.windows import MINMAX, WindowSpec, apply_window_uint8, scale_to_uint8

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
# Files a series folder may hold beside its slices (notes, exports, archives), skipped unread.
NON_DICOM_SUFFIXES = {
    ".txt",
    ".json",
    ".md",
    ".csv",
    ".xml",
    ".png",
    ".jpg",
    ".jpeg",
    ".nii",
    ".gz",
    ".npy",
    ".npz",
    ".yaml",
    ".yml",
    ".zip",
    ".py",
}
# DICOM keyword -> the functional group macro that holds it in an enhanced file (PS3.3 C.7.6.16.2).
FUNCTIONAL_GROUPS: dict[str, str] = {
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
    "RescaleType": "PixelValueTransformationSequence",
    "WindowCenter": "FrameVOILUTSequence",
    "WindowWidth": "FrameVOILUTSequence",
    "VOILUTFunction": "FrameVOILUTSequence",
    "ImagePositionPatient": "PlanePositionSequence",
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "PixelSpacing": "PixelMeasuresSequence",
    "SliceThickness": "PixelMeasuresSequence",
}
# The attributes pydicom's modality LUT, VOI LUT and windowing functions read from a dataset.
LUT_KEYWORDS = (
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "ModalityLUTSequence",
    "RescaleSlope",
    "RescaleIntercept",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)
# Relative tolerance on slice gaps: scanners write positions with ~0.01 mm rounding.
SPACING_RTOL = 0.01
# The LPS -> RAS flip of DICOM patient coordinates.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ---------------------------------------------------------------- files and attributes


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom``/``.dic`` name or a file with the ``DICM`` magic at byte 128.

    Args:
        path: file to test (must exist to be sniffed).
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: Path, record: str | int | None, stop_before_pixels: bool = False) -> Dataset:
    """``pydicom.dcmread`` with medvl errors for unreadable files.

    Args:
        path: DICOM file.
        record: record id for error messages.
        stop_before_pixels: read the header only.

    Raises:
        MedVLDataError: not a DICOM file, or a corrupt one; the message names the record and file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise MedVLDataError(f"not a valid DICOM file: {exc}", record=record, path=str(path)) from exc
    except Exception as exc:  # pydicom raises many types (EOFError, OSError, struct.error, ...) on bad bytes
        raise MedVLDataError(f"corrupt DICOM file: {type(exc).__name__}: {exc}", record=record, path=str(path)) from exc


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames (1 when absent or empty).

    Args:
        ds: pydicom dataset.
    """
    return int(ds.get("NumberOfFrames", 1) or 1)


def header_pixel_count(path: Path) -> int | None:
    """Rows x Columns x frames from the header alone, no pixel data read; None for an unreadable file.

    The server checks an upload against its size limits with it before anything is decoded.

    Args:
        path: DICOM file.
    """
    try:
        ds = read_dicom(path, None, stop_before_pixels=True)
        return int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * number_of_frames(ds)
    except (MedVLDataError, TypeError, ValueError):  # unreadable: the loader reports it precisely
        return None


def dicom_pixel_array(ds: Dataset, path: Path, record: str | int | None, frame: int | None = None) -> np.ndarray:
    """Decoded stored pixel values of a DICOM dataset, with medvl errors.

    Args:
        ds: pydicom dataset.
        path: its file (for messages).
        record: record id for messages.
        frame: decode only this frame of a multi-frame file (None: all frames).

    Raises:
        MedVLDataError: no pixel data, or pixel data that cannot be decoded (a missing decoder plugin,
            truncated data, bad tags).
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise MedVLDataError("DICOM file has no pixel data", record=record, path=str(path))
    if frame is not None:
        ds.pixel_array_options(index=frame)  # decoding one frame of a long cine loop is much faster
    try:
        return ds.pixel_array
    except Exception as exc:  # missing decoder plugin, truncated pixel data, bad tags, ...
        uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax = uid.name if uid is not None else "?"
        raise MedVLDataError(
            f"cannot decode DICOM pixel data ({syntax}): {type(exc).__name__}: {exc}", record=record, path=str(path)
        ) from exc


def _present(value: Any) -> bool:  # a DICOM value: number, string, multi-value, sequence, ...
    """False for a missing or empty DICOM value (None, "", an empty sequence or multi-value)."""
    if value is None:
        return False
    return not (hasattr(value, "__len__") and len(value) == 0)


def frame_attribute(ds: Dataset, frame: int, keyword: str) -> Any:
    """An attribute of one frame: its per-frame functional group, else the shared one, else the top level.

    Enhanced (multi-frame) files keep rescale, window, position and spacing in functional groups
    (``FUNCTIONAL_GROUPS``); classic files keep them at the top level.

    Args:
        ds: pydicom dataset.
        frame: frame index (0 for a single-frame file).
        keyword: DICOM keyword, e.g. ``"RescaleSlope"``.

    Returns:
        The value, or None when absent (or empty) everywhere.
    """
    group = FUNCTIONAL_GROUPS.get(keyword)
    if group is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        items = [per_frame[frame]] if frame < len(per_frame) else []
        items += list(ds.get("SharedFunctionalGroupsSequence") or [])[:1]
        for item in items:
            macro = item.get(group)
            if macro and keyword in macro[0] and _present(macro[0][keyword].value):
                return macro[0][keyword].value
    value = ds.get(keyword)
    return value if _present(value) else None


def frame_view(ds: Dataset, frame: int = 0) -> Dataset:
    """One frame's Modality LUT and VOI LUT modules as a top-level dataset, for pydicom's LUT functions.

    pydicom's ``apply_modality_lut`` / ``apply_voi`` / ``apply_windowing`` read the top level only; an
    enhanced file keeps these values per frame in functional groups, so they are lifted here. A file
    that gives only one of Rescale Slope / Intercept gets the identity for the other (pydicom would
    skip the rescale, leaving e.g. CT values 1024 off).

    Args:
        ds: pydicom dataset.
        frame: frame index.
    """
    from pydicom.dataset import Dataset

    view = Dataset()
    for keyword in LUT_KEYWORDS:
        value = frame_attribute(ds, frame, keyword)
        if value is not None:
            setattr(view, keyword, value)
    if ("RescaleSlope" in view) != ("RescaleIntercept" in view):
        view.RescaleSlope = view.get("RescaleSlope", 1.0)
        view.RescaleIntercept = view.get("RescaleIntercept", 0.0)
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:  # the endianness of OW-encoded LUT data
        view.file_meta = file_meta
    return view


def modality_values(pixels: np.ndarray, ds: Dataset, frame: int = 0) -> np.ndarray:
    """Stored values of one frame -> modality values (HU for CT): pydicom's ``apply_modality_lut``.

    Args:
        pixels: the frame's stored values (rows, columns).
        ds: its dataset.
        frame: which frame's functional groups apply.

    Returns:
        The values after Rescale Slope/Intercept or the Modality LUT Sequence (unchanged without either).
    """
    from pydicom.pixels import apply_modality_lut

    return apply_modality_lut(pixels, frame_view(ds, frame))


# ---------------------------------------------------------------- 2D: one frame as an 8-bit image


def dicom_image_size(ds: Dataset, path: Path, record: str | int | None) -> tuple[int, int]:
    """(width, height) = (Columns, Rows) from the header, before any pixel data is decoded.

    Args:
        ds: pydicom dataset.
        path: its file (for messages).
        record: record id for messages.

    Raises:
        MedVLDataError: no Rows/Columns (a truncated header, or not an image).
    """
    if "Rows" not in ds or "Columns" not in ds:
        raise MedVLDataError(
            "DICOM header has no Rows/Columns (truncated, or not an image)", record=record, path=str(path)
        )
    return int(ds.Columns or 0), int(ds.Rows or 0)


def read_dicom_image(
    ds: Dataset, path: Path, window: WindowSpec | None = None, record: str | int | None = None
) -> np.ndarray:
    """The first frame of a DICOM dataset as 8 bits: modality LUT, VOI (or ``window``), presentation.

    Args:
        ds: pydicom dataset (read with pixel data).
        path: its file (for messages).
        window: None for the file's own VOI (see the module docstring), ``"minmax"``, or a window in
            modality units (HU for CT): preset name, ``"custom:C,W"``, (center, width).
        record: record id for messages.

    Returns:
        uint8 array (rows, columns) for greyscale data, (rows, columns, 3) RGB for colour data.

    Raises:
        MedVLDataError: no or undecodable pixel data.
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    frames = number_of_frames(ds)
    if frames > 1:
        logger.info("%s has %d frames; using the first", path, frames)
    array = dicom_pixel_array(ds, path, record, frame=0 if frames > 1 else None)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(array, ds)  # the palette's own depth: 8 or 16 bits
        return _rgb_uint8(rgb, 16 if rgb.max() > 255 else 8)
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        # pydicom 3 returns RGB for YBR data by default (as_rgb); only the bit depth is rescaled.
        return _rgb_uint8(array, int(ds.get("BitsStored", 8)))

    view = frame_view(ds, 0)
    view.PhotometricInterpretation = photometric  # apply_windowing checks it; files may omit it
    modality = apply_modality_lut(array, view)
    if window is not None:
        out = apply_window_uint8(modality, window)
    else:
        out = _file_voi_uint8(modality, view, ds, path)
    if photometric == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: low values are white
    return out


def _file_voi_uint8(modality: np.ndarray, view: Dataset, ds: Dataset, path: Path) -> np.ndarray:
    """The file's own VOI (VOI LUT Sequence, else Window Center/Width) onto 0..255; defaults without one."""
    from pydicom.pixels import apply_voi, apply_windowing

    voi_luts = view.get("VOILUTSequence") or []
    if voi_luts and "LUTDescriptor" in voi_luts[0] and "LUTData" in voi_luts[0]:
        entries, first_input = int(voi_luts[0].LUTDescriptor[0]) or 2**16, int(voi_luts[0].LUTDescriptor[1])
        # The LUT's brightest entry is white. The descriptor's bits per entry would be the standard's
        # output range, but LUTs often declare 16 bits for 12-bit entries, which would render dark.
        top = float(np.max(apply_voi(np.arange(first_input, first_input + entries), view, index=0)))
        return scale_to_uint8(apply_voi(modality, view, index=0), 0.0, top or 1.0)
    if "WindowCenter" in view and "WindowWidth" in view:
        try:
            windowed = apply_windowing(modality, view, index=0)
            # the window function's output range, as pydicom derives it (stored bits, rescale): the
            # images of an infinitely dark and bright pixel
            with np.errstate(over="ignore"):
                y_min, y_max = apply_windowing(np.array([-np.inf, np.inf]), view, index=0)
        except ValueError as err:  # width < 1 for LINEAR, an unknown VOI LUT Function, ...
            logger.warning("%s: ignoring the file's VOI window (%s)", path, err)
        else:
            return scale_to_uint8(windowed, float(y_min), float(y_max))
    values = np.asarray(modality, dtype=np.float64)
    if str(ds.get("Modality", "")).upper() == "CT":
        return apply_window_uint8(values, "wide")
    # MR, US, ... carry no absolute intensity scale and their stored bit range is usually far wider than
    # the data, so without a VOI in the file the image's own range is the only sensible one.
    logger.debug("%s: no VOI window in the file; using the image's min..max", path)
    return apply_window_uint8(values, MINMAX)


def _rgb_uint8(array: np.ndarray, bits: int) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    return scale_to_uint8(array, 0.0, 2.0 ** max(bits, 8) - 1)


# ---------------------------------------------------------------- 3D: planes -> volume


@dataclass
class _Plane:
    """One 2D plane of a DICOM volume: a file of a series, or a frame of a multi-frame file."""

    name: str
    position: np.ndarray  # ImagePositionPatient (LPS, mm)
    orientation: np.ndarray  # ImageOrientationPatient (row direction, column direction)
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    shape: tuple[int, int]  # (rows, columns)
    thickness: float | None
    load: Callable[[], np.ndarray]  # -> float32 (rows, columns) after the modality LUT


def _floats(values: Iterable[float]) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def _plane(
    ds: Dataset,
    frame: int,
    name: str,
    shape: tuple[int, int],
    load: Callable[[], np.ndarray],
    where: str,
    record: str | int | None,
) -> _Plane:
    """A plane's geometry from its file (classic) or its functional groups (enhanced)."""
    values = {}
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        values[keyword] = frame_attribute(ds, frame, keyword)
        if values[keyword] is None:
            raise MedVLDataError(f"{name} lacks {keyword}; cannot place it in 3D", record=record, path=where)
    spacing = _floats(values["PixelSpacing"])
    thickness = frame_attribute(ds, frame, "SliceThickness")
    return _Plane(
        name=name,
        position=_floats(values["ImagePositionPatient"]),
        orientation=_floats(values["ImageOrientationPatient"]),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        shape=shape,
        thickness=None if thickness is None else float(thickness),
        load=load,
    )


def read_dicom_volume(path: Path, record: str | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM series folder or an enhanced multi-frame file as a volume.

    Args:
        path: a series folder (or a folder holding only one multi-frame file), or a multi-frame file.
        record: record id for messages.

    Returns:
        (float32 modality values (HU for CT) indexed (column, row, slice), 4x4 voxel -> RAS affine).

    Raises:
        MedVLDataError: an empty folder, unreadable files, mixed series or orientations, uneven
            spacing, duplicate slices, a single slice; the message names the record and file.
    """
    if path.is_dir():
        return _read_series(path, record)
    return _read_multiframe(path, record)


def _series_files(folder: Path) -> list[Path]:
    files = []
    for child in sorted(folder.iterdir()):
        if child.is_dir() or child.name.startswith(".") or child.name.upper() == "DICOMDIR":
            continue
        if child.suffix.lower() in NON_DICOM_SUFFIXES:
            continue
        files.append(child)
    return files


def _read_series(folder: Path, record: str | int | None) -> tuple[np.ndarray, np.ndarray]:
    files = _series_files(folder)
    if not files:
        raise MedVLDataError("folder holds no DICOM files", record=record, path=str(folder))
    headers = [(f, read_dicom(f, record, stop_before_pixels=True)) for f in files]
    multi = [f for f, ds in headers if number_of_frames(ds) > 1]
    if multi:
        if len(files) == 1:
            return _read_multiframe(files[0], record)
        raise MedVLDataError(
            f"folder mixes a multi-frame DICOM file ({multi[0].name}) with other files; load the file itself",
            record=record,
            path=str(folder),
        )

    series: dict[str, list[Path]] = {}
    for f, ds in headers:
        series.setdefault(str(ds.get("SeriesInstanceUID", "<none>")), []).append(f)
    if len(series) > 1:
        listing = "; ".join(f"{uid} ({len(fs)} file(s), e.g. {fs[0].name})" for uid, fs in series.items())
        raise MedVLDataError(
            f"folder mixes {len(series)} DICOM series: {listing}; put each series in its own folder",
            record=record,
            path=str(folder),
        )

    planes = []
    for f, ds in headers:
        if "Rows" not in ds or "Columns" not in ds:
            raise MedVLDataError(f"{f.name} lacks Rows/Columns; cannot place it in 3D", record=record, path=str(f))
        shape = (int(ds.Rows), int(ds.Columns))
        planes.append(_plane(ds, 0, f.name, shape, functools.partial(_series_slice, f, record), str(f), record))
    return _assemble(planes, str(folder), record)


def _series_slice(path: Path, record: str | int | None) -> np.ndarray:
    ds = read_dicom(path, record)
    pixels = dicom_pixel_array(ds, path, record)
    if pixels.ndim != 2:
        raise MedVLDataError(
            f"expected a single-frame greyscale slice, got pixel array {pixels.shape}", record=record, path=str(path)
        )
    return modality_values(pixels, ds).astype(np.float32)


def _read_multiframe(path: Path, record: str | int | None) -> tuple[np.ndarray, np.ndarray]:
    """An enhanced (multi-frame) CT/MR file: geometry and rescale from the per-frame / shared groups."""
    ds = read_dicom(path, record)
    frames = number_of_frames(ds)
    if frames == 1:
        raise MedVLDataError(
            "a single DICOM slice is not a volume; pass its series folder", record=record, path=str(path)
        )
    pixels = dicom_pixel_array(ds, path, record)
    if pixels.ndim != 3:
        raise MedVLDataError(
            f"expected greyscale frames, got pixel array {pixels.shape}", record=record, path=str(path)
        )
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != frames:
        raise MedVLDataError(
            f"{frames} frames but {len(per_frame)} per-frame functional groups", record=record, path=str(path)
        )
    shape = (int(pixels.shape[1]), int(pixels.shape[2]))
    planes = [
        _plane(
            ds,
            n,
            f"{path.name}#frame{n}",
            shape,
            functools.partial(_frame_slice, pixels, ds, n),
            str(path),
            record,
        )
        for n in range(frames)
    ]
    return _assemble(planes, str(path), record)


def _frame_slice(pixels: np.ndarray, ds: Dataset, frame: int) -> np.ndarray:
    return modality_values(pixels[frame], ds, frame).astype(np.float32)


def _assemble(planes: list[_Plane], source: str, record: str | int | None) -> tuple[np.ndarray, np.ndarray]:
    """Check that the planes form one evenly spaced stack; sort them; build the array and RAS affine."""
    orientation = planes[0].orientation
    for plane in planes[1:]:
        if not np.allclose(plane.orientation, orientation, atol=1e-4):
            raise MedVLDataError(
                f"slices have different ImageOrientationPatient ({orientation.tolist()} in {planes[0].name} vs "
                f"{plane.orientation.tolist()} in {plane.name}); not one volume",
                record=record,
                path=source,
            )
    shapes = {plane.shape for plane in planes}
    spacings = {plane.pixel_spacing for plane in planes}
    if len(shapes) > 1 or len(spacings) > 1:
        raise MedVLDataError(
            f"slices have different sizes {sorted(shapes)} or pixel spacings {sorted(spacings)}",
            record=record,
            path=source,
        )
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.stack([plane.position for plane in planes])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    planes = [planes[i] for i in order]
    positions, along = positions[order], along[order]

    if len(planes) > 1:
        gaps = np.diff(along)
        if (gaps < 1e-3).any():
            dup = int(np.argmax(gaps < 1e-3))
            raise MedVLDataError(
                f"two slices share position {along[dup]:.3f} mm along the normal ({planes[dup].name}, "
                f"{planes[dup + 1].name}); duplicated or multi-phase series",
                record=record,
                path=source,
            )
        if gaps.max() - gaps.min() > SPACING_RTOL * gaps.mean():
            worst = int(np.argmax(np.abs(gaps - np.median(gaps))))
            raise MedVLDataError(
                f"inconsistent slice spacing: gaps between sorted slices range {gaps.min():.3f}..{gaps.max():.3f} mm "
                f"(e.g. {gaps[worst]:.3f} mm between {planes[worst].name} and {planes[worst + 1].name}); "
                "missing slices or a mixed acquisition",
                record=record,
                path=source,
            )
        step = (positions[-1] - positions[0]) / (len(planes) - 1)  # follows gantry tilt, like nibabel
    else:
        step = normal * (planes[0].thickness or 1.0)

    # pixel data is [row, column]; the volume is (column, row, slice) so i runs along the row direction.
    array = np.stack([plane.load() for plane in planes], axis=-1).transpose(1, 0, 2)
    row_spacing, col_spacing = planes[0].pixel_spacing
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * col_spacing  # moving along a row = next column: column spacing
    affine_lps[:3, 1] = col_dir * row_spacing  # moving down a column = next row: row spacing
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = positions[0]
    return np.ascontiguousarray(array), LPS_TO_RAS @ affine_lps


# ---------------------------------------------------------------- zipped DICOM series (uploads)


class ArchiveTooLargeError(MedVLDataError):
    """A zipped series that holds more files or unpacks to more bytes than allowed."""


def unzip_dicom_series(
    source: str | Path | bytes, dest: str | Path, *, max_bytes: int, max_members: int = 4096, name: str | None = None
) -> Path:
    """Unpack a zipped DICOM series safely; returns the folder of the series (the one with the most files).

    Members are written under numbered names, grouped by their folder in the archive, so no member name
    ever becomes a path (no traversal out of ``dest``); macOS metadata, hidden files and DICOMDIR are
    skipped. The bytes written are counted as they are streamed, whatever sizes the archive declares.

    Args:
        source: the ZIP file or its bytes.
        dest: an empty or missing folder to unpack into.
        max_bytes: most bytes unpacked in all.
        max_members: most files in the archive.
        name: the upload's name for messages (default: ``source`` when it is a path).

    Raises:
        ArchiveTooLargeError: too many files or bytes.
        MedVLDataError: not a readable archive, or one without files.
    """
    import io
    import zipfile
    import zlib

    label = name or (str(source) if not isinstance(source, bytes) else "the zip archive")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    counts: dict[Path, int] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) > max_members:
                raise ArchiveTooLargeError(f"the zip holds {len(members)} files (at most {max_members})", path=label)
            groups: dict[str, Path] = {}
            written = 0
            for n, member in enumerate(members):
                parts = member.filename.replace("\\", "/").split("/")
                if parts[-1].startswith(".") or "__MACOSX" in parts or parts[-1].upper() == "DICOMDIR":
                    continue
                folder = groups.setdefault("/".join(parts[:-1]), dest / f"{len(groups):04d}")
                folder.mkdir(exist_ok=True)
                with archive.open(member) as src, open(folder / f"{n:05d}.dcm", "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise ArchiveTooLargeError(f"the zip unpacks to more than {max_bytes} bytes", path=label)
                        dst.write(chunk)
                counts[folder] = counts.get(folder, 0) + 1
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, zlib.error) as err:
        raise MedVLDataError(f"not a readable ZIP archive: {err}", path=label) from None
    if not counts:
        raise MedVLDataError("the ZIP archive holds no files", path=label)
    # archives often wrap the series in one or more folders, or carry a few extra files beside it
    return max(counts, key=lambda folder: counts[folder])


__all__ = [
    "FUNCTIONAL_GROUPS",
    "ArchiveTooLargeError",
    "LPS_TO_RAS",
    "dicom_image_size",
    "dicom_pixel_array",
    "frame_attribute",
    "frame_view",
    "header_pixel_count",
    "is_dicom_file",
    "modality_values",
    "number_of_frames",
    "read_dicom",
    "read_dicom_image",
    "read_dicom_volume",
    "unzip_dicom_series",
]
