"""A synthetic phantom data set: ``medvl data synth --kind 2d|3d --n N --seed S --out DIR [--dicom]``.

Cases (findings drawn by :func:`~medvl.tools.synth.findings.random_findings`, rendered by
:mod:`medvl.tools.synth.phantoms`) are split train/validation/test by case; each case gets its
bilingual questions and report (:mod:`medvl.tools.synth.text`) as medvl's native records.

Output layout::

    DIR/dataset.json          kind, seed, n, geometry, split sizes, question counts
    DIR/cases.jsonl           one line per case: id, split, file, findings (the ground truth)
    DIR/{train,validation,test}.jsonl   native records (messages, images|volumes, meta; meta.labels:
                              the case's finding labels, for stage 0)
    DIR/{train,validation,test}_labels.csv   label tables: one row per case (image|volume, id, labels)
    DIR/images/*.png|*.dcm or DIR/volumes/*.nii.gz
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medvl.tools.synth.findings import FINDING_LABELS, NODULE_DIAMETER_MM, CaseFindings, random_findings
from medvl.tools.synth.phantoms import (
    ORIENTATIONS,
    Geometry2D,
    Geometry3D,
    render_ct,
    render_radiograph,
    save_dicom_dx,
    save_nifti,
    save_png16,
)
from medvl.tools.synth.text import (
    CLOSED_TYPES,
    LANGUAGES,
    OPEN_TYPES,
    QA,
    answer_for,
    balance_keep_probabilities,
    make_question,
)

logger = logging.getLogger(__name__)

KINDS = ("2d", "3d")
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
TRAIN_FORMATS = ("single", "grouped")

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


def case_questions(f: CaseFindings, rng: np.random.Generator, keep: dict[str, dict[str, float]]) -> list[QA]:
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
        answer = answer_for(f, qtype, "en")  # the language-independent key of the balance table
        if qtype in keep and answer is not None and u >= keep[qtype].get(answer, 1.0):
            continue
        out.append(qa)
    return out


def finding_family(question_type: str) -> str:
    """The finding a question is about ("nodule", "effusion", "heart") or "report" (all of them).

    Args:
        question_type: one of CLOSED_TYPES or OPEN_TYPES.
    """
    return "report" if question_type == "report" else question_type.split("_")[0]


def group_independent(qas: list[QA], rng: np.random.Generator) -> list[list[QA]]:
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
    families: dict[str, list[QA]] = {}
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


def _record(
    case_id: str, turns: list[QA], marker: str, media_key: str, rel: str, labels: dict[str, int]
) -> dict[str, Any]:
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


# (kind, case index, seed, output folder, DICOM?, geometry, findings as a dict, split)
RenderJob = tuple[str, int, int, str, bool, Geometry2D | Geometry3D, dict[str, Any], str]


def _render_case(job: RenderJob) -> dict[str, Any]:
    """Render and write one case (runs in a worker process when ``workers`` > 1)."""
    _, i, seed, out, dicom, geometry, findings_dict, split = job
    f = CaseFindings.from_dict(findings_dict)
    case_id = f"case{i:05d}"
    render_rng = _case_rng(seed, i, 1)
    info: dict[str, Any] = {"id": case_id, "split": split, "findings": findings_dict}
    if isinstance(geometry, Geometry2D):  # synthesize() checked that the geometry fits the kind
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
    if not isinstance(geometry, Geometry2D if kind == "2d" else Geometry3D):
        raise ValueError(f"--kind {kind} needs a Geometry{kind.upper()}, got {type(geometry).__name__}")
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
        "generator": "medvl.tools.synth",
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
