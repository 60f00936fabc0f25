"""Tests for medvl.imaging.image2d (load_image) on real and synthetic files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.pixels import apply_voi_lut

from medvl.errors import MedVLDataError
from medvl.imaging import load_image
from medvl.imaging.dicom import is_dicom_file

DATA_STORE = Path(pydicom.__file__).resolve().parent.parent / "data_store" / "data"  # the pydicom-data package
CHEST_XRAY = DATA_STORE / "RG1_UNCR.dcm"  # 1955 x 1841 computed radiograph, MONOCHROME1
CT_512 = DATA_STORE / "693_UNCR.dcm"  # 512 x 512 CT slice with a 40/100 window
CT_SMALL = Path(pydicom.data.get_testdata_file("CT_small.dcm"))  # 128 x 128 CT, no window in the file


def hu_of(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


# ---------------------------------------------------------------- PIL formats


def test_png_rgb_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    img = load_image(tmp_path / "x.png")
    assert img.mode == "RGB" and img.size == (9, 7)
    assert np.array_equal(np.array(img), rgb)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_grey_8bit_becomes_three_equal_channels(tmp_path, suffix):
    grey = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    Image.fromarray(grey).save(tmp_path / f"g{suffix}")
    out = np.array(load_image(tmp_path / f"g{suffix}"))
    assert out.shape == (6, 10, 3)
    for c in range(3):
        assert np.array_equal(out[..., c], grey)


def test_jpeg_loads_as_rgb(tmp_path):
    Image.fromarray(np.full((16, 8, 3), 200, np.uint8)).save(tmp_path / "x.jpg", quality=95)
    img = load_image(tmp_path / "x.jpg")
    assert img.mode == "RGB" and img.size == (8, 16)
    assert abs(int(np.array(img).mean()) - 200) <= 2


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_fixed_full_range_and_window(tmp_path, suffix):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / f"x{suffix}")
    # Fixed mapping of 0..65535 onto 0..255 (257 = 65535 / 255 -> exactly 1).
    assert np.array_equal(np.array(load_image(tmp_path / f"x{suffix}"))[0, :, 0], [0, 1, 128, 255])
    # A window in raw units: 0..1000 (center 500, width 1000).
    assert np.array_equal(np.array(load_image(tmp_path / f"x{suffix}", window=(500, 1000)))[0, :, 0], [0, 66, 255, 255])
    # Per-image min..max only when asked.
    assert np.array_equal(np.array(load_image(tmp_path / f"x{suffix}", window="minmax"))[0, :, 0], [0, 1, 128, 255])


def test_missing_file_names_record_and_path(tmp_path):
    with pytest.raises(MedVLDataError, match=r"record 'r7'.*nope\.png.*not found"):
        load_image(tmp_path / "nope.png", record="r7")


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MedVLDataError, match=r"cut\.png.*(truncated|corrupt)"):
        load_image(tmp_path / "cut.png", record=3)


def test_garbage_bytes_are_not_an_image(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(MedVLDataError, match=r"junk\.png.*not a readable image"):
        load_image(tmp_path / "junk.png")


def test_zero_width_png(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "zero.png").write_bytes(png)
    with pytest.raises(MedVLDataError, match=r"zero\.png"):
        load_image(tmp_path / "zero.png")


# ---------------------------------------------------------------- DICOM


def test_ct_small_without_file_window_uses_wide_hu_window():
    img = load_image(CT_SMALL)
    assert img.size == (128, 128)
    hu = hu_of(CT_SMALL)
    expected = np.round((np.clip(hu, -1000, 1000) + 1000) / 2000 * 255).astype(np.uint8)
    assert np.array_equal(np.array(img)[..., 0], expected)


def test_named_window_on_ct():
    hu = hu_of(CT_SMALL)
    expected = np.round((np.clip(hu, -1350, 150) + 1350) / 1500 * 255).astype(np.uint8)  # lung -600/1500
    assert np.array_equal(np.array(load_image(CT_SMALL, window="lung"))[..., 1], expected)
    custom = np.round((np.clip(hu, -160, 240) + 160) / 400 * 255).astype(np.uint8)  # 40/400
    assert np.array_equal(np.array(load_image(CT_SMALL, window=(40, 400)))[..., 2], custom)


def test_unknown_window_lists_the_presets():
    with pytest.raises(ValueError, match="lung, mediastinum, abdomen, bone, wide"):
        load_image(CT_SMALL, window="brain")


def test_512_ct_uses_the_files_voi_window():
    ds = pydicom.dcmread(CT_512)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 100.0)
    img = load_image(CT_512)
    assert img.size == (512, 512)
    # pydicom's own VOI implementation as the reference: output range of a signed 14-bit rescaled image.
    reference = apply_voi_lut(hu_of(CT_512), ds)
    y_min = -(2**13) * 1 - 1024
    y_max = (2**13 - 1) * 1 - 1024
    expected = np.round((reference - y_min) / (y_max - y_min) * 255)
    assert np.abs(np.array(img)[..., 0].astype(int) - expected).max() <= 1


def test_enhanced_ct_uses_functional_group_rescale_and_window():
    path = DATA_STORE / "eCT_Supplemental.dcm"  # Enhanced CT: rescale and window only in the shared groups
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert "WindowCenter" not in ds and "RescaleIntercept" not in ds
    assert float(shared.PixelValueTransformationSequence[0].RescaleIntercept) == -1024.0
    assert (float(shared.FrameVOILUTSequence[0].WindowCenter), float(shared.FrameVOILUTSequence[0].WindowWidth)) == (
        49.0,
        102.0,
    )
    hu = ds.pixel_array[0].astype(np.float64) - 1024.0  # first frame only
    # DICOM LINEAR window function (PS3.3 C.11.2.1.2) with center 49, width 102.
    expected = np.round(np.clip((hu - 48.5) / 101.0 + 0.5, 0, 1) * 255)
    assert np.array_equal(np.array(load_image(path))[..., 0], expected.astype(np.uint8))


def test_chest_radiograph_monochrome1_is_inverted():
    ds = pydicom.dcmread(CHEST_XRAY)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and (ds.Rows, ds.Columns) == (1955, 1841)
    img = load_image(CHEST_XRAY)
    assert img.size == (1841, 1955) and img.mode == "RGB"
    reference = apply_voi_lut(ds.pixel_array, ds)  # window 15000/30000 onto 0..2^15-1
    expected = 255 - np.round(reference / (2**15 - 1) * 255)
    assert np.abs(np.array(img)[..., 0].astype(int) - expected).max() <= 1
    # Inversion: the highest stored values (MONOCHROME1: displayed white) must come out darkest.
    raw = ds.pixel_array
    out = np.array(img)[..., 0]
    assert out[raw >= np.percentile(raw, 99)].mean() < out[raw <= np.percentile(raw, 1)].mean()


def test_corrupt_dicom(tmp_path):
    data = CT_SMALL.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:2000])
    with pytest.raises(MedVLDataError, match=r"cut\.dcm"):
        load_image(tmp_path / "cut.dcm", record="c1")
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(MedVLDataError, match=r"junk\.dcm.*DICOM"):
        load_image(tmp_path / "junk.dcm")


def test_dicom_with_zero_pixels(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    ds.Rows = 0
    ds.PixelData = b""
    ds.save_as(tmp_path / "empty.dcm")
    with pytest.raises(MedVLDataError, match=r"empty\.dcm.*0 pixels"):
        load_image(tmp_path / "empty.dcm")


def test_dicom_sniffed_without_suffix(tmp_path):
    target = tmp_path / "IM0001"
    target.write_bytes(CT_SMALL.read_bytes())
    assert is_dicom_file(target)
    assert np.array_equal(np.array(load_image(target)), np.array(load_image(CT_SMALL)))


def _png_with_sbit(path, values: np.ndarray, sbit: int | None) -> None:
    """A 16-bit grey PNG, with an sBIT chunk (declared significant bits) when given."""
    Image.fromarray(values).save(path)
    if sbit is None:
        return
    data = path.read_bytes()
    chunk = (
        struct.pack(">I", 1)
        + b"sBIT"
        + bytes([sbit])
        + struct.pack(">I", zlib.crc32(b"sBIT" + bytes([sbit])) & 0xFFFFFFFF)
    )
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR header, IHDR data, CRC
    path.write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])


def test_12bit_data_in_a_16bit_png_uses_its_real_bit_depth(tmp_path):
    """CR/DX exports: 12-bit values in a 16-bit PNG must not come out nearly black."""
    values = np.array([[0, 1365, 2730, 4095]], dtype=np.uint16)
    _png_with_sbit(tmp_path / "cr.png", values, None)
    # no sBIT: the brightest pixel (4095) needs 12 bits -> 0..4095 onto 0..255
    assert np.array(load_image(tmp_path / "cr.png"))[0, :, 0].tolist() == [0, 85, 170, 255]
    # declared 12 significant bits win over the data: a dark 12-bit image stays dark
    dark = np.array([[0, 1000, 2047]], dtype=np.uint16)
    _png_with_sbit(tmp_path / "dark.png", dark, 12)
    assert np.array(load_image(tmp_path / "dark.png"))[0, :, 0].tolist() == [
        0,
        round(1000 / 4095 * 255),
        round(2047 / 4095 * 255),
    ]
    # 10-bit data, no sBIT
    _png_with_sbit(tmp_path / "ten.png", np.array([[0, 1023]], dtype=np.uint16), None)
    assert np.array(load_image(tmp_path / "ten.png"))[0, :, 0].tolist() == [0, 255]


def test_window_per_record_and_per_data_set(tmp_path):
    import json

    from medvl.data.records import load_records
    from medvl.data.registry import load_registry_records
    from medvl.imaging.image2d import record_window

    values = np.array([[0, 500, 1000, 4000]], dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    with pytest.raises(MedVLDataError, match="f.tif.*window"):
        load_image(tmp_path / "f.tif")  # float: no fixed scale; the message says how to set a window
    rows = [
        {
            "id": "a",
            "messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}],
            "images": ["f.tif"],
            "window": [500, 1000],
        },
        {
            "id": "b",
            "messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}],
            "images": ["f.tif"],
        },
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "reg.yaml").write_text("datasets:\n  d:\n    path: d.jsonl\n    window: minmax\n")
    recs = {r.id: r for r in load_registry_records(tmp_path / "reg.yaml")}
    assert record_window(recs["a"].meta) == (500, 1000) and record_window(recs["b"].meta) == "minmax"
    a = np.array(load_image(recs["a"].images[0], window=record_window(recs["a"].meta)))[0, :, 0]
    assert a.tolist() == [0, 128, 255, 255]
    with pytest.raises(MedVLDataError, match="record 'x'.*invalid window 'nope'"):
        record_window({"window": "nope"}, record="x")
    assert "window" not in load_records(tmp_path / "d.jsonl")[1].meta
