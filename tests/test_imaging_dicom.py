"""Tests for medvl.imaging.dicom: DICOM files written with pydicom with known rescale, LUTs, windows and
geometry, and pydicom-data's LUT files; expected pixels and affines computed by hand from the standard
(PS3.3 C.11: modality LUT, VOI LUT functions; C.7.6.2: patient geometry)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medvl.errors import MedVLDataError
from medvl.imaging import load_volume
from medvl.imaging.dicom import (
    ArchiveTooLargeError,
    frame_attribute,
    frame_view,
    header_pixel_count,
    is_dicom_file,
    modality_values,
    read_dicom,
    read_dicom_image,
    read_dicom_volume,
    unzip_dicom_series,
)

DATA_STORE = Path(pydicom.__file__).resolve().parent.parent / "data_store" / "data"  # the pydicom-data package
CT_SERIES = Path(pydicom.__file__).resolve().parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    sop_class: str = CTImageStorage,
    **attributes: object,
) -> Path:
    """A minimal DICOM file with ``stored`` as its pixel data (int16: signed, uint16: unsigned)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.Modality = "MR" if sop_class == MRImageStorage else "CT"
    ds.set_pixel_data(np.asarray(stored), photometric, bits_stored)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def render(path: Path, window=None) -> np.ndarray:
    return read_dicom_image(read_dicom(path, None), path, window)


# HU -2, -1, 0, 1, 2 stored with intercept -1024
HU_RAMP = np.array([[1022, 1023, 1024, 1025, 1026]], dtype=np.int16)


# ---------------------------------------------------------------- modality LUT


def test_rescale_slope_and_intercept_give_hu(tmp_path):
    stored = np.array([[500, 420, 520], [620, 0, 1000]], dtype=np.int16)
    path = write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000)
    ds = read_dicom(path, None)
    # 2 * v - 1000
    assert modality_values(ds.pixel_array, ds).tolist() == [[0, -160, 40], [240, -1000, 1000]]


def test_half_a_rescale_pair_gets_the_identity_for_the_other(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", HU_RAMP, RescaleIntercept=-1024)  # no RescaleSlope
    ds = read_dicom(path, None)
    assert modality_values(ds.pixel_array, ds).tolist() == [[-2, -1, 0, 1, 2]]


def test_modality_lut_sequence(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]  # 4 entries, first input 0, 16 bits
    item.add_new("LUTData", "US", [0, 100, 200, 300])
    stored = np.array([[0, 1], [2, 3], [5, 0]], dtype=np.uint16)
    path = write_dicom(tmp_path / "mlut.dcm", stored, ModalityLUTSequence=[item])
    ds = read_dicom(path, None)
    # inputs past the table take its last entry (PS3.3 C.11.1.1.1)
    assert modality_values(ds.pixel_array, ds).tolist() == [[0, 100], [200, 300], [300, 0]]


def test_modality_lut_of_a_real_file_is_its_table():
    path = DATA_STORE / "mlut_18.dcm"  # 4096 entries starting at stored value -2048
    ds = pydicom.dcmread(path)
    first = int(ds.ModalityLUTSequence[0].LUTDescriptor[1])
    table = np.asarray(ds.ModalityLUTSequence[0].LUTData)
    pixels = ds.pixel_array
    expected = table[np.clip(pixels.astype(np.int64) - first, 0, len(table) - 1)]
    assert first == -2048 and len(table) == 4096
    assert np.array_equal(modality_values(pixels, ds), expected)


# ---------------------------------------------------------------- VOI (2D)


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        # LINEAR (C.11.2.1.2.1): ((x - (c - 0.5)) / (w - 1) + 0.5), c 0 w 4: x = -1 -> 1/3, 0 -> 2/3
        ("LINEAR", [0, 85, 170, 255, 255]),
        # LINEAR_EXACT (C.11.2.1.3.2): (x - c) / w + 0.5 -> 0, .25, .5, .75, 1
        ("LINEAR_EXACT", [0, 64, 128, 191, 255]),
        # SIGMOID (C.11.2.1.3.1): 1 / (1 + exp(-4 (x - c) / w)) = 1 / (1 + exp(-x)) -> .1192, .2689, .5, .7311, .8808
        ("SIGMOID", [30, 69, 128, 186, 225]),
    ],
)
def test_files_own_window_with_its_voi_lut_function(tmp_path, function, expected):
    path = write_dicom(
        tmp_path / "ct.dcm",
        HU_RAMP,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=0,
        WindowWidth=4,
        VOILUTFunction=function,
    )
    assert render(path).tolist() == [expected]


def test_enhanced_frame_voi_and_rescale_come_from_the_functional_groups(tmp_path):
    shared = Dataset()
    shared.PixelValueTransformationSequence = [Dataset()]
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1
    shared.PixelValueTransformationSequence[0].RescaleIntercept = -1024
    shared.FrameVOILUTSequence = [Dataset()]
    shared.FrameVOILUTSequence[0].WindowCenter = 0
    shared.FrameVOILUTSequence[0].WindowWidth = 4
    frames = np.stack([HU_RAMP, HU_RAMP])
    path = write_dicom(
        tmp_path / "enhanced.dcm",
        frames,
        sop_class=EnhancedCTImageStorage,
        SharedFunctionalGroupsSequence=[shared],
        PerFrameFunctionalGroupsSequence=[Dataset(), Dataset()],
    )
    assert render(path).tolist() == [[0, 85, 170, 255, 255]]  # LINEAR, as above


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    path = write_dicom(
        tmp_path / "cr.dcm",
        HU_RAMP,
        photometric="MONOCHROME1",
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=0,
        WindowWidth=4,
    )
    assert render(path).tolist() == [[255, 170, 85, 0, 0]]


def test_an_explicit_window_replaces_the_files_voi(tmp_path):
    stored = np.array([[500, 420, 520], [620, 0, 1000]], dtype=np.int16)  # HU 0, -160, 40 / 240, -1000, 1000
    path = write_dicom(
        tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=-600, WindowWidth=1500
    )
    # mediastinum 40/400 = -160..240 HU mapped plainly: 0 -> 102, 40 -> 127.5 -> 128
    assert render(path, "mediastinum").tolist() == [[102, 0, 128], [255, 0, 255]]
    assert render(path, (0, 4)).tolist() == [[128, 0, 255], [255, 0, 255]]


def test_without_a_voi_ct_gets_the_wide_window_and_mr_its_own_range(tmp_path):
    stored = np.array([[500, 420, 520], [620, 0, 1000]], dtype=np.int16)
    ct = write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000)
    # -1000..1000 HU: (hu + 1000) / 2000 * 255: 0 -> 127.5 -> 128, -160 -> 107.1, 40 -> 132.6, 240 -> 158.1
    assert render(ct).tolist() == [[128, 107, 133], [158, 0, 255]]
    mr = write_dicom(tmp_path / "mr.dcm", np.array([[10, 20], [30, 50]], dtype=np.uint16), sop_class=MRImageStorage)
    # min..max 10..50: 20 -> 63.75, 30 -> 127.5
    assert render(mr).tolist() == [[0, 64], [128, 255]]


def test_an_invalid_file_window_is_ignored_with_a_warning(tmp_path, caplog):
    path = write_dicom(tmp_path / "ct.dcm", HU_RAMP, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=0)
    with caplog.at_level(logging.WARNING, logger="medvl.imaging.dicom"):
        out = render(path)
    assert "ignoring the file's VOI window" in caplog.text
    assert out.tolist() == [[127, 127, 128, 128, 128]]  # the wide window: (hu + 1000) / 2000 * 255


def test_voi_lut_sequence_is_scaled_by_its_brightest_entry(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.LUTData = np.array([0, 1000, 2000, 4000], "<u2").tobytes()  # OW: decoded with the file's endianness
    path = write_dicom(tmp_path / "vlut.dcm", np.array([[0, 1, 2, 3]], dtype=np.uint16), VOILUTSequence=[item])
    assert render(path).tolist() == [[0, 64, 128, 255]]  # 1000 / 4000 * 255 = 63.75, 2000 -> 127.5


def test_voi_lut_of_a_real_file_is_its_table():
    path = DATA_STORE / "vlut_04.dcm"  # 8-bit data, a 256-entry VOI LUT of 16-bit values
    ds = pydicom.dcmread(path)
    table = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    expected = np.round(table[ds.pixel_array.astype(np.int64)] / table.max() * 255)
    assert np.array_equal(render(path), expected.astype(np.uint8))


# ---------------------------------------------------------------- functional groups


def _macro(sequence: str, **values: object) -> Dataset:
    item, inner = Dataset(), Dataset()
    for keyword, value in values.items():
        setattr(inner, keyword, value)
    setattr(item, sequence, [inner])
    return item


def test_frame_attribute_prefers_the_frame_then_the_shared_group_then_the_top_level():
    ds = Dataset()
    ds.RescaleIntercept = -5
    ds.SharedFunctionalGroupsSequence = [_macro("PixelValueTransformationSequence", RescaleIntercept=-10)]
    ds.PerFrameFunctionalGroupsSequence = [
        _macro("PixelValueTransformationSequence", RescaleIntercept=-20),
        Dataset(),
    ]
    assert [frame_attribute(ds, n, "RescaleIntercept") for n in (0, 1, 7)] == [-20, -10, -10]
    del ds.SharedFunctionalGroupsSequence
    assert frame_attribute(ds, 1, "RescaleIntercept") == -5
    assert frame_attribute(ds, 0, "WindowCenter") is None
    ds.WindowCenter = ""  # an empty (type 2) value counts as absent
    assert frame_attribute(ds, 0, "WindowCenter") is None
    view = frame_view(ds, 0)
    assert (view.RescaleSlope, view.RescaleIntercept) == (1.0, -20)


def test_enhanced_multiframe_volume_per_frame_rescale_and_geometry(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 2000, size=(3, 2, 3)).astype(np.int16)  # 3 frames of 2 rows x 3 columns
    z, slopes, intercepts = [10.0, 0.0, 5.0], [1, 2, 1], [-1000, -1024, 0]
    per_frame = []
    for n in range(3):
        item = _macro("PlanePositionSequence", ImagePositionPatient=[-100.0, -50.0, z[n]])
        item.PixelValueTransformationSequence = [Dataset()]
        item.PixelValueTransformationSequence[0].RescaleSlope = slopes[n]
        item.PixelValueTransformationSequence[0].RescaleIntercept = intercepts[n]
        per_frame.append(item)
    shared = _macro("PixelMeasuresSequence", PixelSpacing=[0.5, 0.8], SliceThickness=5.0)
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    path = write_dicom(
        tmp_path / "enhanced.dcm",
        stored,
        sop_class=EnhancedCTImageStorage,
        SharedFunctionalGroupsSequence=[shared],
        PerFrameFunctionalGroupsSequence=per_frame,
    )
    array, affine = read_dicom_volume(path)
    assert array.shape == (3, 2, 3) and array.dtype == np.float32  # (column, row, slice)
    for k, n in enumerate([1, 2, 0]):  # sorted along the normal +z (LPS): z = 0, 5, 10
        assert np.array_equal(array[:, :, k], (stored[n] * slopes[n] + intercepts[n]).T)
    # i: rows run along +x (LPS) with the column spacing 0.8 -> RAS -x; j: +y with the row spacing 0.5
    # -> RAS -y; k: 5 mm along +z; origin (-100, -50, 0) LPS = (100, 50, 0) RAS
    expected = [[-0.8, 0, 0, 100], [0, -0.5, 0, 50], [0, 0, 5, 0], [0, 0, 0, 1]]
    np.testing.assert_allclose(affine, expected)


def test_multiframe_without_per_frame_groups_is_refused(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", np.zeros((2, 2, 2), np.int16))
    with pytest.raises(MedVLDataError, match=r"cine\.dcm.*2 frames but 0 per-frame functional groups"):
        read_dicom_volume(path, "r1")


# ---------------------------------------------------------------- series


def _sagittal_slice(folder: Path, name: str, x: float, stored: np.ndarray, series: str) -> None:
    write_dicom(
        folder / name,
        stored,
        SeriesInstanceUID=series,
        ImagePositionPatient=[x, -30.0, 60.0],
        ImageOrientationPatient=[0, 1, 0, 0, 0, -1],  # rows posterior, columns inferior
        PixelSpacing=[0.7, 0.9],  # between rows, between columns
        RescaleSlope=1,
        RescaleIntercept=-1024,
    )


def test_sagittal_series_sorted_along_its_normal_with_a_hand_computed_affine(tmp_path):
    series = generate_uid()
    slices = {x: np.full((2, 3), 1000 + int(x), np.int16) for x in (20.0, 22.0, 24.0)}
    for name, x in (("b.dcm", 20.0), ("a.dcm", 24.0), ("c.dcm", 22.0)):
        _sagittal_slice(tmp_path, name, x, slices[x], series)
    (tmp_path / "notes.txt").write_text("skipped")
    array, affine = read_dicom_volume(tmp_path)
    # normal = (0, 1, 0) x (0, 0, -1) = (-1, 0, 0): sorted by -x, so x = 24, 22, 20
    assert [float(array[0, 0, k]) for k in range(3)] == [1000 + 24 - 1024, 1000 + 22 - 1024, 1000 + 20 - 1024]
    assert array.shape == (3, 2, 3)
    # LPS columns: row dir * 0.9, column dir * 0.7, step (-2, 0, 0), origin (24, -30, 60); RAS flips x and y
    expected = [[0, 0, 2, -24], [-0.9, 0, 0, 30], [0, -0.7, 0, 60], [0, 0, 0, 1]]
    np.testing.assert_allclose(affine, expected, atol=1e-12)


def test_series_slice_without_geometry_names_the_file(tmp_path):
    series = generate_uid()
    _sagittal_slice(tmp_path, "a.dcm", 20.0, np.zeros((2, 2), np.int16), series)
    write_dicom(tmp_path / "b.dcm", np.zeros((2, 2), np.int16), SeriesInstanceUID=series)
    with pytest.raises(MedVLDataError, match=r"record 's1'.*b\.dcm lacks ImagePositionPatient"):
        read_dicom_volume(tmp_path, "s1")


def test_is_dicom_file_by_name_or_magic(tmp_path):
    path = write_dicom(tmp_path / "IM0001", np.zeros((2, 2), np.int16))
    assert is_dicom_file(path) and is_dicom_file(tmp_path / "missing.dcm")
    (tmp_path / "x.bin").write_bytes(b"\0" * 200)
    assert not is_dicom_file(tmp_path / "x.bin")


# ---------------------------------------------------------------- zipped series (uploads)


def test_unzip_dicom_series_is_bounded_and_picks_the_series_folder(tmp_path):
    """The shared unzip of the server and the demo: streamed byte budget, member cap, member names that
    never become paths, and the folder with the most files as the series."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(CT_SERIES.iterdir()):
            z.write(f, f"export/CT5N/{f.name}")
        z.writestr("../../escaped.txt", b"x")
        z.writestr("__MACOSX/._junk", b"y")
    data = buf.getvalue()
    series = unzip_dicom_series(data, tmp_path / "out", max_bytes=10 << 20)
    assert len(list(series.iterdir())) == len(list(CT_SERIES.iterdir()))
    np.testing.assert_array_equal(load_volume(series).array, load_volume(CT_SERIES).array)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
    total = sum(f.stat().st_size for f in CT_SERIES.iterdir())
    with pytest.raises(ArchiveTooLargeError, match="unpacks to more than"):
        unzip_dicom_series(data, tmp_path / "small", max_bytes=total // 2)
    with pytest.raises(ArchiveTooLargeError, match="holds 7 files"):
        unzip_dicom_series(data, tmp_path / "few", max_bytes=10 << 20, max_members=3)
    with pytest.raises(MedVLDataError, match="not a readable ZIP"):
        unzip_dicom_series(b"PK\x03\x04 nope", tmp_path / "bad", max_bytes=1 << 20)


def test_header_pixel_count_reads_no_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", np.zeros((4, 3, 5), np.int16))  # 4 frames of 3 x 5
    assert header_pixel_count(path) == 60
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 40)
    assert header_pixel_count(tmp_path / "junk.dcm") is None
