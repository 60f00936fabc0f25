"""Synthetic chest phantoms: PA radiographs (2D) and chest CT volumes (3D) rendered from a case's findings.

2D cases are posteroanterior chest-radiograph-like projections (16-bit PNG, or DICOM DX with
pixel spacing and patient orientation tags); 3D cases are chest-CT-like volumes in Hounsfield
units (NIfTI, int16, a real affine: spacing and one of several storage orientations). Each case is
drawn from a random :class:`~medvl.tools.synth.findings.CaseFindings` (nodules, pleural effusion,
heart size); :mod:`medvl.tools.synth.dataset` writes them as a data set with their questions.

Orientation. Findings are the *patient's* sides. The 2D image follows the radiological display of
a PA film: column 0 is the patient's right, so a left-lung nodule sits in the image's right half.
3D volumes are rendered in world (RAS+) millimetres through their affine, so whatever storage
orientation a case gets, reorienting with the affine (the volume processor's "SPL") puts the
patient's left at large W. Mirroring the voxels without touching the affine mirrors the patient:
that case's answers are :func:`~medvl.tools.synth.findings.mirror_findings` of the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medvl.tools.synth.findings import CaseFindings, Nodule

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
    for sign in (-1, 1):  # the patient's right, then left
        for k in range(9):
            y0 = a.lung_cy - a.lung_ay + 8 + k * 2 * a.lung_ay / 9.5
            centre = y0 - 0.0035 * (x * sign - 10) ** 2 + 0.5 * np.abs(x)
            rib = np.exp(-0.5 * ((y - centre) / 3.0) ** 2) * ((x * sign) > 12) * ((x * sign) < body_ax * 0.9)
            density += MU_BONE_EXCESS * 5 * rib
        clav = np.exp(-0.5 * ((y - (a.lung_cy - a.lung_ay + 5 - 0.25 * np.abs(x))) / 4.0) ** 2)
        density += MU_BONE_EXCESS * 8 * clav * ((x * sign) > 5) * ((x * sign) < 120)
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
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    sop_class = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
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
