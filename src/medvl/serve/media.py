"""Decode the media of a request: ``data:`` URLs and ``file://`` paths under the media roots.

Images (PNG, JPEG, BMP, TIFF incl. 16-bit, DICOM) become 8-bit RGB ``PIL.Image`` objects and volumes
(NIfTI ``.nii``/``.nii.gz``, a zipped DICOM series, ``.npy``/``.npz``, a multi-frame DICOM file, or a
DICOM folder under a media root) become :class:`medvl.imaging.volume3d.Volume` objects, through the
same readers as ``medvl infer`` (``load_image`` / ``load_volume``), so the server's tensors equal
the CLI's. Uploaded bytes are written to a private temporary folder (the readers take paths; nibabel
and pydicom sniff formats from files) that is removed as soon as the media are decoded.

Safety, checked before anything is decoded:

* no remote fetches: only ``data:`` and ``file://`` URLs;
* ``file://`` only under a ``--media-root``: the path is resolved (symlinks followed) and must stay
  inside a root; ``..`` components are refused outright; a folder's files must resolve inside too;
* image pixels (header size x frames) and volume voxels (header shape) are bounded before decoding,
  so a decompression bomb is refused from its header; a zip is bounded in members and unpacked bytes
  and unpacked flat (member names never become paths).

Every problem is an :class:`~medvl.serve.schema.APIError` (400) naming the request parameter.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np
from PIL import Image

from medvl.errors import MedVLDataError
from medvl.imaging.dicom import ArchiveTooLargeError, header_pixel_count, is_dicom_file, unzip_dicom_series
from medvl.imaging.image2d import load_image, record_window
from medvl.imaging.volume3d import Volume, load_volume
from medvl.serve.schema import APIError, MediaRef, bad_request

logger = logging.getLogger(__name__)

# Zipped DICOM series: bounds on what an upload may unpack to (a zip bomb stops at these).
MAX_ZIP_MEMBERS = 4096


@dataclass
class MediaLimits:
    """Bounds on one request's media.

    Args:
        max_image_pixels: width x height (x frames) of one image.
        max_volume_voxels: voxels of one volume (as stored, before resampling).
        max_media: images + volumes per request.
    """

    max_image_pixels: int = 64_000_000
    max_volume_voxels: int = 256 * 1024 * 1024
    max_media: int = 8


class MediaDecoder:
    """Turns :class:`~medvl.serve.schema.MediaRef` parts into loaded images and volumes.

    Args:
        media_roots: folders ``file://`` URLs may read from (none: ``file://`` is refused).
        limits: size bounds.
    """

    def __init__(self, media_roots: Sequence[str | Path] | None = None, limits: MediaLimits | None = None):
        self.roots = [Path(r).resolve(strict=True) for r in (media_roots or [])]
        self.limits = limits or MediaLimits()

    # ------------------------------------------------------------------ public
    def decode(self, refs: list[MediaRef]) -> tuple[list[Image.Image], list[Volume]]:
        """Load every media part (images and volumes, each in request order).

        Args:
            refs: the request's media parts.

        Raises:
            APIError: 400 naming the part and what is wrong.
        """
        if len(refs) > self.limits.max_media:
            raise bad_request(
                f"{len(refs)} media parts in one request; this server accepts at most {self.limits.max_media}",
                "messages",
                "too_many_media",
            )
        images, volumes = [], []
        for ref in refs:
            if ref.kind == "image":
                images.append(self.image(ref))
            else:
                volumes.append(self.volume(ref))
        return images, volumes

    def image(self, ref: MediaRef) -> Image.Image:
        """Decode one ``image_url`` part.

        Args:
            ref: the part (URL, optional window).
        """
        try:  # the same validation as a record's "window"
            window = record_window({"window": ref.window})
        except MedVLDataError as err:
            param = ref.param.rsplit(".", 1)[0] + ".window"
            raise bad_request(f"{param}: {err}", param, "invalid_window") from None
        with self._materialise(ref, "image") as path:
            self._check_image_size(path, ref)
            try:
                return load_image(path, window=window)
            except MedVLDataError as err:
                raise bad_request(f"{ref.param}: {_clean(err, path)}", ref.param, "invalid_image") from None

    def volume(self, ref: MediaRef) -> Volume:
        """Decode one ``volume_url`` part.

        Args:
            ref: the part (URL).
        """
        if ref.window is not None:
            raise bad_request(
                f"{ref.param.rsplit('.', 1)[0]}.window: a volume's HU window is part of the model's saved volume "
                "processor (what it was trained on) and cannot be changed per request",
                ref.param.rsplit(".", 1)[0] + ".window",
                "unsupported_parameter",
            )
        with self._materialise(ref, "volume") as path:
            self._check_volume_size(path, ref)
            try:
                volume = load_volume(path)
            except MedVLDataError as err:
                raise bad_request(f"{ref.param}: {_clean(err, path)}", ref.param, "invalid_volume") from None
        volume.source = "upload" if ref.url.startswith("data:") else volume.source
        return volume

    # ------------------------------------------------------------------ URL -> local path
    @contextmanager
    def _materialise(self, ref: MediaRef, kind: str) -> Iterator[Path]:
        """A local path for the part: the checked file under a media root, or the upload in a temp folder."""
        url = ref.url.strip()
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            data, mime = _decode_data_url(url, ref.param)
            tmp = Path(tempfile.mkdtemp(prefix="medvl-serve-"))  # mode 0700: private to this process's user
            try:
                yield self._write_upload(data, mime, kind, tmp, ref)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        elif scheme == "file":
            yield self._local_path(url, ref)
        elif scheme in ("http", "https", "ftp", "s3", "gs"):
            raise bad_request(
                f"{ref.param}: remote URLs are not fetched by medvl serve; send the {kind} as a data: "
                "URL (base64) or a file:// path under a --media-root",
                ref.param,
                "remote_url_refused",
            )
        else:
            raise bad_request(
                f"{ref.param}: unsupported URL scheme {scheme or '(none)'!r}; use data: or file://",
                ref.param,
                "invalid_url",
            )

    def _local_path(self, url: str, ref: MediaRef) -> Path:
        if not self.roots:
            raise APIError(
                403,
                f"{ref.param}: file:// URLs are refused: the server was started without --media-root",
                param=ref.param,
                type="permission_error",
                code="media_path_forbidden",
            )
        raw = unquote(url[len("file:") :])
        if raw.startswith("//localhost/"):
            raw = raw[len("//localhost") :]
        elif raw.startswith("//"):  # file:///abs/path -> /abs/path; file://cases/a.png -> cases/a.png (root-relative)
            raw = raw[2:]
        if not raw or "\x00" in raw:
            raise bad_request(f"{ref.param}: empty or invalid file path", ref.param, "invalid_url")
        if ".." in Path(raw).parts:
            raise APIError(
                403,
                f"{ref.param}: '..' is not allowed in file paths",
                param=ref.param,
                type="permission_error",
                code="media_path_forbidden",
            )
        candidates = [Path(raw)] if raw.startswith("/") else [root / raw for root in self.roots]
        for candidate in candidates:
            resolved = candidate.resolve()  # follows symlinks: a link out of the root is caught below
            root = self._root_of(resolved)
            if root is None:
                continue
            if not resolved.exists():
                raise bad_request(f"{ref.param}: file not found under the media root", ref.param, "file_not_found")
            if resolved.is_dir():
                for child in resolved.iterdir():
                    if self._root_of(child.resolve()) is None:
                        raise APIError(
                            403,
                            f"{ref.param}: the folder holds a link that leaves the media root",
                            param=ref.param,
                            type="permission_error",
                            code="media_path_forbidden",
                        )
            return resolved
        raise APIError(
            403,
            f"{ref.param}: the path is outside the server's media roots",
            param=ref.param,
            type="permission_error",
            code="media_path_forbidden",
        )

    def _root_of(self, path: Path) -> Path | None:
        for root in self.roots:
            if path == root or path.is_relative_to(root):
                return root
        return None

    def _write_upload(self, data: bytes, mime: str, kind: str, tmp: Path, ref: MediaRef) -> Path:
        suffix = _sniff_suffix(data, mime, kind)
        if suffix is None:
            valid = (
                "PNG, JPEG, BMP, TIFF or DICOM"
                if kind == "image"
                else "NIfTI (.nii, .nii.gz), a zipped DICOM series, .npy, .npz or a multi-frame DICOM"
            )
            raise bad_request(
                f"{ref.param}: the uploaded bytes are not a recognised {kind} format; expected {valid}",
                ref.param,
                f"invalid_{kind}",
            )
        if suffix == ".zip":
            return self._unzip_series(data, tmp / "series", ref)
        path = tmp / f"upload{suffix}"
        path.write_bytes(data)
        return path

    def _unzip_series(self, data: bytes, folder: Path, ref: MediaRef) -> Path:
        """A zipped DICOM series, unpacked within the member and byte limits; returns the series folder."""
        budget = self.limits.max_volume_voxels * 4 + 64 * 1024 * 1024  # pixels of 32 bits plus headers
        try:
            return unzip_dicom_series(data, folder, max_bytes=budget, max_members=MAX_ZIP_MEMBERS, name="zip")
        except ArchiveTooLargeError as err:
            raise bad_request(f"{ref.param}: {err}", ref.param, "volume_too_large") from None
        except (MedVLDataError, OSError) as err:
            raise bad_request(f"{ref.param}: corrupt zip archive: {err}", ref.param, "invalid_volume") from None

    # ------------------------------------------------------------------ size checks from headers
    def _check_image_size(self, path: Path, ref: MediaRef) -> None:
        limit = self.limits.max_image_pixels
        if is_dicom_file(path):
            pixels = header_pixel_count(path)
        else:
            try:
                with Image.open(path) as img:  # reads the header only
                    pixels = img.size[0] * img.size[1]
            except Image.DecompressionBombError:
                pixels = limit + 1
            except Exception:  # unreadable: load_image reports it with its own message
                return
        if pixels is not None and pixels > limit:
            raise bad_request(
                f"{ref.param}: the image has {pixels} pixels, over this server's limit of {limit}",
                ref.param,
                "image_too_large",
            )

    def _check_volume_size(self, path: Path, ref: MediaRef) -> None:
        limit = self.limits.max_volume_voxels
        voxels = _volume_voxels_from_headers(path)
        if voxels is not None and voxels > limit:
            raise bad_request(
                f"{ref.param}: the volume has {voxels} voxels, over this server's limit of {limit}",
                ref.param,
                "volume_too_large",
            )


def _decode_data_url(url: str, param: str) -> tuple[bytes, str]:
    """``data:[mime][;base64],payload`` -> (bytes, mime)."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise bad_request(f"{param}: malformed data: URL (no ',' before the payload)", param, "invalid_url")
    meta = header[len("data:") :].split(";")
    mime = meta[0].strip().lower()
    if "base64" not in [m.strip().lower() for m in meta[1:]]:
        raise bad_request(f"{param}: data: URLs must be base64 encoded (data:<mime>;base64,...)", param, "invalid_url")
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise bad_request(f"{param}: invalid base64 payload: {err}", param, "invalid_base64") from None
    if not data:
        raise bad_request(f"{param}: the data: URL is empty", param, "invalid_url")
    return data, mime


def _sniff_suffix(data: bytes, mime: str, kind: str) -> str | None:
    """The file suffix the readers need, from the bytes' magic numbers (the MIME type only breaks ties)."""
    head = data[:1024]
    is_dicom = len(data) > 132 and data[128:132] == b"DICM"
    if kind == "image":
        if is_dicom or mime in ("application/dicom", "image/dicom"):
            return ".dcm"
        for magic, suffix in (
            (b"\x89PNG\r\n\x1a\n", ".png"),
            (b"\xff\xd8\xff", ".jpg"),
            (b"BM", ".bmp"),
            (b"II*\x00", ".tif"),
            (b"MM\x00*", ".tif"),
        ):
            if head.startswith(magic):
                return suffix
        return None
    if head.startswith(b"\x1f\x8b"):
        return ".nii.gz"
    if head.startswith(b"\x93NUMPY"):
        return ".npy"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
        except zipfile.BadZipFile:
            return ".zip"  # reported as a corrupt zip when unpacked
        return ".npz" if names and all(n.endswith(".npy") for n in names) else ".zip"
    if len(data) >= 348 and 348 in (int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")):
        return ".nii"
    if len(data) >= 540 and 540 in (int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")):
        return ".nii"
    if is_dicom:
        return ".dcm"
    return None


def _volume_voxels_from_headers(path: Path) -> int | None:
    """Stored voxels of a volume from its header(s) only; None when unknown (the loader then reports)."""
    name = path.name.lower()
    try:
        if path.is_dir():
            total = 0
            for child in path.iterdir():
                if child.is_file():
                    total += header_pixel_count(child) or 0
            return total
        if name.endswith(".nii") or name.endswith(".nii.gz"):
            import nibabel as nib
            from nibabel.spatialimages import SpatialHeader

            header = nib.load(str(path)).header
            if not isinstance(header, SpatialHeader):  # not an image header: the loader reports it
                return None
            return int(np.prod(header.get_data_shape(), dtype=np.int64))
        if name.endswith(".npy"):
            return int(np.prod(np.load(path, mmap_mode="r", allow_pickle=False).shape, dtype=np.int64))
        if name.endswith(".npz"):
            with zipfile.ZipFile(path) as archive:
                total = 0
                for member in archive.namelist():
                    with archive.open(member) as fh:
                        version = np.lib.format.read_magic(fh)
                        read_header = (
                            np.lib.format.read_array_header_1_0
                            if version == (1, 0)
                            else np.lib.format.read_array_header_2_0
                        )
                        shape, _, _ = read_header(fh)
                    total = max(total, int(np.prod(shape, dtype=np.int64)))
            return total
        if is_dicom_file(path):
            return header_pixel_count(path)
    except Exception:  # a corrupt header: the loader gives the precise error
        return None
    return None


def _clean(err: MedVLDataError, path: Path) -> str:
    """The loader's message without the server-side temp path (the client never sent it)."""
    text = str(err)
    for p in (str(path), str(path.parent)):
        text = text.replace(f"file {p!r}: ", "").replace(p, "<upload>")
    return text


__all__ = ["MediaDecoder", "MediaLimits"]
