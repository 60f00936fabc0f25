"""Phantom rendering: HU levels, geometry, sizes in mm, laterality through every storage orientation."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvl.tools.synth import phantoms
from medvl.tools.synth.dataset import synthesize
from medvl.tools.synth.findings import CaseFindings, Nodule, mirror_findings
from medvl.tools.synth.phantoms import Geometry2D, Geometry3D, orientation_affine, render_ct, render_radiograph
from medvl.tools.synth.text import answer_for, findings_report

SMALL_3D = Geometry3D(shape=(64, 64, 32), spacing=(5.0, 5.0, 7.5))
TINY_2D = Geometry2D(size=48, spacing=7.5)  # where pixel content does not matter (speed)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _to_spl(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient to the volume processor's (D, H, W) = S, P, L with nibabel (independent of medvl)."""
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("S", "P", "L"))
    )
    return nib.orientations.apply_orientation(array, ornt)


def _nodule_diff_2d(nodule: Nodule, seed: int = 0) -> np.ndarray:
    """Image with one nodule minus the same case without it (same anatomy and noise)."""
    with_n = render_radiograph(CaseFindings(nodules=[nodule]), np.random.default_rng(seed)).astype(np.float64)
    without = render_radiograph(CaseFindings(), np.random.default_rng(seed)).astype(np.float64)
    return with_n - without


def test_ct_hu_levels():
    g = SMALL_3D
    hu, affine = render_ct(CaseFindings(), np.random.default_rng(0), g, ("R", "A", "S"))
    inv = np.linalg.inv(affine)

    def at(x_right: float, y_ant: float, z_sup: float) -> float:
        i, j, k = np.round(inv @ np.array([x_right, y_ant, z_sup, 1.0]))[:3].astype(int)
        return float(np.median(hu[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2]))

    assert abs(at(155, 150, 0) - (-1000)) < 40  # outside the body
    assert abs(at(70, -5, 60) - (-850)) < 40  # right upper lung (x > 0 = patient right)
    assert abs(at(0, -80, 0) - 700) < 60  # vertebral body
    assert abs(at(-18, 35, -45) - 40) < 40  # heart, left of the midline (x < 0)


def test_nifti_affine_spacing_and_orientation(tmp_path):
    synthesize("3d", 3, 0, tmp_path)
    for case in _read_jsonl(tmp_path / "cases.jsonl"):
        img = nib.load(tmp_path / case["file"])
        assert img.get_data_dtype() == np.int16
        assert "".join(nib.aff2axcodes(img.affine)) == case["axcodes"]
        assert np.allclose(img.header.get_zooms(), Geometry3D().spacing)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        affine, shape = orientation_affine(tuple(case["axcodes"]), Geometry3D())
        assert np.allclose(img.affine, affine) and img.shape == shape


@pytest.mark.parametrize("diameter", [8.0, 20.0])
def test_nodule_size_in_pixels_matches_mm(diameter):
    g = Geometry2D()
    diff = _nodule_diff_2d(Nodule("right", "upper", diameter, (0.5, 0.5, 0.5)))
    row = int(np.argmax(diff.max(axis=1)))
    width_px = int((diff[row] > 0.02 * diff.max()).sum())  # support of the projected sphere (+ blur)
    assert abs(width_px - diameter / g.spacing) <= 3

    nodule = Nodule("left", "upper", diameter, (0.5, 0.5, 0.5))
    with_n, _ = render_ct(CaseFindings(nodules=[nodule]), np.random.default_rng(0), SMALL_3D)
    without, _ = render_ct(CaseFindings(), np.random.default_rng(0), SMALL_3D)
    changed = (with_n.astype(float) - without) > 200  # lung (-850) turned towards soft tissue (40)
    voxel_mm3 = float(np.prod(SMALL_3D.spacing))
    expected = np.pi / 6 * diameter**3 / voxel_mm3
    assert 0.4 * expected <= changed.sum() <= 2.0 * expected + 2


def test_left_finding_lands_on_image_right_2d():
    size = Geometry2D().size
    for side, on_right in (("left", True), ("right", False)):
        diff = _nodule_diff_2d(Nodule(side, "lower", 15.0, (0.3, 0.5, 0.5)))
        column = np.argwhere(diff > 0.5 * diff.max())[:, 1].mean()
        assert (column > size / 2) == on_right, (side, column)


@pytest.mark.parametrize("axcodes", phantoms.ORIENTATIONS)
def test_left_finding_lands_at_large_w_after_orientation(axcodes):
    nodule = Nodule("left", "upper", 20.0, (0.5, 0.5, 0.5))
    with_n, affine = render_ct(
        CaseFindings(nodules=[nodule], effusion="left"), np.random.default_rng(0), SMALL_3D, axcodes
    )
    without, _ = render_ct(CaseFindings(), np.random.default_rng(0), SMALL_3D, axcodes)
    diff = _to_spl(with_n.astype(float) - without, affine)  # (D, H, W), W = patient right -> left
    w_changed = np.argwhere(diff > 200)[:, 2]
    assert w_changed.size and w_changed.mean() > diff.shape[2] / 2


def test_medvl_volume_pipeline_puts_left_on_the_right(tmp_path):
    from medvl.imaging import volume3d
    from medvl.models import volume_processing_medvl as vp

    nodule = Nodule("left", "upper", 25.0, (0.5, 0.5, 0.5))
    for axcodes in phantoms.ORIENTATIONS:
        arrays = []
        for findings in (CaseFindings(nodules=[nodule]), CaseFindings()):
            hu, affine = render_ct(findings, np.random.default_rng(0), SMALL_3D, axcodes)
            path = tmp_path / f"{''.join(axcodes)}-{len(findings.nodules)}.nii.gz"
            phantoms.save_nifti(hu, affine, path)
            volume = volume3d.load_volume(path)
            proc = vp.MedVLVolumeProcessor(target_shape=(16, 32, 32), window="lung", crop_foreground=False)
            arrays.append(proc([volume])["volume_values"][0].float().mean(0).numpy())
        diff = arrays[0] - arrays[1]
        w = np.argwhere(diff > 0.5 * diff.max())[:, 2]
        assert w.mean() > diff.shape[2] / 2, axcodes


def test_mirrored_patient_gets_mirrored_answers_and_image():
    f = CaseFindings(
        nodules=[Nodule("left", "upper", 12.0, (0.4, 0.3, 0.5)), Nodule("left", "lower", 9.0, (0.2, 0.6, 0.5))],
        effusion="right",
        heart="enlarged",
    )
    m = mirror_findings(f)
    assert answer_for(f, "nodule_side", "en") == "left" and answer_for(m, "nodule_side", "en") == "right"
    assert answer_for(f, "effusion_side", "en") == "right" and answer_for(m, "effusion_side", "en") == "left"
    assert answer_for(m, "effusion_side", "zh") == "左"
    assert answer_for(m, "heart_size", "en") == "enlarged"
    assert findings_report(m, "en").startswith(
        "2 lung nodules: 12 mm in the right upper lobe, 9 mm in the right lower lobe."
    )
    # The mirrored nodule sits at the mirrored column (rows differ: the lobes' heights differ).
    size = Geometry2D().size
    left = _nodule_diff_2d(f.nodules[0])
    right = _nodule_diff_2d(m.nodules[0])
    col_left = np.argwhere(left > 0.5 * left.max())[:, 1].mean()
    col_right = np.argwhere(right > 0.5 * right.max())[:, 1].mean()
    assert col_left > size / 2 > col_right
    assert abs((size - 1 - col_left) - col_right) < 1.0
