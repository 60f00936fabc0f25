"""2D medical image loading: PNG, JPEG, BMP, TIFF (8/16-bit) and DICOM -> 8-bit RGB ``PIL.Image``.

Intensity rules (all fixed per file format, never silently per image):

* 8-bit grey/colour images are converted to RGB unchanged.
* 16-bit (and 32-bit integer) grey images: ``window=None`` maps 0..2^bits-1 linearly onto
  0..255, where ``bits`` is the real bit depth: the PNG's significant bits (``sBIT`` chunk) when
  the file declares them, else the smallest of 8, 10, 12, 14, 16 bits that holds the brightest
  pixel. Why: CR/DX images are 10-14-bit data stored in 16-bit PNGs; mapped from 0..65535 they came
  out nearly black (brightest pixel 16/255 for 12-bit data). Pass a window in the file's units
  (``(center, width)``, a preset name, ``"custom:C,W"``) or ``"minmax"`` (per image, only when
  asked) to override. Float images need a window or ``"minmax"``.
* The window comes from the record (``"window": [center, width]`` / a preset / ``"minmax"`` in a
  native record, kept in ``meta["window"]``) or its data set (a registry entry's ``window:``, or
  ``medvl infer --window`` / ``data.image_window``); see :func:`record_window`.
* DICOM (pydicom): the modality LUT is applied first (Rescale Slope/Intercept or a Modality LUT
  Sequence; CT values become HU). Then the VOI: ``window=None`` uses the file's own VOI (VOI LUT
  Sequence, else the first Window Center/Width with DICOM's LINEAR function); without one, CT uses
  the ``"wide"`` HU window (-1000..1000) and other modalities (MR, US, ...: no absolute intensity
  scale) their own min..max. A preset
  name / custom window / ``"minmax"`` overrides the file. MONOCHROME1 is inverted after windowing so
  that dense tissue is bright. Colour DICOM (RGB, YBR, palette) is converted to RGB. Multi-frame
  files give their first frame (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medvl.errors import MedVLDataError
from medvl.imaging.windows import apply_window_uint8, window_bounds

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
WindowArg = str | Sequence[float] | dict[str, float] | None


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` name or a file with the ``DICM`` magic at byte 128.

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


def record_window(meta: dict[str, Any], record: str | int | None = None, path: str | None = None) -> WindowArg:
    """The intensity window a record asks for (``meta["window"]``), validated; None if none.

    Args:
        meta: the record's ``meta`` (a native record's top-level ``"window"`` lands there).
        record: record id (for the error message).
        path: records file (for the error message).

    Raises:
        MedVLDataError: an invalid window, naming the record and the valid forms.
    """
    window = meta.get("window") if isinstance(meta, dict) else None
    if isinstance(window, list):
        window = tuple(window)
    if window is not None and window != "minmax":
        try:
            window_bounds(window)
        except (ValueError, TypeError) as err:
            raise MedVLDataError(
                f"invalid window {meta.get('window')!r} ({err}); use [center, width], a preset name, "
                "'custom:C,W' or 'minmax'",
                record=record,
                path=path,
            ) from None
    return window


def load_image(path: str | Path, window: WindowArg = None, record: str | int | None = None) -> Image.Image:
    """Load a 2D medical image as an 8-bit RGB ``PIL.Image``.

    Args:
        path: PNG, JPEG, BMP, TIFF or DICOM file.
        window: None for the format's fixed rule (see the module docstring), ``"minmax"`` for a
            per-image stretch, or a window: preset name (lung, mediastinum, abdomen, bone, wide),
            ``"custom:C,W"`` or (center, width) in the file's units (HU for CT DICOM).
        record: record id, used in error messages.

    Returns:
        RGB image, 8 bits per channel.

    Raises:
        MedVLDataError: missing, unreadable, truncated or corrupt file, 0-pixel image, or pixel data
            that cannot be decoded; the message names the record and file.
    """
    path = Path(path)
    if not path.exists():
        raise MedVLDataError("image file not found", record=record, path=str(path))
    if path.is_dir():
        raise MedVLDataError("expected an image file, got a directory", record=record, path=str(path))
    if window is not None and window != "minmax":
        window_bounds(window)  # invalid names fail here, listing the valid ones
    if is_dicom_file(path):
        pixels = _dicom_pixels(path, window, record)
    else:
        pixels = _pil_pixels(path, window, record)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")


# ---------------------------------------------------------------- PIL formats


def _pil_pixels(path: Path, window: WindowArg, record: str | int | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            n_frames = getattr(img, "n_frames", 1)
            if n_frames > 1:
                logger.info("%s has %d frames; using the first", path, n_frames)
            img.load()  # decode now: truncated/corrupt data fails here, not later in a worker
            _check_size(img.size[0], img.size[1], path, record)
            mode = img.mode
            if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grey
                return _grey_high_depth(np.array(img), mode, window, path, record)
            if window is not None:
                grey = np.array(img.convert("L"))
                return _map_grey(grey.astype(np.float64), window, (0.0, 255.0))
            return np.array(img.convert("RGB"))
    except UnidentifiedImageError as exc:
        raise MedVLDataError("not a readable image (unknown or corrupt format)", record=record, path=str(path)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, MedVLDataError):
            raise
        raise MedVLDataError(f"corrupt or truncated image: {exc}", record=record, path=str(path)) from exc


def _check_size(width: int, height: int, path: Path, record: str | int | None) -> None:
    if width <= 0 or height <= 0:
        raise MedVLDataError(f"image has 0 pixels (size {width}x{height})", record=record, path=str(path))
    if width * height == 1:  # resized for the encoder, one pixel becomes a flat tensor: nothing to see
        raise MedVLDataError(
            "degenerate image of 1x1 pixels: resized for the encoder it would be a flat tensor",
            record=record,
            path=str(path),
        )


_HOW_TO_WINDOW = (
    'set a window: "window": [center, width] or "minmax" in the record, "window:" in its registry '
    "entry, or --window / data.image_window"
)


def _png_significant_bits(path: Path) -> int | None:
    """The grey significant bits a PNG declares in its ``sBIT`` chunk (Pillow does not read it)."""
    import struct

    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    data = fh.read(length)
                    return max(data) if data else None
                if kind in (b"IDAT", b"IEND"):
                    return None  # sBIT must come before the image data
                fh.seek(length + 4, 1)
    except OSError:
        return None


def stored_bit_depth(values: np.ndarray, path: Path) -> int:
    """The real bit depth of integer grey data in a 16-bit container.

    Args:
        values: the pixel values (non-negative).
        path: the file (a PNG's ``sBIT`` chunk wins when it holds every value).
    """
    top = int(values.max()) if values.size else 0
    declared = _png_significant_bits(path) if path.suffix.lower() == ".png" else None
    if declared is not None and 1 <= declared <= 16 and top < (1 << declared):
        return declared
    needed = max(top.bit_length(), 1)
    return next(b for b in (8, 10, 12, 14, 16) if needed <= b) if needed <= 16 else needed


def _grey_high_depth(array: np.ndarray, mode: str, window: WindowArg, path: Path, record) -> np.ndarray:
    values = array.astype(np.float64)
    if window is None:
        if mode == "F":
            raise MedVLDataError(
                f"floating-point image: intensities have no fixed scale; {_HOW_TO_WINDOW}",
                record=record,
                path=str(path),
            )
        if values.min() < 0 or values.max() > 65535:
            raise MedVLDataError(
                f"integer image with values {values.min():g}..{values.max():g} outside 0..65535; {_HOW_TO_WINDOW}",
                record=record,
                path=str(path),
            )
        bits = stored_bit_depth(array, path)
        if bits < 16:
            logger.debug("%s: %d-bit data in a 16-bit image: mapping 0..%d onto 0..255", path, bits, (1 << bits) - 1)
        return _map_grey(values, None, (0.0, float((1 << bits) - 1)))
    return _map_grey(values, window, (0.0, 65535.0))


def _map_grey(values: np.ndarray, window: WindowArg, full_range: tuple[float, float]) -> np.ndarray:
    """Grey values -> uint8 with a window, 'minmax', or the fixed full range."""
    if window == "minmax":
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros(values.shape, dtype=np.uint8)
        return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)
    if window is None:
        low, high = full_range
        return np.round((np.clip(values, low, high) - low) / (high - low) * 255.0).astype(np.uint8)
    return apply_window_uint8(values, window)


# ---------------------------------------------------------------- DICOM


def read_dicom(path: Path, record: str | int | None, stop_before_pixels: bool = False) -> Any:
    """``pydicom.dcmread`` with medvl errors for unreadable files.

    Args:
        path: DICOM file.
        record: record id for error messages.
        stop_before_pixels: read the header only.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise MedVLDataError(f"not a valid DICOM file: {exc}", record=record, path=str(path)) from exc
    except Exception as exc:  # pydicom raises many types (EOFError, OSError, struct.error, ...) on bad bytes
        raise MedVLDataError(f"corrupt DICOM file: {type(exc).__name__}: {exc}", record=record, path=str(path)) from exc


def dicom_pixel_array(ds: Any, path: Path, record: str | int | None, frame: int | None = None) -> np.ndarray:
    """Decoded pixel data of a DICOM dataset, with medvl errors.

    Args:
        ds: pydicom dataset.
        path: its file (for messages).
        record: record id for messages.
        frame: decode only this frame of a multi-frame file (None: all frames).
    """
    if frame is not None:
        ds.pixel_array_options(index=frame)  # decoding one frame of a long cine loop is much faster
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise MedVLDataError("DICOM file has no pixel data", record=record, path=str(path))
    try:
        return ds.pixel_array
    except Exception as exc:  # missing decoder plugin, truncated pixel data, bad tags, ...
        raise MedVLDataError(
            f"cannot decode DICOM pixel data ({ds.file_meta.TransferSyntaxUID.name if 'file_meta' in ds else '?'}):"
            f" {type(exc).__name__}: {exc}",
            record=record,
            path=str(path),
        ) from exc


def _dicom_pixels(path: Path, window: WindowArg, record: str | int | None) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

    ds = read_dicom(path, record)
    if "Rows" not in ds or "Columns" not in ds:
        raise MedVLDataError(
            "DICOM header has no Rows/Columns (truncated, or not an image)", record=record, path=str(path)
        )
    _check_size(int(ds.Columns or 0), int(ds.Rows or 0), path, record)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        logger.info("%s has %d frames; using the first", path, frames)
    array = dicom_pixel_array(ds, path, record, frame=0 if frames > 1 else None)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(array, ds)  # the palette's own depth: 8 or 16 bits
        return _to_uint8_rgb(rgb, 16 if rgb.max() > 255 else 8)
    if samples == 3:
        # pydicom 3 returns RGB for YBR data by default (as_rgb); we only rescale the bit depth.
        return _to_uint8_rgb(array, int(ds.get("BitsStored", 8)))

    slope = functional_group_value(ds, 0, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = functional_group_value(ds, 0, "PixelValueTransformationSequence", "RescaleIntercept")
    if "ModalityLUTSequence" in ds or slope in (None, ""):
        modality_values = apply_modality_lut(array, ds)
    else:  # also covers enhanced (multi-frame) files, whose rescale sits in the functional groups
        modality_values = array * float(slope) + float(intercept or 0.0)
    values = modality_values.astype(np.float64)
    center = functional_group_value(ds, 0, "FrameVOILUTSequence", "WindowCenter")
    width = functional_group_value(ds, 0, "FrameVOILUTSequence", "WindowWidth")
    if window is not None:
        out = _map_grey(values, window, (0.0, 1.0))
    elif "VOILUTSequence" in ds:
        lut = apply_voi(modality_values, ds, index=0)
        top = float(np.max(ds.VOILUTSequence[0].LUTData)) or 1.0
        out = np.round(np.clip(lut.astype(np.float64) / top, 0, 1) * 255.0).astype(np.uint8)
    elif center not in (None, "") and width not in (None, ""):
        out = _dicom_linear_window(values, _first(center), _first(width), ds)
    elif str(ds.get("Modality", "")).upper() == "CT":
        out = apply_window_uint8(values, "wide")
    else:
        # MR, US, ... carry no absolute intensity scale and their stored bit range is usually far wider
        # than the data, so without a VOI in the file the image's own range is the only sensible one.
        logger.debug("%s: no VOI window in the file; using the image's min..max", path)
        out = _map_grey(values, "minmax", (0.0, 1.0))
    if photometric == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: low values are white
    return out


def functional_group_value(ds: Any, frame: int, sequence: str, attribute: str) -> Any:
    """An attribute of a frame: from its per-frame functional group, else the shared one, else top level.

    Enhanced (multi-frame) CT/MR files keep rescale, window, position and spacing in functional
    groups; classic files keep them at the top level.

    Args:
        ds: pydicom dataset.
        frame: frame index.
        sequence: functional group macro, e.g. ``"PixelValueTransformationSequence"``.
        attribute: keyword inside it, e.g. ``"RescaleSlope"``.

    Returns:
        The value, or None when absent everywhere.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    items = [per_frame[frame]] if frame < len(per_frame) else []
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        items.append(ds.SharedFunctionalGroupsSequence[0])
    for item in items:
        if sequence in item and len(item[sequence].value) and attribute in item[sequence][0]:
            return item[sequence][0][attribute].value
    return ds[attribute].value if attribute in ds else None


def _first(value: Any) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _dicom_linear_window(values: np.ndarray, center: float, width: float, ds: Any) -> np.ndarray:
    """DICOM's VOI LUT function (LINEAR, LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2) onto 0..255."""
    func = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if func == "SIGMOID":
        unit = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    elif func == "LINEAR_EXACT":
        unit = np.clip((values - center) / max(width, 1e-6) + 0.5, 0.0, 1.0)
    else:
        center, width = center - 0.5, max(width - 1.0, 1e-6)
        unit = np.clip((values - center) / width + 0.5, 0.0, 1.0)
    return np.round(unit * 255.0).astype(np.uint8)


def _to_uint8_rgb(array: np.ndarray, bits: int) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    scale = 255.0 / (2.0 ** max(bits, 8) - 1)
    return np.round(np.clip(array.astype(np.float64) * scale, 0, 255)).astype(np.uint8)


__all__ = ["dicom_pixel_array", "functional_group_value", "is_dicom_file", "load_image", "read_dicom"]
