"""Synthetic chest phantoms: ``medvl data synth --kind 2d|3d --n N --seed S --out DIR [--dicom]``.

2D cases are posteroanterior chest-radiograph-like projections (16-bit PNG, or DICOM DX with
pixel spacing and patient orientation tags); 3D cases are chest-CT-like volumes in Hounsfield
units (NIfTI, int16, a real affine: spacing and one of several storage orientations). Each case is
drawn from a random :class:`~medvl.data.synth_text.CaseFindings` (nodules, pleural effusion, heart
size); the bilingual questions and the report derive from the same description.

Orientation. Findings are the *patient's* sides. The 2D image follows the radiological display of
a PA film: column 0 is the patient's right, so a left-lung nodule sits in the image's right half.
3D volumes are rendered in world (RAS+) millimetres through their affine, so whatever storage
orientation a case gets, reorienting with the affine (the volume processor's "SPL") puts the
patient's left at large W. Mirroring the voxels without touching the affine mirrors the patient:
that case's answers are :func:`~medvl.data.synth_text.mirror_findings` of the original.

Output layout::

    DIR/dataset.json          kind, seed, n, geometry, split sizes, question counts
    DIR/cases.jsonl           one line per case: id, split, file, findings (the ground truth)
    DIR/{train,validation,test}.jsonl   native records (messages, images|volumes, meta; meta.labels:
                              the case's finding labels, for stage 0)
    DIR/{train,validation,test}_labels.csv   label tables: one row per case (image|volume, id, labels)
    DIR/images/*.png|*.dcm or DIR/volumes/*.nii.gz
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medvl.data.synth_text import (
    CLOSED_TYPES,
    FINDING_LABELS,
    LANGUAGES,
    NODULE_DIAMETER_MM,
    OPEN_TYPES,
    CaseFindings,
    Nodule,
    answer_for,
    balance_keep_probabilities,
    make_question,
    random_findings,
)

logger = logging.getLogger(__name__)

KINDS = ("2d", "3d")
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
# Storage orientations of 3D cases (nibabel axcodes of the voxel axes). LPS is what DICOM-derived
# NIfTI usually looks like, RAS is nibabel's canonical, LAS is FSL's "radiological" storage.
ORIENTATIONS = (("L", "P", "S"), ("R", "A", "S"), ("L", "A", "S"))

# Vertical extent of each lobe inside its lung, as fractions of the lung height from apex (0) to
# base (1). Nodules stay above the highest effusion level so that fluid never hides a labelled one.
LOBE_BANDS = {
    ("right", "upper"): (0.12, 0.40),
    ("right", "middle"): (0.42, 0.58),
    ("right", "lower"): (0.60, 0.74),
    ("left", "upper"): (0.12, 0.50),
    ("left", "lower"): (0.54, 0.74),
}
EFFUSION_LEVEL = (0.76, 0.86)  # fluid fills the lung below this fraction of its height (at the medial edge)

# Attenuation per mm (arbitrary units) of the radiograph model; soft tissue = 1.
MU_SOFT, MU_LUNG, MU_BONE_EXCESS = 1.0, 0.15, 1.2
# Nodules project brighter than their chord of soft tissue alone would (dense solid nodules); with
# plain soft tissue a 5-10 mm nodule is fainter than a rib and only 2-3 grey levels after the usual
# 16 -> 8 bit conversion: invisible to a small model trained for minutes.
NODULE_GAIN = 2.0
# Display mapping of the PNG/DICOM pixels (a "for presentation" radiograph): attenuation units
# DISPLAY_RANGE[0]..[1] -> 0..65535, so that the lung fields get most of the grey levels.
DISPLAY_RANGE = (30.0, 250.0)
HU = {"air": -1000.0, "lung": -850.0, "fat": -90.0, "soft": 40.0, "fluid": 15.0, "bone": 700.0}


@dataclass
class Geometry2D:
    """Image geometry of 2D cases.

    Args:
        size: rows = columns in pixels.
        spacing: pixel spacing in mm (rows and columns).
    """

    size: int = 256
    spacing: float = 1.4


@dataclass
class Geometry3D:
    """Volume geometry of 3D cases (in patient terms, whatever the storage order).

    Args:
        shape: voxels along (left-right, anterior-posterior, inferior-superior).
        spacing: mm per voxel along the same axes.
    """

    shape: tuple[int, int, int] = (96, 96, 48)
    spacing: tuple[float, float, float] = (3.5, 3.5, 5.0)


# --------------------------------------------------------------------------------------------
# Anatomy shared by both renderers (world millimetres; x = patient's LEFT positive here, i.e. the
# image's right in the radiological display; y = inferior positive in 2D)
# --------------------------------------------------------------------------------------------


@dataclass
class _Anatomy:
    scale: float  # patient width factor
    lung_cx: float  # |x| of each lung centre (mm)
    lung_ax: float  # lung half-width
    lung_ay: float  # lung half-height (cranio-caudal)
    lung_cy: float  # lung centre height (2D: mm below image centre)
    heart_ax: float
    heart_ay: float
    effusion_level: dict[str, float]


def _anatomy(f: CaseFindings, rng: np.random.Generator) -> _Anatomy:
    s = float(rng.uniform(0.9, 1.05))
    enlarged = f.heart == "enlarged"
    # Cardiothoracic ratio ~0.42-0.48 when normal, ~0.56-0.64 when enlarged.
    thorax_width = 2 * (70 + 55) * s
    ctr = rng.uniform(0.56, 0.64) if enlarged else rng.uniform(0.42, 0.48)
    return _Anatomy(
        scale=s,
        lung_cx=70 * s,
        lung_ax=55 * s,
        lung_ay=float(rng.uniform(100, 115)),
        lung_cy=float(rng.uniform(-15, -5)),
        heart_ax=float(ctr * thorax_width / 2),
        heart_ay=float(rng.uniform(42, 50) * (1.15 if enlarged else 1.0)),
        effusion_level={side: float(rng.uniform(*EFFUSION_LEVEL)) for side in ("left", "right")},
    )


def _lung_centre_x(a: _Anatomy, side: str) -> float:
    """x (patient's left positive) of a lung centre."""
    return a.lung_cx if side == "left" else -a.lung_cx


def _nodule_position(a: _Anatomy, n: Nodule) -> tuple[float, float, float]:
    """Nodule centre (x left-positive, y inferior-positive, depth fraction) inside its lobe."""
    t0, t1 = LOBE_BANDS[(n.side, n.lobe)]
    t = t0 + (t1 - t0) * n.offset[1]
    y = a.lung_cy - a.lung_ay + 2 * a.lung_ay * t
    half = a.lung_ax * np.sqrt(max(0.0, 1 - ((y - a.lung_cy) / a.lung_ay) ** 2))
    r = n.diameter_mm / 2
    span = max(0.0, 0.75 * half - r)
    # offset[0] runs medial (0) -> lateral (1) on both sides, so a mirrored patient mirrors exactly.
    lateral = 1.0 if n.side == "left" else -1.0
    x = _lung_centre_x(a, n.side) + lateral * (2 * n.offset[0] - 1) * span
    return float(x), float(y), float(n.offset[2])


# --------------------------------------------------------------------------------------------
# 2D: PA radiograph
# --------------------------------------------------------------------------------------------


def _ellipsoid_thickness(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, depth: float
) -> np.ndarray:
    """Path length (mm) of a ray along the beam through an ellipsoid with semi-axes ax, ay, depth."""
    q = 1 - ((x - cx) / ax) ** 2 - ((y - cy) / ay) ** 2
    return 2 * depth * np.sqrt(np.clip(q, 0, None))


def render_radiograph(f: CaseFindings, rng: np.random.Generator, geometry: Geometry2D | None = None) -> np.ndarray:
    """Render a PA chest radiograph phantom.

    Args:
        f: the findings to show.
        rng: random generator (anatomy variation, exposure, noise).
        geometry: image size and pixel spacing.

    Returns:
        uint16 array (rows = superior -> inferior, columns = patient's right -> left); brighter is
        denser, as on a displayed radiograph (MONOCHROME2).
    """
    g = geometry or Geometry2D()
    a = _anatomy(f, rng)
    coords = (np.arange(g.size) - (g.size - 1) / 2) * g.spacing
    y, x = np.meshgrid(coords, coords, indexing="ij")  # x: patient's left positive = image right

    body_ax = 160 * a.scale
    density = MU_SOFT * 2 * 110 * np.sqrt(np.clip(1 - (x / body_ax) ** 2, 0, None))
    lungs = {
        side: _ellipsoid_thickness(x, y, _lung_centre_x(a, side), a.lung_cy, a.lung_ax, a.lung_ay, 70)
        for side in ("left", "right")
    }
    # Effusion: fluid replaces air below a meniscus that rises towards the lateral chest wall.
    for side in ("left", "right"):
        if f.effusion in (side, "both"):
            cx = _lung_centre_x(a, side)
            level = a.lung_cy - a.lung_ay + 2 * a.lung_ay * a.effusion_level[side]
            lateral = np.clip((x - cx) * (1 if side == "left" else -1) / a.lung_ax, 0, 1)
            meniscus = level - 30 * lateral**2
            wet = 1 / (1 + np.exp(-(y - meniscus) / 2.0))  # soft edge
            lungs[side] = lungs[side] * (1 - wet)
    density -= (MU_SOFT - MU_LUNG) * (lungs["left"] + lungs["right"])
    # Heart: soft tissue in front of the lungs, shifted to the patient's left.
    heart = _ellipsoid_thickness(x, y, 18 * a.scale, a.lung_cy + 0.45 * a.lung_ay, a.heart_ax, a.heart_ay, 40)
    density += 0.5 * (MU_SOFT - MU_LUNG) * heart
    # Spine and ribs (bone), clavicles.
    density += MU_BONE_EXCESS * 30 / (1 + np.exp((np.abs(x) - 17) / 1.5))
    for side in (-1, 1):
        for k in range(9):
            y0 = a.lung_cy - a.lung_ay + 8 + k * 2 * a.lung_ay / 9.5
            centre = y0 - 0.0035 * (x * side - 10) ** 2 + 0.5 * np.abs(x)
            rib = np.exp(-0.5 * ((y - centre) / 3.0) ** 2) * ((x * side) > 12) * ((x * side) < body_ax * 0.9)
            density += MU_BONE_EXCESS * 5 * rib
        clav = np.exp(-0.5 * ((y - (a.lung_cy - a.lung_ay + 5 - 0.25 * np.abs(x))) / 4.0) ** 2)
        density += MU_BONE_EXCESS * 8 * clav * ((x * side) > 5) * ((x * side) < 120)
    # Nodules: a soft-tissue sphere replacing lung; its projection is the chord length.
    for n in f.nodules:
        nx, ny, _ = _nodule_position(a, n)
        r = n.diameter_mm / 2
        chord = 2 * np.sqrt(np.clip(r**2 - (x - nx) ** 2 - (y - ny) ** 2, 0, None))
        density += NODULE_GAIN * (MU_SOFT - MU_LUNG) * chord
    density = ndimage.gaussian_filter(density, sigma=0.6)
    density += rng.normal(0, 1.0, density.shape)
    exposure = rng.uniform(0.95, 1.05)
    lo, hi = DISPLAY_RANGE
    return np.clip((density * exposure - lo) / (hi - lo) * 65535, 0, 65535).astype(np.uint16)


def save_png16(array: np.ndarray, path: Path) -> None:
    """Write a 16-bit greyscale PNG.

    Args:
        array: uint16 2D array.
        path: output file.
    """
    from PIL import Image

    Image.fromarray(array.astype(np.uint16)).save(path)


def save_dicom_dx(array: np.ndarray, path: Path, *, spacing: float, case_id: str) -> None:
    """Write a DX (digital X-ray, for presentation) DICOM file with the tags a reader needs.

    Args:
        array: uint16 2D array in display orientation (column 0 = patient's right).
        path: output file.
        spacing: pixel spacing in mm.
        case_id: used as patient id and in the description.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = case_id
    ds.PatientName = "SYNTH^PHANTOM"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]  # columns run to the patient's left, rows to the feet
    ds.SeriesDescription = "medvl synthetic chest phantom"
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    lo, hi = np.percentile(array, [1, 99])
    ds.WindowCenter = float((lo + hi) / 2)
    ds.WindowWidth = float(max(hi - lo, 1))
    ds.PixelData = array.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------------------------
# 3D: chest CT
# --------------------------------------------------------------------------------------------


def orientation_affine(axcodes: tuple[str, str, str], geometry: Geometry3D) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A voxel -> RAS+ affine for a storage orientation, centred on the world origin.

    Args:
        axcodes: nibabel axis codes of the voxel axes, e.g. ("L", "P", "S"); the axes are taken in
            the order left-right, anterior-posterior, inferior-superior.
        geometry: shape and spacing in patient terms.

    Returns:
        (affine, array shape).
    """
    direction = {"R": 1.0, "L": -1.0, "A": 1.0, "P": -1.0, "S": 1.0, "I": -1.0}
    affine = np.eye(4)
    for axis, code in enumerate(axcodes):
        affine[axis, axis] = direction[code] * geometry.spacing[axis]
    shape = tuple(int(s) for s in geometry.shape)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine, shape  # type: ignore[return-value]


def render_ct(
    f: CaseFindings,
    rng: np.random.Generator,
    geometry: Geometry3D | None = None,
    axcodes: tuple[str, str, str] = ("L", "P", "S"),
) -> tuple[np.ndarray, np.ndarray]:
    """Render a chest CT phantom in HU through its affine.

    Args:
        f: the findings to show.
        rng: random generator (anatomy variation, noise).
        geometry: shape and spacing.
        axcodes: storage orientation (see :func:`orientation_affine`).

    Returns:
        (int16 HU array, 4x4 voxel -> RAS+ affine).
    """
    g = geometry or Geometry3D()
    affine, shape = orientation_affine(axcodes, g)
    a = _anatomy(f, rng)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)
    # Patient frame used by the shared anatomy: x = patient's left positive (= -R), y_inf = inferior
    # positive (= -S), ap = anterior positive.
    x, ap, y_inf = -world[..., 0], world[..., 1], -world[..., 2]

    vol = np.full(shape, HU["air"], dtype=np.float32)
    body_ax, body_ap = 160 * a.scale, 110.0
    body = (x / body_ax) ** 2 + ((ap - 5) / body_ap) ** 2
    vol[body <= 1] = HU["fat"]
    vol[body <= 0.85] = HU["soft"]
    # Rib cage: a bony shell interrupted between ribs.
    rib_rows = np.cos(2 * np.pi * y_inf / 26.0) > 0.55
    vol[(body > 0.74) & (body <= 0.8) & rib_rows] = HU["bone"]
    lung_ap = 70.0
    lung_cap = -5.0
    for side in ("left", "right"):
        q = (
            ((x - _lung_centre_x(a, side)) / a.lung_ax) ** 2
            + ((ap - lung_cap) / lung_ap) ** 2
            + ((y_inf - a.lung_cy) / a.lung_ay) ** 2
        )
        lung = q <= 1
        vol[lung] = HU["lung"]
        if f.effusion in (side, "both"):
            # Dependent (posterior) fluid, thickest at the base and thinning towards the apex.
            height = (y_inf - (a.lung_cy - a.lung_ay)) / (2 * a.lung_ay)  # 0 apex .. 1 base
            depth = (lung_cap + lung_ap - ap) / (2 * lung_ap)  # 0 anterior .. 1 posterior
            base = a.effusion_level[side] - 0.35
            fluid = lung & (depth > 1 - np.clip((height - base) / (1 - base), 0, None) * 0.9) & (height > base)
            vol[fluid] = HU["fluid"]
    heart = (
        ((x - 18 * a.scale) / a.heart_ax) ** 2
        + ((ap - 35) / 45) ** 2
        + ((y_inf - (a.lung_cy + 0.45 * a.lung_ay)) / a.heart_ay) ** 2
    )
    vol[heart <= 1] = HU["soft"]
    spine = (x**2 + (ap + 80) ** 2) <= 18**2
    vol[spine] = HU["bone"]
    sternum = (np.abs(x) < 12) & (np.abs(ap - 100) < 6) & (y_inf < a.lung_cy + 0.5 * a.lung_ay)
    vol[sternum] = HU["bone"]
    # Nodules with partial-volume edges (soft tissue replacing lung).
    vox = float(min(g.spacing))
    for n in f.nodules:
        nx, ny, depth = _nodule_position(a, n)
        # Anterior two thirds of the lung, away from dependent fluid.
        nap = lung_cap + lung_ap * (0.7 - 1.0 * depth)
        dist = np.sqrt((x - nx) ** 2 + (ap - nap) ** 2 + (y_inf - ny) ** 2)
        alpha = np.clip((n.diameter_mm / 2 - dist) / vox + 0.5, 0, 1)
        vol = vol * (1 - alpha) + HU["soft"] * alpha
    vol = ndimage.gaussian_filter(vol, sigma=0.5) + rng.normal(0, 15.0, shape)
    return np.clip(np.round(vol), -1024, 3071).astype(np.int16), affine


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write an int16 NIfTI in HU with the affine as scanner-anchored qform and sform.

    Args:
        array: int16 HU array.
        affine: 4x4 voxel -> RAS+ mm.
        path: output file (.nii or .nii.gz).
    """
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _case_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Independent random stream per (seed, case, purpose): case i is the same whatever N is."""
    return np.random.default_rng([seed, index, stream])


def assign_splits(n: int, seed: int, findings: list[CaseFindings] | None = None) -> list[str]:
    """Split names for n cases (80/10/10, at least one validation and test case when n >= 3).

    With ``findings`` the split is stratified: cases are ordered by (nodules present, effusion
    present, heart size) and a random key, and validation/test take evenly spaced positions of
    that order, so that even a small test split keeps the answers balanced.

    Args:
        n: number of cases.
        seed: the dataset seed.
        findings: the cases' findings (stratification), or None for a plain random split.
    """
    n_val = max(1, round(n * SPLIT_FRACTIONS[1])) if n >= 3 else 0
    n_test = max(1, round(n * SPLIT_FRACTIONS[2])) if n >= 3 else 0
    key = np.random.default_rng([seed, 2**31 - 1]).permutation(n)
    if findings is not None:
        strata = [(bool(f.nodules), f.effusion != "none", f.heart) for f in findings]
        order = sorted(range(n), key=lambda i: (strata[i], key[i]))
    else:
        order = [int(i) for i in key]
    splits = ["train"] * n
    if n_val:
        step = n / n_val
        for k in range(n_val):
            splits[order[int(k * step)]] = "validation"
    if n_test:
        step = n / n_test
        for k in range(n_test):
            pos = int(k * step + step / 2)
            while splits[order[pos]] != "train":  # never steal a validation case
                pos = (pos + 1) % n
            splits[order[pos]] = "test"
    return splits


def case_questions(f: CaseFindings, rng: np.random.Generator, keep: dict[str, dict[str, float]]) -> list:
    """The questions kept for one case: each applicable type at most once, in a random language,
    closed types thinned with ``keep`` so that their answers are balanced.

    Args:
        f: the case's findings.
        rng: the case's question stream.
        keep: balance_keep_probabilities() output.
    """
    out = []
    for qtype in CLOSED_TYPES + OPEN_TYPES:
        language = LANGUAGES[int(rng.integers(len(LANGUAGES)))]
        u = rng.random()
        qa = make_question(f, qtype, language, rng)
        if qa is None:
            continue
        if qtype in keep and u >= keep[qtype].get(answer_for(f, qtype, "en"), 1.0):
            continue
        out.append(qa)
    return out


def finding_family(question_type: str) -> str:
    """The finding a question is about ("nodule", "effusion", "heart") or "report" (all of them).

    Args:
        question_type: one of CLOSED_TYPES or OPEN_TYPES.
    """
    return "report" if question_type == "report" else question_type.split("_")[0]


def group_independent(qas: list, rng: np.random.Generator) -> list[list]:
    """Split one case's questions into conversations whose answers cannot give each other away.

    Nodules, effusion and heart size are drawn independently (:func:`random_findings`), so a
    conversation holding at most one question per finding leaks nothing from one answer to the
    next; a report mentions every finding and stays alone. One image pass then supervises up to
    three answers instead of one.

    Args:
        qas: the case's questions (:func:`case_questions`).
        rng: the case's grouping stream.

    Returns:
        conversations (lists of QA), reports first, then turn k of every family, in random order.
    """
    families: dict[str, list] = {}
    for qa in qas:
        families.setdefault(finding_family(qa.question_type), []).append(qa)
    conversations = [[qa] for qa in families.pop("report", [])]
    for family in families.values():
        rng.shuffle(family)
    for k in range(max((len(v) for v in families.values()), default=0)):
        turns = [family[k] for family in families.values() if k < len(family)]
        rng.shuffle(turns)
        conversations.append(turns)
    return conversations


def _record(case_id: str, turns: list, marker: str, media_key: str, rel: str, labels: dict[str, int]) -> dict[str, Any]:
    """One native record: the media marker in the first user turn, the QA pairs as turns; the case's
    finding labels in meta.labels (stage 0 reads them)."""
    messages = []
    for k, qa in enumerate(turns):
        messages += [
            {"role": "user", "content": f"{marker}\n{qa.question}" if k == 0 else qa.question},
            {"role": "assistant", "content": qa.answer},
        ]
    if len(turns) == 1:
        qa = turns[0]
        return {
            "id": f"{case_id}-{qa.question_type}-{qa.language}",
            "messages": messages,
            media_key: [rel],
            "meta": {
                "answer_type": qa.answer_type,
                "question_type": qa.question_type,
                "language": qa.language,
                "reference": qa.answer,
                "case": case_id,
                "source": "medvl-synth",
                "labels": labels,
            },
        }
    return {
        "id": f"{case_id}-" + "+".join(qa.question_type for qa in turns),
        "messages": messages,
        media_key: [rel],
        "meta": {
            "question_types": [qa.question_type for qa in turns],
            "languages": [qa.language for qa in turns],
            "case": case_id,
            "source": "medvl-synth",
            "labels": labels,
        },
    }


def _render_case(job: tuple) -> dict[str, Any]:
    """Render and write one case (runs in a worker process when ``workers`` > 1)."""
    kind, i, seed, out, dicom, geometry, findings_dict, split = job
    f = CaseFindings.from_dict(findings_dict)
    case_id = f"case{i:05d}"
    render_rng = _case_rng(seed, i, 1)
    info: dict[str, Any] = {"id": case_id, "split": split, "findings": findings_dict}
    if kind == "2d":
        pixels = render_radiograph(f, render_rng, geometry)
        rel = f"images/{case_id}.{'dcm' if dicom else 'png'}"
        if dicom:
            save_dicom_dx(pixels, Path(out) / rel, spacing=geometry.spacing, case_id=case_id)
        else:
            save_png16(pixels, Path(out) / rel)
        info["pixel_spacing_mm"] = [geometry.spacing, geometry.spacing]
    else:
        axcodes = ORIENTATIONS[int(render_rng.integers(len(ORIENTATIONS)))]
        hu, affine = render_ct(f, render_rng, geometry, axcodes)
        rel = f"volumes/{case_id}.nii.gz"
        save_nifti(hu, affine, Path(out) / rel)
        info["axcodes"] = "".join(axcodes)
        info["spacing_mm"] = list(geometry.spacing)
    info["file"] = rel
    return info


TRAIN_FORMATS = ("single", "grouped")


def write_label_table(path: Path, media_column: str, rows: list[tuple[str, str, list[int]]]) -> Path:
    """A stage-0 label table (:mod:`medvl.data.finding_labels`): media path, case id, one column per
    finding label.

    Args:
        path: the CSV to write.
        media_column: "image" or "volume".
        rows: (case id, media path relative to the table, labels in FINDING_LABELS order).
    """
    import csv

    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([media_column, "id", *FINDING_LABELS])
        for case_id, rel, labels in rows:
            writer.writerow([rel, case_id, *labels])
    return path


def synthesize(
    kind: str,
    n: int,
    seed: int,
    out: str | Path,
    *,
    dicom: bool = False,
    geometry: Geometry2D | Geometry3D | None = None,
    workers: int = 1,
    train_format: str = "single",
    nodule_diameter_mm: tuple[float, float] = NODULE_DIAMETER_MM,
) -> dict[str, Any]:
    """Write a synthetic dataset.

    Args:
        kind: "2d" (radiographs) or "3d" (CT volumes).
        n: number of cases.
        seed: random seed; the same seed gives byte-identical records and pixel data.
        out: output directory (created).
        dicom: 2D only: write DICOM DX files instead of 16-bit PNG.
        geometry: image/volume geometry (defaults: Geometry2D() / Geometry3D()).
        workers: processes that render in parallel (the output does not depend on it).
        train_format: "single" (one question per training record) or "grouped" (training records
            are conversations of independent questions, :func:`group_independent`). Validation and
            test records are single questions either way.
        nodule_diameter_mm: (smallest, largest) nodule diameter in mm (uniform), e.g. (4, 12) for a set
            of small nodules only.

    Returns:
        the dataset summary also written to ``out/dataset.json``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid choices: {', '.join(KINDS)}")
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if train_format not in TRAIN_FORMATS:
        raise ValueError(f"unknown train_format {train_format!r}; valid choices: {', '.join(TRAIN_FORMATS)}")
    if dicom and kind != "2d":
        raise ValueError("--dicom applies to --kind 2d only (3D cases are written as NIfTI)")
    lo, hi = (float(v) for v in nodule_diameter_mm)
    if not 0 < lo <= hi:
        raise ValueError(f"nodule diameters must satisfy 0 < smallest <= largest, got {nodule_diameter_mm}")
    geometry = geometry or (Geometry2D() if kind == "2d" else Geometry3D())
    out = Path(out)
    media_dir = out / ("images" if kind == "2d" else "volumes")
    media_dir.mkdir(parents=True, exist_ok=True)

    findings = [random_findings(_case_rng(seed, i, 0), (lo, hi)) for i in range(n)]
    keep = balance_keep_probabilities(
        {qtype: [a for a in (answer_for(f, qtype, "en") for f in findings) if a is not None] for qtype in CLOSED_TYPES}
    )
    splits = assign_splits(n, seed, findings)
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    marker = "<image>" if kind == "2d" else "<volume>"
    jobs = [(kind, i, seed, str(out), dicom, geometry, f.to_dict(), splits[i]) for i, f in enumerate(findings)]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            cases = pool.map(_render_case, jobs, chunksize=max(1, n // (8 * workers)))
    else:
        cases = [_render_case(job) for job in jobs]
    media_key = "images" if kind == "2d" else "volumes"
    for i, f in enumerate(findings):
        case_id, rel = cases[i]["id"], cases[i]["file"]
        qas = case_questions(f, _case_rng(seed, i, 2), keep)
        if splits[i] == "train" and train_format == "grouped":
            conversations = group_independent(qas, _case_rng(seed, i, 3))
        else:
            conversations = [[qa] for qa in qas]
        labels = dict(zip(FINDING_LABELS, f.labels()))
        records[splits[i]] += [_record(case_id, turns, marker, media_key, rel, labels) for turns in conversations]

    for split in SPLITS:
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for rec in records[split]:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        write_label_table(
            out / f"{split}_labels.csv",
            media_key[:-1],
            [(c["id"], c["file"], f.labels()) for c, f in zip(cases, findings) if c["split"] == split],
        )
    with open(out / "cases.jsonl", "w", encoding="utf-8") as fh:
        for info in cases:
            fh.write(json.dumps(info, ensure_ascii=False) + "\n")
    summary = {
        "generator": "medvl.data.synth",
        "kind": kind,
        "n": n,
        "seed": seed,
        "dicom": dicom,
        "geometry": geometry.__dict__,
        "train_format": train_format,
        "nodule_diameter_mm": [lo, hi],
        "splits": {s: {"cases": splits.count(s), "records": len(records[s])} for s in SPLITS},
        "question_types": {"closed": list(CLOSED_TYPES), "open": list(OPEN_TYPES)},
    }
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info(
        "wrote %d %s cases (%s) to %s", n, kind, ", ".join(f"{s}: {len(records[s])} records" for s in SPLITS), out
    )
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl data synth``.

    Args:
        parser: the sub-command parser to fill.
    """
    parser.add_argument("--kind", choices=KINDS, default="2d", help="2d radiographs or 3d CT volumes")
    parser.add_argument("--n", type=int, default=200, help="number of cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--dicom", action="store_true", help="2D: write DICOM DX instead of 16-bit PNG")
    parser.add_argument("--size", type=int, default=None, help="2D image size in pixels (default 256)")
    parser.add_argument("--spacing", type=float, default=None, help="2D pixel spacing in mm (default 1.4)")
    parser.add_argument(
        "--nodule-mm",
        default=None,
        metavar="MIN,MAX",
        help=f"nodule diameters in mm, drawn uniformly (default {NODULE_DIAMETER_MM[0]:g},{NODULE_DIAMETER_MM[1]:g})",
    )
    parser.add_argument("--workers", type=int, default=1, help="rendering processes (same output for any number)")
    parser.add_argument(
        "--train-format",
        choices=TRAIN_FORMATS,
        default="single",
        help="grouped: training records are conversations of independent questions (one per "
        "finding; reports alone); validation/test stay single questions",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``medvl data synth``.

    Args:
        args: parsed arguments (see add_arguments).
    """
    geometry = None
    if args.kind == "2d" and (args.size or args.spacing):
        geometry = Geometry2D(size=args.size or 256, spacing=args.spacing or 1.4)
    sizes = NODULE_DIAMETER_MM
    if args.nodule_mm:
        try:
            sizes = tuple(float(v) for v in args.nodule_mm.split(","))
        except ValueError:
            sizes = ()
        if len(sizes) != 2:
            raise ValueError(f"--nodule-mm takes MIN,MAX in mm (e.g. 4,12), got {args.nodule_mm!r}")
    summary = synthesize(
        args.kind,
        args.n,
        args.seed,
        args.out,
        dicom=args.dicom,
        geometry=geometry,
        workers=args.workers,
        train_format=args.train_format,
        nodule_diameter_mm=sizes,
    )
    print(json.dumps(summary["splits"]))
    return 0
