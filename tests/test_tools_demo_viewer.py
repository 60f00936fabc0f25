"""CT viewer rendering: radiological orientation from the affine, side letters, window arithmetic.

The volumes are built with known affines (RAS+ world: +x is the patient's RIGHT, +y anterior,
+z superior), so where a marker must appear follows from the radiological convention alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from medvl.imaging.volume3d import Volume
from medvl.tools.demo.viewer import LABEL_COLOR, montage, orient_for_view, plane_slice, render_plane

MARKER_HU = 1000.0


def _phantom(storage: str) -> tuple[Volume, tuple[int, int, int]]:
    """A 40 x 30 x 20 air volume (1 x 1 x 2 mm) with one bright cube on the patient's LEFT, anterior, superior.

    ``storage`` "RAS": voxel i grows to the patient's right (nibabel canonical); "LPS": i grows to the
    left and j posterior (how DICOM stores a CT). Returns the volume and the marker voxel (i, j, k).
    """
    shape = (40, 30, 20)
    array = np.full(shape, -1000.0, dtype=np.float32)
    if storage == "RAS":
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        marker = (6, 24, 15)  # small i = far from the right = patient's left; large j = anterior
    else:
        affine = np.diag([-1.0, -1.0, 2.0, 1.0])
        marker = (33, 5, 15)  # large i = patient's left; small j = anterior
    i, j, k = marker
    array[i - 2 : i + 3, j - 2 : j + 3, k - 1 : k + 2] = MARKER_HU
    return Volume(array, affine, f"phantom-{storage}"), marker


def _bright_columns_rows(image) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (x, y) of the marker's bright grey pixels (the yellow letters excluded)."""
    rgb = np.asarray(image).astype(int)
    grey_bright = (rgb[..., 0] > 200) & (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
    ys, xs = np.nonzero(grey_bright)
    assert len(xs) > 0, "the marker is not visible"
    return xs, ys


@pytest.mark.parametrize("storage", ["RAS", "LPS"])
def test_patient_left_is_drawn_on_the_image_right(storage: str) -> None:
    """Axial and coronal: a marker on the patient's left lands in the image's right half, under the L letter."""
    volume, (i, j, k) = _phantom(storage)
    view = orient_for_view(volume)
    assert view.shape == (20, 30, 40)  # (D, H, W) = (S-I, A-P, R-L)
    assert view.spacing == (2.0, 1.0, 1.0)
    axial = render_plane(view, "axial", 15, "wide")
    width, height = axial.image.size
    xs, ys = _bright_columns_rows(axial.image)
    assert xs.mean() > width / 2  # patient's left -> image right (radiological)
    assert ys.mean() < height / 2  # anterior -> image top
    assert axial.labels["L"][0] > width * 3 / 4 and axial.labels["R"][0] < width / 4
    assert axial.labels["A"][1] < height / 4 and axial.labels["P"][1] > height * 3 / 4
    # the L letter is really drawn there: yellow pixels around its centre, none around the middle
    rgb = np.asarray(axial.image)
    lx, ly = axial.labels["L"]
    yellow = np.all(rgb == LABEL_COLOR, axis=-1)
    assert yellow[ly - 8 : ly + 9, lx - 8 : lx + 9].sum() > 5
    assert yellow[height // 2 - 8 : height // 2 + 9, width // 2 - 8 : width // 2 + 9].sum() == 0

    coronal = render_plane(view, "coronal", 30 - 1 - 24 if storage == "RAS" else 5, "wide")
    xs, ys = _bright_columns_rows(coronal.image)
    assert xs.mean() > coronal.image.size[0] / 2  # left -> right
    assert ys.mean() < coronal.image.size[1] / 2  # superior -> top
    assert coronal.labels["L"][0] > coronal.labels["R"][0] and coronal.labels["S"][1] < coronal.labels["I"][1]


@pytest.mark.parametrize("storage", ["RAS", "LPS"])
def test_sagittal_has_anterior_on_the_left_and_superior_on_top(storage: str) -> None:
    volume, _ = _phantom(storage)
    view = orient_for_view(volume)
    # the marker's W index: patient's left side, 6 voxels from the left edge -> W = 40 - 1 - 6
    sagittal = render_plane(view, "sagittal", 33, "wide")
    xs, ys = _bright_columns_rows(sagittal.image)
    assert xs.mean() < sagittal.image.size[0] / 2 and ys.mean() < sagittal.image.size[1] / 2
    assert sagittal.labels["A"][0] < sagittal.labels["P"][0]


def test_oriented_voxels_match_hand_indexing() -> None:
    """SPL orientation of an LPS array equals the hand-written transpose and flips."""
    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)
    view = orient_for_view(Volume(array, np.diag([-1.0, -1.0, 1.0, 1.0])))
    # LPS (i: R->L, j: A->P, k: I->S) -> SPL (D: I->S, H: A->P, W: R->L) is a pure transpose
    np.testing.assert_array_equal(view.array, array.transpose(2, 1, 0))
    view = orient_for_view(Volume(array, np.diag([1.0, 1.0, 1.0, 1.0])))  # RAS: flip i and j
    np.testing.assert_array_equal(view.array, array[::-1, ::-1, :].transpose(2, 1, 0))
    hu, spacing = plane_slice(view, "coronal", 2)
    np.testing.assert_array_equal(hu, view.array[::-1, 2, :])


@pytest.mark.parametrize(
    ("window", "hu", "expected"),
    [
        ("mediastinum", 0.0, 102),  # 40/400 -> -160..240; (0 + 160) / 400 * 255 = 102
        ("mediastinum", 100.0, 166),  # 260 / 400 * 255 = 165.75
        ("lung", -975.0, 64),  # -600/1500 -> -1350..150; 375 / 1500 * 255 = 63.75
        ("bone", 2000.0, 255),  # above the window: white
        ("abdomen", -500.0, 0),  # below: black
        ((10.0, 100.0), 0.0, 102),  # custom level/width: -40..60
    ],
)
def test_window_math_matches_hand_computed_grey(window, hu: float, expected: int) -> None:
    view = orient_for_view(Volume(np.full((8, 8, 8), hu, dtype=np.float32), np.eye(4)))
    image = render_plane(view, "axial", 4, window, labels=False).image
    assert np.asarray(image)[image.size[1] // 2, image.size[0] // 2].tolist() == [expected] * 3


def test_planes_keep_the_physical_aspect_ratio() -> None:
    """Coronal of 40 mm (W) x 50 mm (D, 10 slices of 5 mm): 256 x 320 pixels at size 320."""
    view = orient_for_view(Volume(np.zeros((40, 20, 10), np.float32), np.diag([-1.0, -1.0, 5.0, 1.0])))
    assert render_plane(view, "coronal", 0, "lung", size=320).image.size == (256, 320)
    assert render_plane(view, "axial", 0, "lung", size=320).image.size == (320, 160)
    with pytest.raises(ValueError, match="valid choices: axial, coronal, sagittal"):
        render_plane(view, "oblique", 0, "lung")
    with pytest.raises(ValueError, match="unknown HU window"):
        render_plane(view, "axial", 0, "liver")


def test_montage_tiles_slices_in_order_with_the_tensor_range() -> None:
    slices = np.stack([np.full((8, 8), v, np.float32) for v in (0.0, 1.0, 2.0, 3.0)])
    sheet = np.asarray(montage(slices, size=8))
    assert sheet.shape == (18, 18)  # 2 x 2 tiles of 8 px with a 2 px gap
    assert [sheet[0, 0], sheet[0, 10], sheet[10, 0], sheet[10, 10]] == [0, 85, 170, 255]
