"""Uploaded files of the web demo -> loaded media (``PIL.Image`` or ``Volume``) with the medvl readers.

Accepted: PNG/JPEG/BMP/TIFF and single-frame DICOM as 2D images; NIfTI (``.nii``, ``.nii.gz``),
``.npy``/``.npz``, multi-frame DICOM and a ZIP of a DICOM series as volumes. A ZIP is extracted into a
private temporary folder (member names checked, sizes capped) and read with
:func:`medvl.imaging.volume3d.load_volume`, then the folder is removed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from medvl.errors import MedVLDataError
from medvl.imaging.dicom import is_dicom_file, number_of_frames, read_dicom, unzip_dicom_series
from medvl.imaging.image2d import load_image
from medvl.imaging.volume3d import Volume, load_volume

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy", ".npz", ".zip")
UPLOAD_SUFFIXES = (*IMAGE_SUFFIXES, ".dcm", ".dicom", *VOLUME_SUFFIXES)
# A zipped DICOM series is unpacked on disk: refuse archives that would unpack to more than this.
MAX_UNZIPPED_BYTES = 4 * 1024**3


@dataclass
class Upload:
    """One uploaded file, loaded.

    Args:
        kind: "image" or "volume".
        name: the file name the user uploaded (shown in the page; never logged with its content).
        data: a ``PIL.Image`` (RGB, 8-bit) or a :class:`~medvl.imaging.volume3d.Volume`.
    """

    kind: str
    name: str
    data: Image.Image | Volume


def _is_multiframe_dicom(path: Path) -> bool:
    # through imaging.dicom: a corrupt upload becomes a MedVLDataError naming the file, not pydicom's raw error
    return number_of_frames(read_dicom(path, record=None, stop_before_pixels=True)) > 1


def load_upload(path: str | Path, name: str | None = None) -> Upload:
    """Load one uploaded file as a 2D image or a volume, by its name and content.

    Args:
        path: the file on disk (Gradio's upload copy).
        name: the user's file name (defaults to ``path``'s name).

    Raises:
        MedVLDataError: unsupported type or unreadable file, naming the file.
    """
    path = Path(path)
    name = name or path.name
    try:
        return _load(path, name)
    except MedVLDataError as err:
        # Name the user's file, not the server's upload copy (its temporary path means nothing to them).
        raise MedVLDataError(str(err).replace(f"file {str(path)!r}: ", "").replace(str(path), name), path=name) from err


def _load(path: Path, name: str) -> Upload:
    lower = name.lower()
    if lower.endswith(".zip"):
        return Upload("volume", name, _load_zipped_series(path, name))
    if lower.endswith(VOLUME_SUFFIXES):
        return Upload("volume", name, load_volume(path))
    if is_dicom_file(path):
        if _is_multiframe_dicom(path):
            return Upload("volume", name, load_volume(path))
        return Upload("image", name, load_image(path))
    if lower.endswith(IMAGE_SUFFIXES):
        return Upload("image", name, load_image(path))
    raise MedVLDataError(f"unsupported file type; upload one of {', '.join(UPLOAD_SUFFIXES)}", path=name)


def _load_zipped_series(path: Path, name: str) -> Volume:
    """A DICOM series from a ZIP: unpacked (bounded, streamed) into a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="medvl-demo-zip-") as tmp:
        series = unzip_dicom_series(path, tmp, max_bytes=MAX_UNZIPPED_BYTES, name=name)
        volume = load_volume(series)
    volume.source = name
    return volume


__all__ = ["Upload", "load_upload", "UPLOAD_SUFFIXES"]
