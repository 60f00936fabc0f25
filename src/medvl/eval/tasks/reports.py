"""Report generation: MIMIC-CXR and IU-Xray (R2Gen annotation files), CT-RATE (reports CSV + volumes).

Scored with the ``report`` metrics (pycocoevalcap BLEU/METEOR/ROUGE-L/CIDEr-D, rouge-score,
sacrebleu). Generation: greedy, at most 256 new tokens (R2Gen-style reports are ~60 words).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from medvl.errors import MedVLDataError
from medvl.eval.tasks.base import make_record, media_path, require
from medvl.utils.files import read_json

if TYPE_CHECKING:
    from medvl.data.records import Record

CXR_PROMPT = "Describe the findings of this chest X-ray."
CT_PROMPT = "Write the findings section of the radiology report for this chest CT."


def load_r2gen(root: Path, split: str, task: str) -> list[Record]:
    """R2Gen-style ``annotation.json`` (``{"train": [...], "val": [...], "test": [...]}``).

    Each entry: ``id``, ``report``, ``image_path`` (list of paths relative to ``images/``). IU-Xray
    studies have two views (both images go into the prompt), MIMIC-CXR entries one.

    Args:
        root: folder with ``annotation.json`` and ``images/``.
        split: "test", "val" or "train".
        task: "mimic_cxr" or "iu_xray" (id prefix, messages).
    """
    path = root / "annotation.json"
    ann = read_json(path, f"task {task!r} file")
    if split not in ann:
        raise MedVLDataError(
            f"task {task!r}: split {split!r} not in annotation.json (has {', '.join(ann)})", path=str(path)
        )
    records = []
    for i, e in enumerate(ann[split]):
        where = f"{split}[{i}] (id {e.get('id')})"
        require(e, ("id", "report", "image_path"), where, path)
        rels = e["image_path"] if isinstance(e["image_path"], list) else [e["image_path"]]
        images = [media_path(root / "images", rel, where, path) for rel in rels]
        records.append(
            make_record(
                f"{task}-{e['id']}", CXR_PROMPT, str(e["report"]).strip(), marker="<image>", media=images, source=task
            )
        )
    return records


def load_mimic_cxr(root: Path, split: str) -> list[Record]:
    """MIMIC-CXR in R2Gen's format.

    Source: MIMIC-CXR-JPG on PhysioNet (https://physionet.org/content/mimic-cxr-jpg/), credentialed
    access under the PhysioNet Credentialed Health Data License 1.5.0; R2Gen's
    ``annotation.json`` (https://github.com/zhjohnchan/R2Gen) defines the splits.

    Args:
        root: folder with ``annotation.json`` and ``images/``.
        split: "test", "val" or "train".
    """
    return load_r2gen(root, split, "mimic_cxr")


def load_iu_xray(root: Path, split: str) -> list[Record]:
    """IU-Xray (Open-i, Demner-Fushman et al. 2016) in R2Gen's format.

    Source: https://openi.nlm.nih.gov/ (Indiana University chest X-ray collection; licence CC BY-NC-ND
    4.0 per Open-i) with R2Gen's ``annotation.json`` (two views per study).

    Args:
        root: folder with ``annotation.json`` and ``images/``.
        split: "test", "val" or "train".
    """
    return load_r2gen(root, split, "iu_xray")


def ct_rate_volume_path(root: Path, split_dir: str, volume_name: str) -> Path:
    """Where CT-RATE stores ``VolumeName``: ``valid_1_a_1.nii.gz`` -> ``valid/valid_1/valid_1_a/valid_1_a_1.nii.gz``.

    Args:
        root: the ``dataset`` folder of the release.
        split_dir: "valid" or "train".
        volume_name: the CSV's ``VolumeName``.
    """
    parts = volume_name.split("_")
    if len(parts) < 4:
        raise ValueError(f"unexpected CT-RATE VolumeName {volume_name!r} (expected like valid_1_a_1.nii.gz)")
    patient = "_".join(parts[:2])
    scan = "_".join(parts[:3])
    return root / split_dir / patient / scan / volume_name


def read_ct_rate_metadata(path: Path) -> dict[str, dict]:
    """``VolumeName`` -> ``{"rescale": [slope, intercept], "spacing": [xy, xy, z]}`` from CT-RATE's metadata CSV.

    The release's NIfTI files keep the scanner's stored values and no reliable voxel size; its
    ``metadata/{train,validation}_metadata.csv`` has ``RescaleSlope``, ``RescaleIntercept``,
    ``XYSpacing`` (a list written like ``"[0.75, 0.75]"``) and ``ZSpacing`` per volume. CT-CLIP's loader
    (``scripts/data_inference_nii.py``, ``nii_img_to_tensor``) computes ``slope * v + intercept`` and
    resamples from (z, xy, xy) spacing; medvl passes the same values to ``load_volume`` (array axes
    i, j, k = x, y, z, as nibabel reads the files).

    Args:
        path: the metadata CSV.
    """
    if not path.is_file():
        raise MedVLDataError(
            "task 'ct_rate': metadata CSV not found (needed for the rescale slope/intercept and "
            "voxel spacing of each volume)",
            path=str(path),
        )
    out = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            where = f"row {i + 2} ({row.get('VolumeName')})"
            require(row, ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"), where, path)
            try:
                xy = [float(v) for v in row["XYSpacing"].strip().strip("[]()").replace(" ", "").split(",") if v]
                slope, intercept = float(row["RescaleSlope"]), float(row["RescaleIntercept"])
                z = float(row["ZSpacing"])
            except ValueError as e:
                raise MedVLDataError(f"unreadable rescale/spacing value ({e})", record=where, path=str(path)) from None
            if len(xy) not in (1, 2):
                raise MedVLDataError(
                    f"XYSpacing {row['XYSpacing']!r} is not one or two numbers", record=where, path=str(path)
                )
            out[row["VolumeName"].strip()] = {"rescale": [slope, intercept], "spacing": [xy[0], xy[-1], z]}
    return out


def load_ct_rate(root: Path, split: str) -> list[Record]:
    """CT-RATE (Hamamci et al. 2024) chest CT volumes with reports.

    Source: https://huggingface.co/datasets/ibrahimhamamci/CT-RATE (``dataset/radiology_text_reports/
    {validation,train}_reports.csv`` with ``VolumeName``, ``ClinicalInformation_EN``, ``Technique_EN``,
    ``Findings_EN``, ``Impressions_EN``; ``dataset/metadata/{validation,train}_metadata.csv``;
    ``dataset/{valid,train}/<split>_<patient>/<split>_<patient>_<scan>/<VolumeName>.nii.gz``); licence
    CC BY-NC-SA 4.0, access after accepting the terms. The reference is ``Findings_EN``. Each volume is
    read with the metadata CSV's rescale slope/intercept and XY/Z spacing (see
    :func:`read_ct_rate_metadata`); the model's volume processor then resamples and windows it.

    Args:
        root: the release's ``dataset`` folder.
        split: "validation" (the public test split) or "train".
    """
    split_dir = {"validation": "valid", "train": "train"}.get(split)
    if split_dir is None:
        raise ValueError(f"CT-RATE split {split!r}; valid: validation, train")
    path = root / "radiology_text_reports" / f"{split}_reports.csv"
    if not path.is_file():
        raise MedVLDataError("task 'ct_rate': reports CSV not found", path=str(path))
    meta_path = root / "metadata" / f"{split}_metadata.csv"
    metadata = read_ct_rate_metadata(meta_path)
    records = []
    with open(path, newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            where = f"row {i + 2} ({row.get('VolumeName')})"
            require(row, ("VolumeName", "Findings_EN"), where, path)
            try:
                vol = ct_rate_volume_path(root, split_dir, row["VolumeName"])
            except ValueError as e:
                raise MedVLDataError(str(e), record=where, path=str(path)) from None
            vol_path = media_path(vol.parent, vol.name, where, path)
            load = metadata.get(row["VolumeName"].strip())
            if load is None:
                raise MedVLDataError(
                    f"volume {row['VolumeName']} has no row in {meta_path.name}", record=where, path=str(meta_path)
                )
            name = row["VolumeName"].removesuffix(".nii.gz")
            records.append(
                make_record(
                    f"ct_rate-{name}",
                    CT_PROMPT,
                    row["Findings_EN"].strip(),
                    marker="<volume>",
                    media=[vol_path],
                    source="ct_rate",
                    volume_load=load,
                    impression=(row.get("Impressions_EN") or "").strip(),
                )
            )
    return records
