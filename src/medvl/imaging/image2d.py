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
* DICOM: :func:`medvl.imaging.dicom.read_dicom_image` (modality LUT, then the file's own VOI or the
  window asked for, MONOCHROME1 inverted, colour to RGB; CT without a VOI in the file gets the
  ``"wide"`` HU window, other modalities their min..max). Multi-frame files give their first frame
  (logged).
* Windows and presets: :mod:`medvl.models.windows` (shared with the volume processor).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medvl.errors import MedVLDataError
from medvl.imaging.dicom import dicom_image_size, is_dicom_file, read_dicom, read_dicom_image
from medvl.models.windows import MINMAX, WindowSpec, apply_window_uint8, scale_to_uint8, window_bounds

logger = logging.getLogger(__name__)

# the window of a 2D load: None (the format's fixed rule), "minmax" or a window
WindowArg = WindowSpec | None


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
    if window is not None and window != MINMAX:
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
    if window is not None and window != MINMAX:
        window_bounds(window)  # invalid names fail here, listing the valid ones
    if is_dicom_file(path):
        ds = read_dicom(path, record)
        _check_size(*dicom_image_size(ds, path, record), path, record)  # before decoding the pixel data
        pixels = read_dicom_image(ds, path, window, record)
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


def _grey_high_depth(
    array: np.ndarray, mode: str, window: WindowArg, path: Path, record: str | int | None
) -> np.ndarray:
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
    """Grey values -> uint8 with a window, 'minmax', or (``window=None``) the fixed full range."""
    if window is None:
        return scale_to_uint8(values, *full_range)
    return apply_window_uint8(values, window)


__all__ = ["load_image", "record_window", "stored_bit_depth"]
