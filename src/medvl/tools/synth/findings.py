"""The ground truth of a synthetic chest case: lung nodules, pleural effusion, heart size.

A :class:`CaseFindings` is everything a phantom shows: nodules (side, lobe, diameter in mm), pleural
effusion (none/left/right/both) and heart size (normal/enlarged). The rendered image
(:mod:`medvl.tools.synth.phantoms`) and every question and report about it
(:mod:`medvl.tools.synth.text`) derive from it, so they can never disagree.

Sides are always the *patient's* sides. Where they land in the picture is the renderer's business
(radiological convention: patient's left on the image's right).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SIDES = ("left", "right")
EFFUSION_CHOICES = ("none", "left", "right", "both")
HEART_CHOICES = ("normal", "enlarged")
# Lobes per lung: the left lung has no middle lobe (the lingula belongs to the upper lobe).
LOBES = {"right": ("upper", "middle", "lower"), "left": ("upper", "lower")}
NODULE_DIAMETER_MM = (5.0, 30.0)  # "nodule" is by definition <= 30 mm; below ~5 mm nobody reports it
MAX_NODULES = 3

# Multi-hot labels of a case (CaseFindings.labels), the patient's sides.
FINDING_LABELS = (
    "nodule",
    "nodules_1",
    "nodules_2",
    "nodules_3",
    "nodule_left",
    "nodule_right",
    "effusion_left",
    "effusion_right",
    "heart_enlarged",
)


@dataclass
class Nodule:
    """One lung nodule.

    Args:
        side: the patient's side, "left" or "right".
        lobe: "upper", "middle" (right lung only) or "lower".
        diameter_mm: diameter in millimetres.
        offset: position inside the lobe's region, each coordinate in [0, 1] (renderer-defined).
    """

    side: str
    lobe: str
    diameter_mm: float
    offset: tuple[float, float, float] = (0.5, 0.5, 0.5)


@dataclass
class CaseFindings:
    """Ground truth of one synthetic chest case.

    Args:
        nodules: 0 to 3 nodules.
        effusion: "none", "left", "right" or "both".
        heart: "normal" or "enlarged".
    """

    nodules: list[Nodule] = field(default_factory=list)
    effusion: str = "none"
    heart: str = "normal"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseFindings:
        return cls(
            nodules=[
                Nodule(n["side"], n["lobe"], float(n["diameter_mm"]), tuple(n.get("offset", (0.5, 0.5, 0.5))))
                for n in d.get("nodules", [])
            ],
            effusion=d.get("effusion", "none"),
            heart=d.get("heart", "normal"),
        )

    @property
    def nodule_sides(self) -> str:
        """ "none", "left", "right" or "both": where the nodules are."""
        sides = {n.side for n in self.nodules}
        if not sides:
            return "none"
        return "both" if len(sides) == 2 else sides.pop()

    def labels(self) -> list[int]:
        """0/1 finding labels in the order of :data:`FINDING_LABELS` (for encoder pretraining)."""
        sides = {n.side for n in self.nodules}
        count = len(self.nodules)
        return [
            int(v)
            for v in (
                count > 0,
                count == 1,
                count == 2,
                count == 3,
                "left" in sides,
                "right" in sides,
                self.effusion in ("left", "both"),
                self.effusion in ("right", "both"),
                self.heart == "enlarged",
            )
        ]


def random_findings(
    rng: np.random.Generator, nodule_diameter_mm: tuple[float, float] = NODULE_DIAMETER_MM
) -> CaseFindings:
    """Draw a finding description.

    The distribution is chosen so that the yes/no questions are balanced a priori (half the cases
    have nodules, half an effusion, half an enlarged heart): a model that ignores the image
    scores about chance.

    Args:
        rng: the random generator (the only source of randomness, for determinism).
        nodule_diameter_mm: (smallest, largest) nodule diameter, drawn uniformly.
    """
    count = 0 if rng.random() < 0.5 else int(rng.integers(1, MAX_NODULES + 1))
    nodules = []
    for _ in range(count):
        side = SIDES[int(rng.integers(2))]
        lobe = LOBES[side][int(rng.integers(len(LOBES[side])))]
        diameter = round(float(rng.uniform(*nodule_diameter_mm)), 1)
        offset = rng.random(3)
        nodules.append(Nodule(side, lobe, diameter, (float(offset[0]), float(offset[1]), float(offset[2]))))
    effusion = "none" if rng.random() < 0.5 else EFFUSION_CHOICES[1 + int(rng.integers(3))]
    heart = HEART_CHOICES[int(rng.integers(2))]
    return CaseFindings(nodules=nodules, effusion=effusion, heart=heart)


def mirror_side(side: str) -> str:
    """Swap left and right; "both" and "none" stay.

    Args:
        side: "left", "right", "both" or "none".
    """
    return {"left": "right", "right": "left"}.get(side, side)


def mirror_findings(f: CaseFindings) -> CaseFindings:
    """The findings of the left-right mirrored patient (a right middle-lobe nodule has no left twin:
    it becomes a left upper-lobe (lingula) nodule).

    Args:
        f: the original findings.
    """
    nodules = []
    for n in f.nodules:
        side = mirror_side(n.side)
        lobe = n.lobe if n.lobe in LOBES[side] else "upper"
        nodules.append(Nodule(side, lobe, n.diameter_mm, n.offset))
    return CaseFindings(nodules=nodules, effusion=mirror_side(f.effusion), heart=f.heart)
