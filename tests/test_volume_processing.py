"""Tests for models/volume_processing_medvl.py (MedVLVolumeProcessor)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medvl.models.volume_processing_medvl import MedVLVolumeProcessor, axcodes_affine
from tests.conftest import fixture_path

FIXTURE = fixture_path("medmvl", "medmvl-ct-siglip-attnpool")


def geometry_only(**kw) -> MedVLVolumeProcessor:
    """A processor that only orients (no crop, no resize), so voxel positions can be traced."""
    settings = dict(crop_foreground=False, target_shape=None, intensity="none")
    settings.update(kw)
    return MedVLVolumeProcessor(**settings)


# ---------------------------------------------------------------- MedM-VL reproduction


def test_medmvl_mode_reproduces_medmvl_pixels_bit_for_bit():
    volume = np.load(FIXTURE / "inputs" / "volume.npy")
    expected = np.load(FIXTURE / "expected" / "pixel_values_channel0.npy")  # (1, 1, 32, 64, 64)
    processor = MedVLVolumeProcessor(mode="medmvl", target_shape=(32, 64, 64))
    values = processor([volume])["volume_values"]
    assert values.dtype == torch.float32
    assert tuple(values.shape) == (1, 3, 32, 64, 64)
    out = values.numpy()
    assert np.array_equal(out[:, :1], expected)
    assert np.array_equal(out[:, 1], out[:, 0]) and np.array_equal(out[:, 2], out[:, 0])


# ---------------------------------------------------------------- orientation and laterality

# Voxel -> RAS affines in different layouts: RAS, LAS (flipped x), an axis permutation (PIR-like) and
# anisotropic spacing with an offset origin.
AFFINES = {
    "RAS": np.diag([1.0, 1.0, 1.0, 1.0]),
    "LAS": np.array([[-1.5, 0, 0, 20], [0, 1.0, 0, -10], [0, 0, 2.0, 5], [0, 0, 0, 1]]),
    "PIR": np.array([[0, 0, 1.2, -7], [-1.0, 0, 0, 9], [0, -2.5, 0, 30], [0, 0, 0, 1]]),
    "LPI": np.array([[-0.8, 0, 0, 0], [0, -0.8, 0, 0], [0, 0, -3.0, 0], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_marker_on_patient_left_lands_at_large_w(name):
    affine = AFFINES[name]
    assert "".join(nib.aff2axcodes(affine)) == name
    shape = (21, 18, 15)
    # Put the marker in the patient's left-anterior-superior corner: RAS x small (patient's left is
    # -x in RAS), y large (anterior), z large (superior), chosen among the voxel centres.
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    score = -world[:, 0] / np.ptp(world[:, 0]) + world[:, 1] / np.ptp(world[:, 1]) + world[:, 2] / np.ptp(world[:, 2])
    marker = tuple(ijk[np.argmax(score)])
    marker_world = world[np.argmax(score)]
    array = np.full(shape, -1000.0, dtype=np.float32)
    array[marker] = 500.0

    hu, out_affine = geometry_only().spatial({"array": array, "affine": affine})
    assert "".join(nib.aff2axcodes(out_affine)) == "SPL"
    d, h, w = np.unravel_index(np.argmax(hu), hu.shape)
    # The processed layout is (D inferior->superior, H anterior->posterior, W patient right->left).
    assert d == hu.shape[0] - 1 and h == 0 and w == hu.shape[2] - 1
    # And the output affine still maps the marker voxel to the same world point.
    assert np.allclose(out_affine[:3, :3] @ [d, h, w] + out_affine[:3, 3], marker_world)


def test_bare_array_is_taken_as_already_oriented():
    array = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    hu, affine = geometry_only().spatial(array)
    assert np.array_equal(hu, array)
    assert np.allclose(affine, axcodes_affine((1, 1, 1), "SPL"))


def test_axcodes_none_keeps_layout():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    hu, _ = geometry_only(axcodes=None).spatial({"array": array, "affine": np.eye(4)})
    assert np.array_equal(hu, array)


# ---------------------------------------------------------------- spacing and anti-aliasing


def test_resampling_to_target_spacing_changes_shape_and_affine():
    # MONAI keeps the extent spanned by the voxel centres: (n - 1) * old / new + 1 voxels.
    array = np.zeros((21, 17, 13), dtype=np.float32)
    affine = axcodes_affine((1.0, 1.0, 1.0), "SPL")
    hu, out_affine = geometry_only(target_spacing=(2.0, 2.0, 3.0)).spatial({"array": array, "affine": affine})
    assert hu.shape == (11, 9, 5)
    assert np.allclose(np.sqrt((out_affine[:3, :3] ** 2).sum(0)), [2.0, 2.0, 3.0])


def test_antialiasing_suppresses_aliasing_when_downsampling():
    # Stripes along W at the Nyquist frequency (local mean 0 HU): naive 2x downsampling hits only the
    # +1000 stripes (aliasing: a uniform +1000 volume); the Gaussian pre-filter (sigma 0.5 voxel)
    # attenuates the stripes by exp(-2 pi^2 0.5^2 0.5^2) ~ 0.29 first.
    array = np.zeros((8, 8, 32), dtype=np.float32)
    array[..., ::2] = 1000.0
    array[..., 1::2] = -1000.0
    affine = axcodes_affine((1.0, 1.0, 1.0), "SPL")
    target = (1.0, 1.0, 2.0)
    plain, _ = geometry_only(target_spacing=target, antialias=False).spatial({"array": array, "affine": affine})
    smooth, _ = geometry_only(target_spacing=target, antialias=True).spatial({"array": array, "affine": affine})
    assert plain.shape == smooth.shape == (8, 8, 16)
    assert np.allclose(plain, 1000.0)
    assert np.abs(smooth[..., 2:-2]).mean() < 0.4 * 1000.0


def test_resize_antialiasing_matches_monai_resize_away_from_the_border():
    from monai.transforms import Resize

    array = np.random.default_rng(0).normal(0, 100, size=(24, 40, 40)).astype(np.float32)
    reference = Resize([8, 20, 20], mode="trilinear", anti_aliasing=True)(torch.from_numpy(array)[None])[0].numpy()
    ours = MedVLVolumeProcessor(crop_foreground=False, target_shape=(8, 20, 20), intensity="none")(array)
    ours = ours["volume_values"][0, 0].numpy()
    # Same kernel and sigma; only the edge handling differs (MONAI pads with zeros, we repeat the edge).
    assert np.abs(ours - reference)[2:-2, 3:-3, 3:-3].max() < 1e-2


# ---------------------------------------------------------------- crop, shape


def test_foreground_crop_finds_the_body_box():
    array = np.full((10, 12, 14), -1000.0, dtype=np.float32)
    array[2:7, 3:9, 4:13] = 40.0
    hu, _ = geometry_only(crop_foreground=True).spatial(array)
    assert hu.shape == (5, 6, 9)
    assert (hu == 40.0).all()


def test_all_air_volume_is_not_cropped():
    array = np.full((4, 5, 6), -1000.0, dtype=np.float32)
    hu, _ = geometry_only(crop_foreground=True).spatial(array)
    assert hu.shape == (4, 5, 6)


def test_resize_to_target_shape():
    array = np.zeros((7, 9, 11), dtype=np.float32)
    processor = MedVLVolumeProcessor(crop_foreground=False, target_shape=(4, 6, 8))
    out = processor([array, array])["volume_values"]
    assert tuple(out.shape) == (2, 1, 4, 6, 8)
    assert processor.output_shape == (1, 4, 6, 8)


def test_pad_crop_keeps_voxels_and_pads_with_air():
    array = np.full((4, 6, 10), 40.0, dtype=np.float32)
    processor = MedVLVolumeProcessor(
        crop_foreground=False, target_shape=(8, 6, 6), shape_mode="pad_crop", intensity="none"
    )
    hu = processor([array])["volume_values"][0, 0].numpy()
    assert hu.shape == (8, 6, 6)
    assert (hu[2:6] == 40.0).all()  # centred in D
    assert (hu[:2] == -1024.0).all() and (hu[6:] == -1024.0).all()


def test_fit_keeps_aspect_ratio():
    array = np.full((10, 20, 40), 40.0, dtype=np.float32)
    processor = MedVLVolumeProcessor(
        crop_foreground=False, target_shape=(16, 16, 16), shape_mode="fit", intensity="none"
    )
    hu = processor([array])["volume_values"][0, 0].numpy()
    inside = hu > -500
    extent = [int(inside.any(axis=tuple(a for a in range(3) if a != k)).sum()) for k in range(3)]
    assert extent == [4, 8, 16]


# ---------------------------------------------------------------- intensity and channels


def test_window_mapping_is_fixed_and_linear():
    hu = np.array([-2000.0, -1350.0, -600.0, 150.0, 3000.0], dtype=np.float32).reshape(1, 1, 5)
    lung01 = MedVLVolumeProcessor(window="lung").intensity_map(hu)
    assert np.allclose(lung01[0, 0, 0], [0.0, 0.0, 0.5, 1.0, 1.0])
    lung11 = MedVLVolumeProcessor(window="lung", output_range=(-1, 1)).intensity_map(hu)
    assert np.allclose(lung11[0, 0, 0], [-1.0, -1.0, 0.0, 1.0, 1.0])
    custom = MedVLVolumeProcessor(window=(0, 400)).intensity_map(hu)  # -200..200
    assert np.allclose(custom[0, 0, 0], [0, 0, 0, 350 / 400, 1])


def test_minmax_only_when_asked():
    hu = np.array([100.0, 200.0, 300.0], dtype=np.float32).reshape(1, 1, 3)
    assert np.allclose(MedVLVolumeProcessor(intensity="minmax").intensity_map(hu)[0, 0, 0], [0, 0.5, 1])
    # The default window (wide, -1000..1000) maps HU to a fixed scale.
    assert np.allclose(MedVLVolumeProcessor().intensity_map(hu)[0, 0, 0], [0.55, 0.6, 0.65])


def test_three_windows_as_rgb_with_normalisation():
    hu = np.array([40.0], dtype=np.float32).reshape(1, 1, 1)
    processor = MedVLVolumeProcessor(
        channels=3,
        channel_windows=["lung", "mediastinum", "bone"],
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    out = processor.intensity_map(hu)[:, 0, 0, 0]
    expected = np.array([(40 + 1350) / 1500, (40 + 160) / 400, (40 + 500) / 1800])
    assert np.allclose(out, (expected - 0.5) / 0.5, atol=1e-6)


def test_three_identical_channels_without_channel_windows():
    array = np.random.default_rng(1).uniform(-1000, 1000, size=(6, 6, 6)).astype(np.float32)
    out = MedVLVolumeProcessor(channels=3, crop_foreground=False, target_shape=(4, 4, 4))(array)["volume_values"]
    assert tuple(out.shape) == (1, 3, 4, 4, 4)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_unknown_window_setting_lists_the_presets():
    with pytest.raises(ValueError, match="lung, mediastinum, abdomen, bone, wide"):
        MedVLVolumeProcessor(window="lungs")
    with pytest.raises(ValueError, match="width must be > 0"):
        MedVLVolumeProcessor(channels=3, channel_windows=["lung", (40, 0), "bone"])


# ---------------------------------------------------------------- settings round trip


def test_to_dict_from_dict_and_save_round_trip(tmp_path):
    processor = MedVLVolumeProcessor(
        target_spacing=(2, 1.5, 1.5),
        target_shape=(16, 32, 32),
        window=(40, 400),
        channels=3,
        channel_windows=["lung", (40, 400), "bone"],
        image_mean=0.5,
        image_std=0.5,
        min_shape=(4, 16, 16),
    )
    d = processor.to_dict()
    json.dumps(d)
    assert MedVLVolumeProcessor.from_dict(d).to_dict() == d
    processor.save_pretrained(tmp_path)
    again = MedVLVolumeProcessor.from_pretrained(tmp_path)
    assert again == processor
    array = np.random.default_rng(2).uniform(-1000, 500, size=(8, 20, 20)).astype(np.float32)
    assert torch.equal(processor(array)["volume_values"], again(array)["volume_values"])


def test_invalid_settings_list_valid_choices():
    with pytest.raises(ValueError, match="target_spacing"):
        MedVLVolumeProcessor(target_spacings=(1, 1, 1))  # typo
    with pytest.raises(ValueError, match="standard, medmvl"):
        MedVLVolumeProcessor(mode="m3d")
    with pytest.raises(ValueError, match="resize, pad_crop, fit"):
        MedVLVolumeProcessor(shape_mode="stretch")
    with pytest.raises(ValueError, match="L/R, A/P, S/I"):
        MedVLVolumeProcessor(axcodes="SPX")
    with pytest.raises(ValueError, match="one per channel"):
        MedVLVolumeProcessor(channels=3, image_mean=[0.5, 0.5], image_std=[0.5, 0.5])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_voxels_name_the_file(bad):
    array = np.zeros((4, 4, 4), dtype=np.float32)
    array[1, 2, 3] = bad
    with pytest.raises(ValueError, match=r"ct_007\.nii\.gz.*NaN or infinite"):
        MedVLVolumeProcessor()({"array": array, "affine": np.eye(4), "source": "ct_007.nii.gz"})


def test_volume_smaller_than_minimum_names_the_file():
    processor = MedVLVolumeProcessor(min_shape=(4, 16, 16))
    with pytest.raises(ValueError, match=r"tiny\.npy.*smaller than the minimum \(4, 16, 16\)"):
        processor({"array": np.zeros((2, 16, 16), np.float32), "affine": None, "source": "tiny.npy"})


def test_not_3d_is_an_error():
    with pytest.raises(ValueError, match="must be 3D"):
        MedVLVolumeProcessor()(np.zeros((2, 4, 4, 4), np.float32))


@pytest.mark.parametrize("name", ["volume_processing_medvl.py", "windows.py"])
def test_module_is_remote_code_safe(name):
    """Copied into checkpoints: only numpy/scipy/torch/monai/transformers, stdlib, and siblings relatively."""
    models = Path(__file__).resolve().parents[1] / "src" / "medvl" / "models"
    allowed = {
        "numpy",
        "scipy",
        "torch",
        "monai",
        "transformers",
        "__future__",
        "json",
        "logging",
        "math",
        "os",
        "collections",
        "typing",
        "inspect",
    }
    for node in ast.walk(ast.parse((models / name).read_text())):
        if isinstance(node, ast.Import):
            roots = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            # a sibling in models/: transformers copies it into the checkpoint with this file
            assert node.level == 1 and (models / f"{node.module}.py").is_file(), node.module
            continue
        elif isinstance(node, ast.ImportFrom):
            roots = {node.module.split(".")[0]}
        else:
            continue
        assert roots <= allowed, roots
