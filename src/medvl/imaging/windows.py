"""HU window presets and window arithmetic shared by the 2D loader and the volume processor.

The presets live in ``medvl.models.volume_processing_medvl`` (that file is copied into checkpoints and
may not import medvl, so it is the single source of truth); this module re-exports them and adds the
8-bit mapping used for 2D images.

Presets (center / width, HU): lung -600/1500, mediastinum 40/400, abdomen 50/400, bone 400/1800,
wide 0/2000 (= -1000..1000 HU). A custom window is ``(center, width)`` or ``"custom:C,W"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medvl.models.volume_processing_medvl import HU_WINDOWS, resolve_window, window_bounds

__all__ = ["HU_WINDOWS", "apply_window_uint8", "resolve_window", "window_bounds"]


def apply_window_uint8(values: np.ndarray, window: str | Sequence[float] | dict[str, float]) -> np.ndarray:
    """Clip ``values`` to a window and map it linearly onto 0..255 (uint8, rounded).

    Args:
        values: intensities in the window's units (HU for CT after the modality LUT).
        window: preset name, ``"custom:C,W"``, (center, width) or {"center", "width"}.

    Returns:
        uint8 array of the same shape: the window's low edge -> 0, high edge -> 255.
    """
    low, high = window_bounds(window)
    unit = (np.clip(np.asarray(values, dtype=np.float64), low, high) - low) / (high - low)
    return np.round(unit * 255.0).astype(np.uint8)
