"""medvl.serve.media: URL decoding, format sniffing, size limits and media-root confinement (in process)."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medvl.imaging.image2d import load_image
from medvl.imaging.volume3d import load_volume
from medvl.serve.media import MediaDecoder, MediaLimits
from medvl.serve.schema import APIError, MediaRef

CT_SERIES = Path(pydicom.__file__).resolve().parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


def ref(kind: str, url: str, **kw) -> MediaRef:
    return MediaRef(kind=kind, url=url, param="messages[0].content[0].x.url", **kw)


def data_url(data: bytes, mime: str = "application/octet-stream") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def code_of(fn) -> tuple[int, str]:
    with pytest.raises(APIError) as info:
        fn()
    return info.value.status, info.value.code


def test_file_urls_without_media_root_are_refused(tmp_path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    dec = MediaDecoder([])
    assert code_of(lambda: dec.image(ref("image", f"file://{tmp_path}/a.png"))) == (403, "media_path_forbidden")


def test_decoded_media_equal_the_cli_readers(tmp_path) -> None:
    png = tmp_path / "a.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(png)  # 16-bit grey
    dec = MediaDecoder([tmp_path])
    got = dec.image(ref("image", data_url(png.read_bytes(), "image/png")))
    assert np.array_equal(np.asarray(got), np.asarray(load_image(png)))
    assert np.array_equal(np.asarray(dec.image(ref("image", "file://a.png"))), np.asarray(load_image(png)))
    # a window on a 16-bit image goes to load_image
    windowed = dec.image(ref("image", "file://a.png", window=[30000, 20000]))
    assert np.array_equal(np.asarray(windowed), np.asarray(load_image(png, window=(30000, 20000))))
    # .npy and .npz volumes, a zipped DICOM series
    arr = np.random.default_rng(0).normal(size=(6, 8, 10)).astype(np.float32)
    np.save(tmp_path / "v.npy", arr)
    vol = dec.volume(ref("volume", data_url((tmp_path / "v.npy").read_bytes())))
    assert np.array_equal(vol.array, load_volume(tmp_path / "v.npy").array)
    buf = io.BytesIO()
    np.savez(buf, volume=arr, spacing=np.array([2.0, 1.0, 1.0]))
    vol = dec.volume(ref("volume", data_url(buf.getvalue())))
    assert vol.spacing == (2.0, 1.0, 1.0)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        for f in sorted(CT_SERIES.iterdir()):
            z.write(f, f"../../evil/{f.name}")  # member names never become paths
    vol = dec.volume(ref("volume", data_url(zbuf.getvalue(), "application/zip")))
    expected = load_volume(CT_SERIES)
    assert np.array_equal(vol.array, expected.array) and np.allclose(vol.affine, expected.affine)
    assert not (tmp_path.parent / "evil").exists()


def test_limits_are_checked_from_headers(tmp_path) -> None:
    dec = MediaDecoder([tmp_path], MediaLimits(max_image_pixels=100, max_volume_voxels=1000, max_media=2))
    buf = io.BytesIO()
    Image.new("L", (11, 10)).save(buf, format="PNG")
    assert code_of(lambda: dec.image(ref("image", data_url(buf.getvalue())))) == (400, "image_too_large")
    np.save(tmp_path / "big.npy", np.zeros((10, 10, 11), np.int16))
    assert code_of(lambda: dec.volume(ref("volume", "file://big.npy"))) == (400, "volume_too_large")
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 11), np.uint8), np.eye(4)), str(tmp_path / "big.nii"))
    assert code_of(lambda: dec.volume(ref("volume", "file://big.nii"))) == (400, "volume_too_large")
    assert code_of(lambda: dec.volume(ref("volume", data_url((tmp_path / "big.nii").read_bytes())))) == (
        400,
        "volume_too_large",
    )
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        for f in sorted(CT_SERIES.iterdir()):  # 5 x 16 x 16 = 1280 voxels
            z.write(f, f.name)
    assert code_of(lambda: dec.volume(ref("volume", data_url(zbuf.getvalue())))) == (400, "volume_too_large")
    three = [ref("image", data_url(buf.getvalue()))] * 3
    assert code_of(lambda: dec.decode(three)) == (400, "too_many_media")


def test_confinement(tmp_path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "x.png")
    (root / "inner").mkdir()
    (root / "inner" / "ok.png").symlink_to(root / "inner" / "ok_target.png")
    Image.new("RGB", (8, 8)).save(root / "inner" / "ok_target.png")
    (root / "out.png").symlink_to(outside / "x.png")
    (root / "outdir").symlink_to(outside)
    dec = MediaDecoder([root])
    assert dec.image(ref("image", "file://inner/ok.png")).size == (8, 8)  # a link inside the root is fine
    for url in (
        "file://out.png",
        "file://outdir/x.png",
        f"file://{outside}/x.png",
        "file://../outside/x.png",
        "file:///etc/hostname",
        "file://inner/%2E%2E/%2E%2E/outside/x.png",
    ):
        assert code_of(lambda: dec.image(ref("image", url))) == (403, "media_path_forbidden"), url
    # a DICOM folder whose files link out of the root is refused as a whole
    series = root / "series"
    series.mkdir()
    (series / "a.dcm").symlink_to(outside / "x.png")
    assert code_of(lambda: dec.volume(ref("volume", "file://series"))) == (403, "media_path_forbidden")


def test_bad_urls(tmp_path) -> None:
    dec = MediaDecoder([tmp_path])
    assert code_of(lambda: dec.image(ref("image", "http://127.0.0.1/x.png"))) == (400, "remote_url_refused")
    assert code_of(lambda: dec.image(ref("image", "data:image/png,rawbytes"))) == (400, "invalid_url")
    assert code_of(lambda: dec.image(ref("image", "data:image/png;base64,!!!"))) == (400, "invalid_base64")
    assert code_of(lambda: dec.image(ref("image", "ftp://x"))) == (400, "remote_url_refused")
    assert code_of(lambda: dec.image(ref("image", "/abs/path.png"))) == (400, "invalid_url")
    assert code_of(lambda: dec.volume(ref("volume", data_url(b"PK\x03\x04broken zip")))) == (400, "invalid_volume")
    assert code_of(lambda: dec.image(ref("image", "file://a.png", window="sunset"))) == (400, "invalid_window")
