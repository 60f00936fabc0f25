"""Tests for models/windows.py: the HU window presets and the window arithmetic (hand-computed values)."""

from __future__ import annotations

import numpy as np
import pytest

from medvl.models.windows import HU_WINDOWS, apply_window_uint8, resolve_window, scale_to_uint8, window_bounds


def test_presets_and_custom_forms():
    assert set(HU_WINDOWS) == {"lung", "mediastinum", "abdomen", "bone", "wide"}
    assert resolve_window("lung") == (-600.0, 1500.0)
    assert resolve_window(" Wide ") == (0.0, 2000.0)
    assert resolve_window("custom:40,400") == (40.0, 400.0)
    assert resolve_window((50, 350)) == (50.0, 350.0)
    assert resolve_window({"center": -600, "width": 1500}) == (-600.0, 1500.0)
    assert window_bounds("bone") == (-500.0, 1300.0)
    assert window_bounds("wide") == (-1000.0, 1000.0)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ("lungs", "lung, mediastinum, abdomen, bone, wide"),
        ((40, 0), "width must be > 0"),
        ("custom:40", "custom:CENTER,WIDTH"),
        ((1, 2, 3), r"\(center, width\)"),
        ({"center": 40}, "'center' and 'width'"),
    ],
)
def test_invalid_windows_say_what_is_valid(window, message):
    with pytest.raises(ValueError, match=message):
        resolve_window(window)


def test_apply_window_uint8_edges():
    assert apply_window_uint8(np.array([-1000.0, 0.0, 1000.0]), "wide").tolist() == [0, 128, 255]
    assert apply_window_uint8(np.array([-160.0, 240.0]), "mediastinum").tolist() == [0, 255]
    # lung -1350..150: -600 is exactly half way (127.5 rounds to even 128); outside values clip
    assert apply_window_uint8(np.array([-2000.0, -600.0, 500.0]), "lung").tolist() == [0, 128, 255]


def test_minmax_and_flat_images():
    # 10..30: 15 -> 63.75 -> 64, 20 -> 127.5 -> 128
    assert apply_window_uint8(np.array([10.0, 15.0, 20.0, 30.0]), "minmax").tolist() == [0, 64, 128, 255]
    assert apply_window_uint8(np.full((2, 2), 7.0), "minmax").tolist() == [[0, 0], [0, 0]]
    assert scale_to_uint8(np.array([0, 4095, 8000]), 0.0, 4095.0).tolist() == [0, 255, 255]
