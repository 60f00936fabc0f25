"""Uploads of the web demo: real PNG, DICOM, NIfTI and a zipped real DICOM series through the medvl readers."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image

from medvl.errors import MedVLDataError
from medvl.imaging.volume3d import Volume, load_volume
from medvl.tools.demo.media import load_upload

CT_SERIES = Path(pydicom.__file__).resolve().parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
CT_SMALL = Path(pydicom.data.get_testdata_file("CT_small.dcm"))  # one 128x128 CT slice


def _zip_series(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    """The 5-slice CT series wrapped in a folder, as people zip a series exported from PACS."""
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(CT_SERIES.iterdir()):
            zf.write(f, f"export/CT5N/{f.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def test_zipped_dicom_series_equals_the_folder(tmp_path: Path) -> None:
    upload = load_upload(_zip_series(tmp_path / "series.zip"), "series.zip")
    reference = load_volume(CT_SERIES)
    assert upload.kind == "volume" and upload.name == "series.zip" and isinstance(upload.data, Volume)
    np.testing.assert_array_equal(upload.data.array, reference.array)
    np.testing.assert_allclose(upload.data.affine, reference.affine)


def test_zip_members_never_escape_the_temporary_folder(tmp_path: Path) -> None:
    """A member named ../../x (zip slip) is skipped, not written next to the upload."""
    evil = {"../../escaped.txt": b"x", "__MACOSX/._junk": b"y"}
    upload = load_upload(_zip_series(tmp_path / "series.zip", evil), "series.zip")
    assert upload.data.shape == (16, 16, 5)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_images_and_volumes_by_type(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)).save(png)  # 16-bit grey
    up = load_upload(png)
    assert up.kind == "image" and up.data.mode == "RGB" and up.data.size == (64, 48)
    dcm = load_upload(CT_SMALL)
    assert dcm.kind == "image" and dcm.data.size == (128, 128)
    nii = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), str(nii))
    vol = load_upload(nii)
    assert vol.kind == "volume" and vol.data.shape == (4, 5, 6)


def test_bad_uploads_name_the_file_and_the_problem(tmp_path: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(MedVLDataError, match=r"notes.txt.*unsupported file type; upload one of .png"):
        load_upload(txt)
    bad_zip = tmp_path / "broken.zip"
    bad_zip.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(MedVLDataError, match="broken.zip.*not a readable ZIP"):
        load_upload(bad_zip)
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(MedVLDataError, match="holds no files"):
        load_upload(empty)


def test_a_corrupt_volume_names_the_uploaded_file_not_the_server_copy(tmp_path: Path) -> None:
    server_copy = tmp_path / "gradio" / "3f7e" / "scan.nii.gz"
    server_copy.parent.mkdir(parents=True)
    server_copy.write_bytes(b"not a nifti at all")
    with pytest.raises(MedVLDataError) as err:
        load_upload(server_copy, "scan.nii.gz")
    assert str(err.value).startswith("file 'scan.nii.gz': unreadable NIfTI file")
    assert str(tmp_path) not in str(err.value)


def test_a_corrupt_dicom_upload_names_the_uploaded_file(tmp_path: Path) -> None:
    # a .dcm name with no DICOM inside: pydicom refuses it while the demo checks for multi-frame
    server_copy = tmp_path / "gradio" / "a1b2" / "slice.dcm"
    server_copy.parent.mkdir(parents=True)
    server_copy.write_bytes(b"not a DICOM file, just text")
    with pytest.raises(MedVLDataError) as err:
        load_upload(server_copy, "slice.dcm")
    assert str(err.value).startswith("file 'slice.dcm': ")
    assert "DICOM" in str(err.value) and str(tmp_path) not in str(err.value)
