"""The ``volume`` suite's synthetic CT (``medvl.tools.bench.volume_suite``): HU values where the phantom
puts air, tissue and lung, and a lossless round trip through NIfTI and ``load_volume``."""

from __future__ import annotations

import numpy as np
import pytest

from medvl.tools.bench.volume_suite import synthetic_ct, write_nifti


def test_synthetic_ct_round_trips_through_load_volume(tmp_path):
    from medvl.imaging import load_volume

    array = synthetic_ct((40, 32, 6))
    assert array.dtype == np.int16 and array.shape == (40, 32, 6)
    # air in the corner, soft tissue in the middle, lung at x = -0.4 of the half-width (noise sd 20 HU)
    assert array[0, 0, 0] < -900 and -100 < array[20, 16, 3] < 200 and -1000 < array[12, 16, 3] < -700
    path = write_nifti(array, (0.75, 0.75, 2.5), tmp_path / "ct.nii.gz")
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.array, array.astype(np.float32))
    assert volume.spacing == pytest.approx((0.75, 0.75, 2.5))
