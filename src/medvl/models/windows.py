"""Intensity windows: the named HU presets and the window arithmetic of every medvl image path.

REMOTE-CODE SAFE: imports only numpy (copied into checkpoints, next to the volume processor that
resolves its saved window settings here).

This is the one home of the presets: the volume processor (``volume_processing_medvl.py``), the
2D loader (``medvl.imaging.image2d``, PNG/TIFF and DICOM) and the demo's slice viewer all read them
from here, so a window name means the same HU range in training, evaluation, the demo and a
checkpoint loaded without medvl.

Presets (center / width, HU): lung -600/1500, mediastinum 40/400, abdomen 50/400, bone 400/1800,
wide 0/2000 (= -1000..1000 HU, the range MedM-VL feeds its CT models). A custom window is
``(center, width)``, ``{"center": C, "width": W}`` or ``"custom:C,W"``. A window covers
``center - width / 2 .. center + width / 2`` and maps linearly onto the output; this is not DICOM's
LINEAR VOI function (which shifts by half a stored unit), so that one window gives the same mapping
for a 2D slice and a 3D volume. A file's own DICOM VOI is applied with DICOM's rules in
``medvl.imaging.dicom``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# a preset name, "custom:C,W", a (center, width) pair or {"center": C, "width": W}
WindowSpec = str | Sequence[float] | dict[str, float]

# HU windows as (center, width).
HU_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "abdomen": (50.0, 400.0),
    "bone": (400.0, 1800.0),
    "wide": (0.0, 2000.0),
}

# a 2D-only choice: each image's own min..max (only when asked: the same value then means different
# things in different images)
MINMAX = "minmax"


def resolve_window(window: WindowSpec) -> tuple[float, float]:
    """Turn a window setting into (center, width).

    Args:
        window: a preset name (see ``HU_WINDOWS``), ``"custom:C,W"``, a (center, width) pair, or a dict
            with ``center`` and ``width``.

    Returns:
        (center, width) as floats.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or a non-positive width.
    """
    if isinstance(window, str):
        name = window.strip().lower()
        if name.startswith("custom:"):
            parts = name[len("custom:") :].split(",")
            if len(parts) != 2:
                raise ValueError(f"custom window must be 'custom:CENTER,WIDTH', got {window!r}")
            center, width = float(parts[0]), float(parts[1])
        elif name in HU_WINDOWS:
            center, width = HU_WINDOWS[name]
        else:
            raise ValueError(
                f"unknown HU window {window!r}; valid: {', '.join(HU_WINDOWS)}, "
                "'custom:CENTER,WIDTH' or a (center, width) pair"
            )
    elif isinstance(window, dict):
        try:
            center, width = float(window["center"]), float(window["width"])
        except KeyError as exc:
            raise ValueError(f"a window dict needs 'center' and 'width', got {window!r}") from exc
    else:
        values = list(window)
        if len(values) != 2:
            raise ValueError(f"a custom window is (center, width), got {window!r}")
        center, width = float(values[0]), float(values[1])
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width} for window {window!r}")
    return center, width


def window_bounds(window: WindowSpec) -> tuple[float, float]:
    """(low, high) of a window, in its units (HU for CT).

    Args:
        window: anything :func:`resolve_window` accepts.
    """
    center, width = resolve_window(window)
    return center - width / 2.0, center + width / 2.0


def scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip ``values`` to ``low..high`` and map that range linearly onto 0..255 (uint8, rounded).

    Args:
        values: intensities.
        low: value that becomes 0.
        high: value that becomes 255; ``high <= low`` (a flat image's min..max) gives all zeros.
    """
    values = np.asarray(values, dtype=np.float64)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((np.clip(values, low, high) - low) / (high - low) * 255.0).astype(np.uint8)


def apply_window_uint8(values: np.ndarray, window: WindowSpec) -> np.ndarray:
    """Clip ``values`` to a window and map it linearly onto 0..255 (uint8, rounded).

    Args:
        values: intensities in the window's units (HU for CT after the modality LUT).
        window: anything :func:`resolve_window` accepts, or ``"minmax"`` for the values' own range.

    Returns:
        uint8 array of the same shape: the window's low edge -> 0, high edge -> 255.
    """
    values = np.asarray(values, dtype=np.float64)
    if isinstance(window, str) and window == MINMAX:
        return scale_to_uint8(values, float(values.min()), float(values.max()))
    return scale_to_uint8(values, *window_bounds(window))


__all__ = [
    "HU_WINDOWS",
    "MINMAX",
    "WindowSpec",
    "apply_window_uint8",
    "resolve_window",
    "scale_to_uint8",
    "window_bounds",
]
