"""Tests for medvl.imaging.volume3d (load_volume) on real DICOM series, real NIfTI and synthetic files."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest

from medvl.errors import MedVLDataError
from medvl.imaging import Volume, load_volume
from medvl.models.volume_processing_medvl import MedVLVolumeProcessor

DICOMDIR_TESTS = Path(pydicom.__file__).resolve().parent / "data" / "test_files" / "dicomdirtests"
CT_SERIES = DICOMDIR_TESTS / "98892001" / "CT5N"  # 5 axial 16x16 CT slices, 2.5 mm apart
CT_IRREGULAR = DICOMDIR_TESTS / "77654033" / "CT2"  # 4 slices at -99.48, 103.02, 104.27, 105.52 mm
MR_MIXED = DICOMDIR_TESTS / "98892003" / "MR2"  # 7 files from 3 series (localisers)
MR_SMALL = Path(pydicom.data.get_testdata_file("MR_small.dcm"))  # one 64x64 MR slice, 0.8 mm thick
DATA_STORE = Path(pydicom.__file__).resolve().parent.parent / "data_store" / "data"  # the pydicom-data package
ANATOMICAL = Path(nib.__file__).resolve().parent / "tests" / "data" / "anatomical.nii"


def copy_series(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in sorted(src.iterdir()):
        shutil.copy(f, dst / f.name)
    return dst


# ---------------------------------------------------------------- DICOM series


def test_ct_series_matches_nibabel_geometry_and_pixels():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel warns that its DICOM readers are experimental
        from nibabel.nicom import dicomwrappers

    volume = load_volume(CT_SERIES)
    assert volume.shape == (16, 16, 5)
    assert np.allclose(volume.spacing, (0.488281, 0.488281, 2.5))
    assert "".join(nib.aff2axcodes(volume.affine)) == "LPS"  # i: row dir +x(LPS) = patient left, k: superior
    # Independent reference: nibabel's DICOM wrapper of each slice ((row, column) voxel order, LPS world).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrappers = [dicomwrappers.wrapper_from_file(str(f)) for f in CT_SERIES.iterdir()]
    to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    by_position = sorted(wrappers, key=lambda w: float(w.dcm_data.ImagePositionPatient[2]))
    for k, wrapper in enumerate(by_position):
        data = wrapper.get_data()  # scaled (HU), [row, column]
        assert np.allclose(volume.array[:, :, k], data.T)
        for r, c in [(0, 0), (3, 11), (15, 2)]:
            ours = volume.affine @ [c, r, k, 1]
            theirs = to_ras @ wrapper.affine @ [r, c, 0, 1]
            assert np.allclose(ours, theirs, atol=1e-4)


def test_ct_series_through_the_processor_is_spl():
    # CT5N: i = column (LPS +x, patient's left), j = row (LPS +y, posterior), k sorted towards superior,
    # so the SPL layout (D superior, H posterior, W left) is the plain transpose (k, j, i).
    volume = load_volume(CT_SERIES)
    processor = MedVLVolumeProcessor(crop_foreground=False, target_shape=None, intensity="none")
    hu, affine = processor.spatial(volume)
    assert np.array_equal(hu, volume.array.transpose(2, 1, 0))
    assert "".join(nib.aff2axcodes(affine)) == "SPL"
    values = MedVLVolumeProcessor(target_spacing=(2.5, 1.0, 1.0), target_shape=(4, 8, 8), window="abdomen")(volume)
    assert tuple(values["volume_values"].shape) == (1, 1, 4, 8, 8)


def test_ct_series_values_are_hu():
    volume = load_volume(CT_SERIES)
    ds = pydicom.dcmread(next(CT_SERIES.iterdir()))
    assert float(ds.RescaleIntercept) != 0 or float(ds.RescaleSlope) != 1 or volume.array.min() < 0
    assert volume.array.dtype == np.float32
    assert -1100 < volume.array.min() < volume.array.max() < 3100


def mr_series(
    tmp_path: Path, n: int = 4, gap: float = 0.8, shuffle: bool = True, uids: list[str] | None = None
) -> Path:
    """An MR series made from pydicom's MR_small slice: n copies moved along the slice normal.

    Pixel (0, 0) of slice k holds 1000 + k, so the loader's sort order can be checked.
    """
    folder = tmp_path / "mr"
    folder.mkdir()
    base = pydicom.dcmread(MR_SMALL)
    normal = np.cross(
        [float(v) for v in base.ImageOrientationPatient[:3]], [float(v) for v in base.ImageOrientationPatient[3:]]
    )
    origin = np.array([float(v) for v in base.ImagePositionPatient])
    names = [f"IM{(7 * k) % n if shuffle else k:03d}" for k in range(n)]
    for k in range(n):
        ds = pydicom.dcmread(MR_SMALL)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + k * gap * normal]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        if uids is not None:
            ds.SeriesInstanceUID = uids[k]
        pixels = ds.pixel_array.copy()
        pixels[0, 0] = 1000 + k
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / names[k])
    return folder


def test_mr_series_sorted_along_normal_with_spacing(tmp_path):
    volume = load_volume(mr_series(tmp_path))
    assert volume.shape == (64, 64, 4)
    assert np.allclose(volume.spacing, (0.3125, 0.3125, 0.8), atol=1e-4)
    assert [int(volume.array[0, 0, k]) for k in range(4)] == [1000, 1001, 1002, 1003]


def test_mixed_series_is_refused(tmp_path):
    with pytest.raises(MedVLDataError, match=r"mixes 3 DICOM series"):
        load_volume(MR_MIXED, record="mr-1")
    uids = ["1.2.3.4", "1.2.3.4", "1.2.3.5", "1.2.3.4"]
    with pytest.raises(MedVLDataError, match=r"record 'x'.*mixes 2 DICOM series: 1\.2\.3\.4 \(3 file"):
        load_volume(mr_series(tmp_path, uids=uids), record="x")


def test_inconsistent_spacing_is_refused(tmp_path):
    with pytest.raises(MedVLDataError, match=r"inconsistent slice spacing.*1\.250\.\.202\.500 mm"):
        load_volume(CT_IRREGULAR)
    folder = copy_series(CT_SERIES, tmp_path / "gap")
    positions = {f: float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in folder.iterdir()}
    middle = sorted(positions, key=positions.get)[2]
    middle.unlink()  # a missing slice: gaps 2.5, 5.0, 2.5
    with pytest.raises(MedVLDataError, match=r"inconsistent slice spacing.*2\.500\.\.5\.000"):
        load_volume(folder)


def test_duplicate_slice_positions_are_refused(tmp_path):
    folder = copy_series(CT_SERIES, tmp_path / "dup")
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "copy_of_first")
    with pytest.raises(MedVLDataError, match="share position"):
        load_volume(folder)


def test_corrupt_dicom_in_series_names_the_file(tmp_path):
    folder = copy_series(CT_SERIES, tmp_path / "bad")
    victim = sorted(folder.iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(MedVLDataError, match=victim.name):
        load_volume(folder)


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(MedVLDataError, match="no DICOM files"):
        load_volume(tmp_path)


def test_enhanced_multiframe_ct_file():
    path = DATA_STORE / "eCT_Supplemental.dcm"  # Enhanced CT, 2 frames of 512x512, 10 mm apart
    volume = load_volume(path)
    ds = pydicom.dcmread(path)
    assert volume.shape == (512, 512, 2)
    assert np.allclose(volume.spacing, (0.388672, 0.388672, 10.0))
    frames = ds.PerFrameFunctionalGroupsSequence
    # Rows (-1, 0, 0) x columns (0, 1, 0): the slice normal is -z (LPS), so the frame at z = -149 comes
    # first along it, then z = -159: frames are stored in the opposite order.
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in frames]
    assert z == [-159.0, -149.0]
    for k, frame in enumerate([1, 0]):
        # The frame's pixels with the shared rescale (slope 1, intercept -1024), transposed to (column, row).
        assert np.array_equal(volume.array[:, :, k], ds.pixel_array[frame].T.astype(np.float32) - 1024.0)
        lps = np.array([float(v) for v in frames[frame].PlanePositionSequence[0].ImagePositionPatient])
        assert np.allclose(volume.affine @ [0, 0, k, 1], [-lps[0], -lps[1], lps[2], 1.0], atol=1e-4)


def test_single_slice_file_is_not_a_volume():
    with pytest.raises(MedVLDataError, match="single DICOM slice is not a volume"):
        load_volume(pydicom.data.get_testdata_file("CT_small.dcm"))


# ---------------------------------------------------------------- NIfTI


def test_anatomical_nii_matches_nibabel():
    volume = load_volume(ANATOMICAL)
    img = nib.load(str(ANATOMICAL))
    assert np.array_equal(volume.array, img.get_fdata(dtype=np.float32))
    assert np.allclose(volume.affine, img.affine)
    assert volume.spacing == (2.0, 2.0, 2.0)
    values = MedVLVolumeProcessor(target_shape=(8, 16, 16), crop_foreground=False, intensity="minmax")(volume)
    assert tuple(values["volume_values"].shape) == (1, 1, 8, 16, 16)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.mark.parametrize(
    "affine",
    [
        np.array([[0.8, 0, 0, -20], [0, 0.8, 0, -30], [0, 0, 2.5, -40], [0, 0, 0, 1]]),  # RAS
        np.array([[-0.8, 0, 0, 20], [0, 0.8, 0, -30], [0, 0, 2.5, -40], [0, 0, 0, 1]]),  # LAS (radiological)
        np.array([[0, 0, -1.5, 10], [0, -1.0, 0, 12], [2.0, 0, 0, -8], [0, 0, 0, 1]]),  # IPL: permuted + flipped
    ],
    ids=["RAS", "LAS", "IPL"],
)
def test_synthetic_nifti_marker_on_patient_left_lands_at_large_w(tmp_path, affine):
    shape = (24, 20, 16)
    array = np.full(shape, -1000.0, dtype=np.float32)
    # The body: a soft-tissue box in the middle, so the foreground crop keeps the geometry meaningful.
    array[4:20, 4:16, 3:13] = 40.0
    # The marker: the body voxel with the smallest RAS x, i.e. the furthest towards the patient's LEFT
    # (RAS: +x = patient's right), in the body's middle along y and z.
    body = np.argwhere(array == 40.0)
    world = body @ affine[:3, :3].T + affine[:3, 3]
    centre = world.mean(axis=0)
    on_left = world[:, 0] == world[:, 0].min()
    middle = body[on_left][np.argmin(np.abs(world[on_left][:, 1:] - centre[1:]).sum(axis=1))]
    array[tuple(middle)] = 1000.0
    path = write_nifti(tmp_path / "ct.nii.gz", array, affine)

    volume = load_volume(path)
    assert np.array_equal(volume.array, array) and np.allclose(volume.affine, affine)
    processor = MedVLVolumeProcessor(
        target_spacing=(2.0, 1.0, 1.0), foreground_hu=-500, target_shape=(8, 16, 16), window="bone", antialias=False
    )
    values = processor(volume)["volume_values"][0, 0].numpy()
    d, h, w = np.unravel_index(np.argmax(values), values.shape)
    assert w >= values.shape[2] - 2  # patient's left edge of the body -> right side of the image (large W)
    assert 2 <= h <= values.shape[1] - 3 and 1 <= d <= values.shape[0] - 2
    # Control: the neurological convention (W towards the patient's right) puts it at small W.
    mirrored = MedVLVolumeProcessor(**{**processor.to_dict(), "axcodes": "SPR"})(volume)["volume_values"][0, 0]
    assert np.unravel_index(int(mirrored.argmax()), mirrored.shape)[2] <= 1


def test_nifti_with_nan_or_inf_is_refused(tmp_path):
    for bad, name in [(np.nan, "nan.nii"), (np.inf, "inf.nii.gz")]:
        array = np.zeros((4, 4, 4), dtype=np.float32)
        array[1, 1, 1] = bad
        path = write_nifti(tmp_path / name, array, np.eye(4))
        with pytest.raises(MedVLDataError, match=rf"record 'v9'.*{name.replace('.', r'.')}.*NaN or infinite"):
            load_volume(path, record="v9")


def test_4d_nifti_is_refused_but_singleton_4th_axis_is_dropped(tmp_path):
    ok = load_volume(write_nifti(tmp_path / "a.nii", np.zeros((3, 4, 5, 1), np.float32), np.eye(4)))
    assert ok.shape == (3, 4, 5)
    with pytest.raises(MedVLDataError, match="one 3D volume"):
        load_volume(write_nifti(tmp_path / "b.nii", np.zeros((3, 4, 5, 2), np.float32), np.eye(4)))


def test_truncated_nifti(tmp_path):
    path = write_nifti(tmp_path / "c.nii.gz", np.zeros((8, 8, 8), np.float32), np.eye(4))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(MedVLDataError, match=r"c\.nii\.gz.*unreadable NIfTI"):
        load_volume(path)


# ---------------------------------------------------------------- numpy, misc


def test_npy_is_spl_oriented_1mm(tmp_path):
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    np.save(tmp_path / "v.npy", array)
    volume = load_volume(tmp_path / "v.npy")
    assert volume.array.dtype == np.float32 and np.array_equal(volume.array, array)
    assert "".join(nib.aff2axcodes(volume.affine)) == "SPL" and volume.spacing == (1.0, 1.0, 1.0)
    # Orienting to SPL is then a no-op: the processor sees the array as stored.
    hu, _ = MedVLVolumeProcessor(crop_foreground=False, target_shape=None, intensity="none").spatial(volume)
    assert np.array_equal(hu, array)


def test_npz_with_spacing_or_affine(tmp_path):
    array = np.zeros((2, 3, 4), dtype=np.float32)
    np.savez(tmp_path / "s.npz", volume=array, spacing=np.array([2.5, 0.7, 0.7]))
    assert load_volume(tmp_path / "s.npz").spacing == (2.5, 0.7, 0.7)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    np.savez(tmp_path / "a.npz", image=array, affine=affine)
    assert np.allclose(load_volume(tmp_path / "a.npz").affine, affine)
    np.savez(tmp_path / "k.npz", something=array)
    with pytest.raises(MedVLDataError, match=r"expected the volume under one of"):
        load_volume(tmp_path / "k.npz")


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(MedVLDataError, match=r"record 'r1'.*ct\.nii\.gz.*not found"):
        load_volume(tmp_path / "ct.nii.gz", record="r1")
    (tmp_path / "v.mha").write_bytes(b"x")
    with pytest.raises(MedVLDataError, match=r"unsupported volume format"):
        load_volume(tmp_path / "v.mha")


def test_volume_smaller_than_patch_size_names_the_file(tmp_path):
    np.save(tmp_path / "thin.npy", np.zeros((2, 64, 64), np.float32))
    volume = load_volume(tmp_path / "thin.npy")
    with pytest.raises(ValueError, match=r"thin\.npy.*smaller than the minimum \(4, 16, 16\)"):
        MedVLVolumeProcessor(min_shape=(4, 16, 16))(volume)


def test_volume_dataclass_spacing():
    v = Volume(
        np.zeros((1, 1, 1), np.float32), np.array([[0, 0, -3.0, 0], [0, -2.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    )
    assert v.spacing == (1.0, 2.0, 3.0)


# ---------------------------------------------------------------- release conventions (issue 12)


def test_m3d_unit_volume_is_loaded_and_mapped_without_hu_window(tmp_path):
    """M3D-Data stores (1, D, H, W) float32 already min-max scaled to 0..1."""
    from medvl.models.volume_processing_medvl import MedVLVolumeProcessor

    ramp = np.linspace(0.0, 1.0, 8 * 16 * 16, dtype=np.float32).reshape(1, 8, 16, 16)
    path = tmp_path / "Axial_C__portal_venous_phase.npy"
    np.save(path, ramp)
    vol = load_volume(path, record="m3d-0", intensity="unit")
    assert vol.array.shape == (8, 16, 16) and vol.intensity == "unit"
    np.testing.assert_array_equal(vol.array, ramp[0])
    # The checkpoint's processor is configured for HU (window "wide", foreground crop at -500 HU):
    proc = MedVLVolumeProcessor(target_shape=(8, 16, 16), output_range=(-1.0, 1.0))
    out = proc([vol])["volume_values"].numpy()
    np.testing.assert_allclose(out[0, 0], 2.0 * ramp[0] - 1.0, atol=1e-6)  # 0..1 -> output_range, no window
    # the same array taken as HU is what the issue describes: a flat grey volume
    hu = proc([np.asarray(ramp[0])])["volume_values"].numpy()
    assert float(hu.max() - hu.min()) <= 1.01e-3  # 1 HU of a 2000 HU window, of an output span of 2
    # a processor set to intensity "unit" does the same for bare (1, D, H, W) arrays
    unit = MedVLVolumeProcessor(target_shape=(8, 16, 16), intensity="unit")
    np.testing.assert_allclose(unit([ramp])["volume_values"].numpy()[0, 0], ramp[0], atol=1e-6)


def test_unit_volume_out_of_range_names_the_file(tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, np.full((1, 4, 4, 4), 300.0, np.float32))
    with pytest.raises(MedVLDataError, match=r"bad\.npy.*intensity 'unit'"):
        load_volume(path, record="m3d-1", intensity="unit")
    with pytest.raises(ValueError, match="valid: hu, unit"):
        load_volume(path, intensity="percent")


def test_rescale_and_spacing_from_a_side_file(tmp_path):
    """CT-RATE keeps raw stored values and puts slope/intercept and spacing in its metadata CSV."""
    import nibabel as nib

    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) + 1000
    path = tmp_path / "valid_1_a_1.nii.gz"
    nib.save(nib.Nifti1Image(raw, np.diag([-1.0, -1.0, 1.0, 1.0])), path)
    vol = load_volume(path, rescale=(1.0, -1024.0), spacing=(0.75, 0.75, 1.5))
    np.testing.assert_array_equal(vol.array, raw.astype(np.float32) - 1024.0)
    assert vol.spacing == (0.75, 0.75, 1.5)
    np.testing.assert_allclose(vol.affine[:3, :3], np.diag([-0.75, -0.75, 1.5]))  # directions kept
    with pytest.raises(MedVLDataError, match="spacing must be 3 positive"):
        load_volume(path, spacing=(0.75, 0.0, 1.5))


def test_medmvl_mode_reads_unit_volumes_as_its_hu_window_would():
    """MedM-VL maps -1000..1000 HU to 0..255; a 0..1 volume is the same picture without the HU step."""
    from medvl.imaging.volume3d import Volume
    from medvl.models.volume_processing_medvl import axcodes_affine

    spl = axcodes_affine((1.0, 1.0, 1.0), "SPL")  # already in the output orientation
    rng = np.random.default_rng(0)
    levels = rng.integers(1, 255, size=(4, 8, 8)).astype(np.float64) + 0.5  # away from uint8 truncation edges
    unit = (levels / 255.0).astype(np.float32)
    hu = (levels / 255.0 * 2000.0 - 1000.0).astype(np.float32)
    proc = MedVLVolumeProcessor(mode="medmvl", target_shape=(4, 8, 8))
    from_unit = proc([Volume(array=unit, affine=spl, intensity="unit")])["volume_values"].numpy()
    from_hu = proc([Volume(array=hu, affine=spl)])["volume_values"].numpy()
    np.testing.assert_array_equal(from_unit, from_hu)
    np.testing.assert_allclose(from_unit[0, 0], (np.floor(levels) / 255 - 0.5) / 0.5, atol=1e-6)
