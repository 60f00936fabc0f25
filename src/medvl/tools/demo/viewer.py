"""CT viewer rendering: axial, coronal and sagittal planes in radiological orientation, HU windows.

The volume is first reoriented to the axcodes the volume processor uses (``"SPL"``, see
docs/ARCHITECTURE.md "Volume orientation"): array (D, H, W) with D inferior -> superior, H anterior ->
posterior and W patient's right -> patient's left. The three planes are then drawn the way
radiologists read them:

- axial: looking from the feet, anterior at the top, the patient's left on the image's RIGHT;
- coronal: looking at the patient's front, superior at the top, the patient's left on the image's RIGHT;
- sagittal: superior at the top, anterior on the image's LEFT.

Each plane is resampled to its physical aspect ratio (voxel spacing), windowed with
:func:`medvl.models.windows.apply_window_uint8`, and labelled with its side letters (R/L, A/P, S/I).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medvl.imaging.volume3d import Volume
from medvl.models.windows import HU_WINDOWS, apply_window_uint8

PLANES = ("axial", "coronal", "sagittal")
VIEW_AXCODES = "SPL"
# Side letters of each plane: (left edge, right edge, top edge, bottom edge) of the displayed image.
PLANE_LABELS: dict[str, tuple[str, str, str, str]] = {
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}
LABEL_COLOR = (255, 210, 0)  # orientation letters: a yellow no grey level can produce
# Displayed planes are scaled so that their longer side has about this many pixels.
DISPLAY_SIZE = 320


@dataclass
class OrientedVolume:
    """A volume in viewer orientation.

    Args:
        array: float32 HU, (D, H, W) = (inferior -> superior, anterior -> posterior, right -> left).
        spacing: mm per voxel along (D, H, W).
        source: where it came from.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    source: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        d, h, w = (int(s) for s in self.array.shape)
        return d, h, w

    def num_slices(self, plane: str) -> int:
        """How many slices the slider of ``plane`` offers.

        Args:
            plane: "axial", "coronal" or "sagittal".
        """
        return self.shape[_plane_axis(plane)]


@dataclass
class PlaneView:
    """One rendered plane.

    Args:
        image: RGB image (window applied, resampled to physical aspect, side letters drawn).
        labels: side letter -> (x, y) pixel centre where it is drawn.
    """

    image: Image.Image
    labels: dict[str, tuple[int, int]]


def _plane_axis(plane: str) -> int:
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; valid choices: {', '.join(PLANES)}")
    return PLANES.index(plane)


def orient_for_view(volume: Volume) -> OrientedVolume:
    """Reorient a volume to the viewer's (and the volume processor's) ``"SPL"`` axes with its affine.

    Args:
        volume: a :class:`~medvl.imaging.volume3d.Volume` (HU array + voxel -> RAS affine).
    """
    import nibabel.orientations as nio

    affine = np.asarray(volume.affine, dtype=np.float64)
    transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(VIEW_AXCODES))
    array = nio.apply_orientation(np.asarray(volume.array, dtype=np.float32), transform)
    spacing = [0.0, 0.0, 0.0]
    for axis, (new_axis, _flip) in enumerate(transform):
        spacing[int(new_axis)] = volume.spacing[axis]
    return OrientedVolume(np.ascontiguousarray(array), (spacing[0], spacing[1], spacing[2]), volume.source)


def plane_slice(volume: OrientedVolume, plane: str, index: int) -> tuple[np.ndarray, tuple[float, float]]:
    """The 2D HU array of one plane as displayed (rows top -> bottom, columns left -> right).

    Args:
        volume: an oriented volume.
        plane: "axial", "coronal" or "sagittal".
        index: slice index along the plane's normal (axial: from inferior, coronal: from anterior,
            sagittal: from the patient's right); clipped to the valid range.

    Returns:
        (array, (row spacing mm, column spacing mm)).
    """
    axis = _plane_axis(plane)
    index = int(np.clip(index, 0, volume.shape[axis] - 1))
    sd, sh, sw = volume.spacing
    a = volume.array
    if plane == "axial":  # rows = H (anterior at the top), columns = W (patient's right on the left)
        return a[index], (sh, sw)
    if plane == "coronal":  # rows = D reversed (superior at the top), columns = W
        return a[::-1, index, :], (sd, sw)
    return a[::-1, :, index], (sd, sh)  # sagittal: rows = D reversed, columns = H (anterior on the left)


def render_plane(
    volume: OrientedVolume,
    plane: str,
    index: int,
    window: str | Sequence[float],
    *,
    size: int = DISPLAY_SIZE,
    labels: bool = True,
) -> PlaneView:
    """Render one plane: window -> 8-bit grey, physical aspect, side letters.

    Args:
        volume: an oriented volume.
        plane: "axial", "coronal" or "sagittal".
        index: slice index (see :func:`plane_slice`).
        window: HU window preset name, ``"custom:C,W"`` or (center, width).
        size: pixels of the longer displayed side.
        labels: draw the side letters.
    """
    hu, (row_mm, col_mm) = plane_slice(volume, plane, index)
    grey = apply_window_uint8(hu, window)
    height_mm, width_mm = hu.shape[0] * row_mm, hu.shape[1] * col_mm
    scale = size / max(height_mm, width_mm)
    out_size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    image = Image.fromarray(grey, mode="L").resize(out_size, Image.Resampling.BILINEAR).convert("RGB")
    positions: dict[str, tuple[int, int]] = {}
    if labels:
        positions = draw_side_labels(image, PLANE_LABELS[plane])
    return PlaneView(image, positions)


def draw_side_labels(image: Image.Image, letters: tuple[str, str, str, str]) -> dict[str, tuple[int, int]]:
    """Draw (left, right, top, bottom) side letters at the middle of each edge, in place.

    Args:
        image: RGB image.
        letters: the letters of the left, right, top and bottom edges.

    Returns:
        letter -> (x, y) centre of where it was drawn.
    """
    w, h = image.size
    font_px = max(12, max(w, h) // 12)
    font = ImageFont.load_default(size=font_px)
    draw = ImageDraw.Draw(image)
    margin = font_px // 2 + 3
    centres = {
        letters[0]: (margin, h // 2),
        letters[1]: (w - margin, h // 2),
        letters[2]: (w // 2, margin),
        letters[3]: (w // 2, h - margin),
    }
    for letter, (x, y) in centres.items():
        draw.text((x, y), letter, fill=LABEL_COLOR, font=font, anchor="mm", stroke_width=1, stroke_fill=(0, 0, 0))
    return centres


def montage(slices: np.ndarray, *, columns: int | None = None, size: int = 96) -> Image.Image:
    """Tile 2D slices (N, H, W) into one grey image, each scaled to the tensor's own min..max.

    Used to show what the model receives (the processor's ``volume_values``), so the scaling is the
    tensor's range rather than an HU window: the processor's output is no longer in HU.

    Args:
        slices: (N, H, W) floats.
        columns: tiles per row (default: about square).
        size: pixels of a tile's longer side.
    """
    slices = np.asarray(slices, dtype=np.float32)
    if slices.ndim != 3 or slices.shape[0] == 0:
        raise ValueError(f"montage needs (N, H, W) slices, got shape {slices.shape}")
    low, high = float(slices.min()), float(slices.max())
    grey = (
        np.zeros(slices.shape, dtype=np.uint8)
        if high <= low
        else np.round((slices - low) / (high - low) * 255.0).astype(np.uint8)
    )
    n, h, w = grey.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    scale = size / max(h, w)
    tile = (max(1, round(w * scale)), max(1, round(h * scale)))
    gap = 2
    sheet = Image.new("L", (columns * (tile[0] + gap) - gap, rows * (tile[1] + gap) - gap), color=40)
    for i in range(n):
        r, c = divmod(i, columns)
        sheet.paste(
            Image.fromarray(grey[i]).resize(tile, Image.Resampling.NEAREST), (c * (tile[0] + gap), r * (tile[1] + gap))
        )
    return sheet


WINDOW_CHOICES = (*HU_WINDOWS, "custom")

__all__ = [
    "PLANES",
    "PLANE_LABELS",
    "LABEL_COLOR",
    "WINDOW_CHOICES",
    "OrientedVolume",
    "PlaneView",
    "orient_for_view",
    "plane_slice",
    "render_plane",
    "draw_side_labels",
    "montage",
]
