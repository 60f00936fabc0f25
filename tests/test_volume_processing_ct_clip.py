"""The ``ct_clip`` volume-processor mode: CT-CLIP's CT-RATE preprocessing, checked against hand-computed values.

CT-CLIP (scripts/data_inference_nii.py): HU clipped to [-1000, 1000], trilinear resampling
(align_corners=False) to 1.5 mm (slices) x 0.75 mm (in-plane) with new size int(n * current / target),
/1000, centre crop or pad with -1 to the target shape, NIfTI (i, j, k) -> (D, H, W) = (k, i, j).

With align_corners=False and an upsampling factor of 2, output voxel o samples the input at
x = (o + 0.5) / 2 - 0.5 = o / 2 - 0.25, clamped to [0, n - 1], linearly between floor(x) and floor(x) + 1.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medvl.imaging.volume3d import load_volume
from medvl.models.volume_processing_medvl import MedVLVolumeProcessor


def _nifti(tmp_path, array: np.ndarray, spacing: tuple[float, float, float]):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)
    return load_volume(path)


def test_defaults_are_ctclip_constants():
    processor = MedVLVolumeProcessor(mode="ct_clip")
    assert processor.target_spacing == (1.5, 0.75, 0.75) and processor.target_shape == (240, 480, 480)
    assert processor.output_shape == (1, 240, 480, 480) and processor.axcodes is None
    assert MedVLVolumeProcessor.from_dict(processor.to_dict()) == processor
    # an explicit shape is kept
    assert MedVLVolumeProcessor(mode="ct_clip", target_shape=[32, 256, 256]).target_shape == (32, 256, 256)


@pytest.mark.parametrize(
    "mode, expected_d",
    [
        # clip first: the slab values -2000, -500, 1000 become -1000, -500, 1000, then interpolation at
        # x = 0.25, 0.75, 1.25, 1.75 (output slices 1..4 after the centre crop 6 -> 4 drops slices 0 and 5)
        ("ct_clip", [-1000 + 0.25 * 500, -1000 + 0.75 * 500, -500 + 0.25 * 1500, -500 + 0.75 * 1500]),
        # CT-CLIP's training loader resamples first: -2000 + 0.25 * 1500 = -1625 -> clipped to -1000
        ("ct_clip_train", [-1000, -2000 + 0.75 * 1500, -500 + 0.25 * 1500, -500 + 0.75 * 1500]),
    ],
)
def test_clip_resample_scale_and_crop_pad_by_hand(tmp_path, mode, expected_d):
    array = np.zeros((4, 6, 3), np.int16)  # NIfTI (i, j, k); constant in-plane, three slices
    array[..., 0], array[..., 1], array[..., 2] = -2000, -500, 1000
    volume = _nifti(tmp_path, array, (1.5, 1.5, 3.0))  # resampled to (D, H, W) = (6, 8, 12)
    out = MedVLVolumeProcessor(mode=mode, target_shape=(4, 10, 10))(volume)["volume_values"].numpy()
    assert out.shape == (1, 1, 4, 10, 10) and out.dtype == np.float32
    expected = np.full((4, 10, 10), -1.0, np.float32)  # H: 8 -> 10 pads one row before and after
    expected[:, 1:9, :] = (np.asarray(expected_d, np.float64) / 1000).astype(np.float32)[:, None, None]
    np.testing.assert_allclose(out[0, 0], expected, rtol=0, atol=1e-7)


def test_axis_layout_is_the_stored_array_order(tmp_path):
    i, j = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    array = np.stack([100 * i + 10 * j, 100 * i + 10 * j + 1], axis=-1).astype(np.int16)  # (i, j, k) = (4, 6, 2)
    volume = _nifti(tmp_path, array, (0.75, 0.75, 1.5))  # already at CT-CLIP's spacing: no resampling
    out = MedVLVolumeProcessor(mode="ct_clip", target_shape=(2, 4, 6))(volume)["volume_values"].numpy()[0, 0]
    # (D, H, W) = (k, i, j): out[d, h, w] = (100 h + 10 w + d) / 1000
    d, h, w = np.meshgrid(np.arange(2), np.arange(4), np.arange(6), indexing="ij")
    np.testing.assert_allclose(out, ((100 * h + 10 * w + d) / 1000).astype(np.float32), rtol=0, atol=1e-7)


def test_new_size_is_truncated_and_odd_padding_goes_at_the_end(tmp_path):
    volume = _nifti(tmp_path, np.full((5, 5, 2), 500, np.int16), (1.0, 1.0, 1.5))
    # in-plane: int(5 * 1.0 / 0.75) = int(6.67) = 6 voxels; 9 - 6 = 3 pad voxels: 1 before, 2 after
    out = MedVLVolumeProcessor(mode="ct_clip", target_shape=(2, 9, 9))(volume)["volume_values"].numpy()[0, 0]
    expected = np.full((2, 9, 9), -1.0, np.float32)
    expected[:, 1:7, 1:7] = 0.5
    np.testing.assert_array_equal(out, expected)


def test_bare_arrays_are_dhw_at_1mm():
    # (D, H, W) = (3, 2, 2) at 1 mm -> D int(3 / 1.5) = 2, H and W int(2 / 0.75) = 2
    out = MedVLVolumeProcessor(mode="ct_clip", target_shape=(2, 2, 2))(np.full((3, 2, 2), 2500.0, np.float32))
    np.testing.assert_array_equal(out["volume_values"].numpy(), np.ones((1, 1, 2, 2, 2), np.float32))


def test_ct_clip_has_no_int16_hu_stage():
    with pytest.raises(ValueError, match="no separate HU stage"):
        MedVLVolumeProcessor(mode="ct_clip").spatial(np.zeros((4, 4, 4), np.float32))
