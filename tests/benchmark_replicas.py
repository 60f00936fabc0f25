"""Tiny replicas of the public benchmark releases, written in each release's own layout.

Every writer reproduces what the release's own loader code reads (folder structure, file names,
file formats, field names and value conventions: dtypes, shapes, value ranges); the sources are
listed per writer and in ``docs/benchmarks.md``. Content is synthetic (no patient data): images
are drawn phantoms, texts are invented. Each writer returns the folder to pass as ``--data TASK=DIR``.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _phantom(size: tuple[int, int], seed: int, mode: str = "L") -> Image.Image:
    """A grey radiograph-like picture: a bright ellipse (body) with a darker ellipse inside."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 <= 1
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.3, 0.7) * w
    lesion = ((yy - cy) / (0.12 * h)) ** 2 + ((xx - cx) / (0.1 * w)) ** 2 <= 1
    img = np.where(body, 170, 10) - np.where(lesion, 80, 0) + rng.integers(0, 12, size=(h, w))
    grey = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L")
    return grey.convert(mode)


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


# ---------------------------------------------------------------- 2D VQA


def vqa_rad(root: Path) -> Path:
    """OSF release (https://osf.io/89kps/): ``VQA_RAD Dataset Public.json`` + ``VQA_RAD Image Folder/``.

    Fields as in the public JSON (and the rename map of its XLSX twin): ``qid``, ``phrase_type``
    (freeform / para / test_freeform / test_para), ``qid_linked_id``, ``image_case_url``,
    ``image_name`` (``synpic<N>.jpg``), ``image_organ`` (HEAD / CHEST / ABD), ``evaluation``,
    ``question``, ``question_rephrase``, ``question_relation``, ``question_frame``,
    ``question_type``, ``answer`` (string or number), ``answer_type`` (CLOSED / OPEN, sometimes with
    a trailing space). Images: JPEG.
    """
    out = root / "VQA_RAD"
    images = {"synpic54610.jpg": "CHEST", "synpic29265.jpg": "HEAD", "synpic31716.jpg": "ABD"}
    for k, name in enumerate(images):
        _save(_phantom((120, 100), k, "RGB"), out / "VQA_RAD Image Folder" / name)
    base = {
        "evaluation": "given",
        "question_rephrase": "NULL",
        "question_relation": "NULL",
        "question_frame": "NULL",
        "image_case_url": "https://medpix.nlm.nih.gov/case?id=00000000-0000-0000-0000-000000000000",
    }
    entries = [
        (1, "test_freeform", "synpic54610.jpg", "Is there a pneumothorax?", "No", "CLOSED", "PRES"),
        (2, "test_para", "synpic54610.jpg", "Is a pneumothorax present?", "No", "CLOSED ", "PRES"),
        (3, "test_freeform", "synpic29265.jpg", "How many lesions are seen?", 2, "OPEN", "COUNT"),
        (4, "test_freeform", "synpic31716.jpg", "Where is the mass?", "right lower quadrant", "OPEN", "POS"),
        (5, "freeform", "synpic31716.jpg", "Is this an MRI?", "Yes", "CLOSED", "MODALITY"),
    ]
    data = [
        {
            "qid": qid,
            "phrase_type": phrase,
            "qid_linked_id": f"{qid:04d}-0",
            "image_name": img,
            "image_organ": images[img],
            "question": q,
            "answer": a,
            "answer_type": at,
            "question_type": qt,
            **base,
        }
        for qid, phrase, img, q, a, at, qt in entries
    ]
    (out / "VQA_RAD Dataset Public.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    return out


def slake(root: Path) -> Path:
    """SLAKE 1.0 (https://www.med-vqa.com/slake/): ``Slake1.0/{train,validate,test}.json`` + ``imgs/xmlab<N>/``.

    Entries as in the released ``test.json`` (also mirrored in github:xiaoman-zhang/PMC-VQA
    ``Slake1.0/test.json``): ``img_id``, ``img_name``, ``question``, ``answer``, ``q_lang`` (en / zh),
    ``location``, ``modality``, ``answer_type``, ``base_type``, ``triple``, ``qid``, ``content_type``.
    Each image folder holds ``source.jpg`` (plus ``mask.png`` and ``detection.json``).
    """
    out = root / "Slake1.0"
    for img_id, mode in ((102, "RGB"), (13, "RGB")):
        folder = out / "imgs" / f"xmlab{img_id}"
        _save(_phantom((96, 96), img_id, mode), folder / "source.jpg")
        _save(Image.fromarray(np.zeros((96, 96), np.uint8)), folder / "mask.png")
        (folder / "detection.json").write_text("[]", encoding="utf-8")

    def entry(qid, img_id, q, a, lang, loc, mod, at, ct):
        return {
            "img_id": img_id,
            "img_name": f"xmlab{img_id}/source.jpg",
            "question": q,
            "answer": a,
            "q_lang": lang,
            "location": loc,
            "modality": mod,
            "answer_type": at,
            "base_type": "vqa",
            "triple": ["vhead", "_", "_"],
            "qid": qid,
            "content_type": ct,
        }

    test = [
        entry(11934, 102, "What modality is used to take this image?", "CT", "en", "Lung", "CT", "OPEN", "Modality"),
        entry(11938, 102, "Does the picture contain liver?", "No", "en", "Lung", "CT", "CLOSED", "Organ"),
        entry(
            11975, 13, "Is there any abnormality in the spleen?", "No", "en", "Abdomen", "MRI", "CLOSED", "Abnormality"
        ),
        entry(12934, 102, "这张图片的成像方式是什么?", "CT", "zh", "Lung", "CT", "OPEN", "Modality"),
        entry(12938, 102, "图中包含肝脏吗?", "否", "zh", "Lung", "CT", "CLOSED", "Organ"),
        entry(12975, 13, "脾脏有异常吗?", "否", "zh", "Abdomen", "MRI", "CLOSED", "Abnormality"),
    ]
    for split, rows in (("test", test), ("train", test[:1]), ("validate", test[1:2])):
        (out / f"{split}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return out


def pathvqa(root: Path) -> Path:
    """PathVQA (github:UCSD-AI4H/PathVQA, ``pvqa.zip``): ``qas/<split>/<split>_qa.pkl`` + ``images/<split>/``.

    The pickle is a list of dicts ``{"image": "test_0001", "question": ..., "answer": ...}`` (image
    stem without extension); images are RGB JPEGs ``images/test/test_0001.jpg``; ``qas/`` also holds
    ``ans2label.pkl`` / ``qid2q.pkl`` (not read).
    """
    out = root / "pvqa"
    for k in (1, 2):
        _save(_phantom((90, 110), 40 + k, "RGB"), out / "images" / "test" / f"test_{k:04d}.jpg")
    qa = [
        {"image": "test_0001", "question": "Is this a malignant tumor?", "answer": "yes"},
        {"image": "test_0001", "question": "What is present?", "answer": "necrosis"},
        {"image": "test_0002", "question": "Does this show fibrosis?", "answer": "no"},
    ]
    (out / "qas" / "test").mkdir(parents=True)
    with open(out / "qas" / "test" / "test_qa.pkl", "wb") as fh:
        pickle.dump(qa, fh)
    with open(out / "qas" / "ans2label.pkl", "wb") as fh:
        pickle.dump({"yes": 0, "no": 1, "necrosis": 2}, fh)
    return out


def pmc_vqa(root: Path) -> Path:
    """PMC-VQA (https://huggingface.co/datasets/xmcmic/PMC-VQA): ``test_2.csv`` (version 2) and
    ``test_clean.csv`` (version 1) + ``images/``.

    Version 2 in the column order MedEvalKit unpacks (``index, Figure_path, Caption, Question,
    Choice A..D, Answer, split``); version 1 as the dataset card shows (``Figure_path, Question,
    Answer, Choice A..D, Answer_label``). Choices carry the ``"A:"`` prefix, with a leading space in
    version 2 as PMC-VQA's own test loader expects (``' A:'``).
    """
    out = root / "PMC-VQA"
    for name in ("PMC1064097_F1.jpg", "PMC8253867_Fig2_41.jpg"):
        _save(_phantom((80, 120), len(name), "RGB"), out / "images" / name)
    _write_csv(
        out / "test_2.csv",
        [
            "index",
            "Figure_path",
            "Caption",
            "Question",
            "Choice A",
            "Choice B",
            "Choice C",
            "Choice D",
            "Answer",
            "split",
        ],
        [
            [
                0,
                "PMC8253867_Fig2_41.jpg",
                "Axial CT of the chest.",
                "Which organ shows the lesion?",
                " A:Liver",
                " B:Lung",
                " C:Kidney",
                " D:Spleen",
                "B",
                "test",
            ],
            [
                1,
                "PMC1064097_F1.jpg",
                "Bone scan.",
                "What is the uptake pattern in the breast?",
                " A:Diffuse uptake pattern",
                " B:Focal uptake pattern",
                " C:No uptake pattern",
                " D:Cannot determine from the information given",
                "B",
                "test",
            ],
        ],
    )
    _write_csv(
        out / "test_clean.csv",
        ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"],
        [
            [
                "PMC1064097_F1.jpg",
                "What is the uptake pattern in the breast?",
                "Focal uptake pattern",
                "A:Diffuse uptake pattern",
                "B:Focal uptake pattern",
                "C:No uptake pattern",
                "D:Cannot determine from the information given",
                "B",
            ]
        ],
    )
    return out


def omnimedvqa(root: Path) -> Path:
    """OmniMedVQA (https://huggingface.co/datasets/foreverbeliever/OmniMedVQA, ``OmniMedVQA.zip``):
    ``QA_information/Open-access/<dataset>.json`` + ``Images/<dataset>/...``.

    Entries as MedEvalKit's ``utils/OmniMedVQA/OmniMedVQA.py`` reads them: ``dataset``,
    ``question_id``, ``question_type``, ``question``, ``gt_answer`` (an option text), ``image_path``
    (relative to the release root), ``option_A``..``option_D`` (2 to 4 of them), ``modality_type``
    (a few files say ``modality``).
    """
    out = root / "OmniMedVQA"
    sets = {
        "Chest CT Scan": [
            (
                "Chest CT Scan_1",
                "Disease Diagnosis",
                "What is shown in this CT?",
                "Adenocarcinoma",
                "Images/Chest CT Scan/test/adenocarcinoma/000108.png",
                ["Normal", "Adenocarcinoma", "Squamous cell carcinoma"],
                {"modality_type": "CT(Computed Tomography)"},
            )
        ],
        "ISIC2019": [
            (
                "ISIC2019_3",
                "Modality Recognition",
                "Which imaging technique was used?",
                "Dermoscopy",
                "Images/ISIC2019/ISIC_0000003.jpg",
                ["Dermoscopy", "X-Ray"],
                {"modality": "Dermoscopy"},
            )
        ],
    }
    for dataset, rows in sets.items():
        entries = []
        for qid, qtype, q, gt, rel, options, modality in rows:
            _save(_phantom((64, 64), len(qid), "RGB"), out / rel)
            e = {
                "dataset": dataset,
                "question_id": qid,
                "question_type": qtype,
                "question": q,
                "gt_answer": gt,
                "image_path": rel,
                **{f"option_{c}": o for c, o in zip("ABCD", options)},
                **modality,
            }
            entries.append(e)
        path = out / "QA_information" / "Open-access" / f"{dataset}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries, indent=4), encoding="utf-8")
    return out


# ---------------------------------------------------------------- reports


def mimic_cxr(root: Path) -> Path:
    """MIMIC-CXR in R2Gen's layout (github:cuhksz-nlp/R2Gen ``modules/datasets.py``): ``annotation.json``
    (``{"train", "val", "test"}`` lists of ``id``, ``study_id``, ``subject_id``, ``report``,
    ``image_path`` (one path), ``split``) + ``images/p10/p<subject>/s<study>/<dicom_id>.jpg`` (grey JPEG).
    """
    out = root / "mimic_cxr"
    entries = []
    for k, (subject, study) in enumerate(((10000032, 50414267), (10000764, 57375967))):
        dicom = f"{k:08x}-bde0afdd-112c0b34-7bc16630-4e384014"
        rel = f"p10/p{subject}/s{study}/{dicom}.jpg"
        _save(_phantom((128, 112), 70 + k, "L"), out / "images" / rel)
        entries.append(
            {
                "id": dicom,
                "study_id": study,
                "subject_id": subject,
                "report": "There is no focal consolidation, pleural effusion or pneumothorax. The cardiac "
                "silhouette is normal.",
                "image_path": [rel],
                "split": "test",
            }
        )
    ann = {"train": entries[:1], "val": [], "test": entries}
    (out / "annotation.json").write_text(json.dumps(ann), encoding="utf-8")
    return out


def iu_xray(root: Path) -> Path:
    """IU-Xray in R2Gen's layout: ``annotation.json`` (entries ``id``, ``report``, ``image_path`` = the two
    views ``<id>/0.png`` and ``<id>/1.png``, ``split``) + ``images/<id>/{0,1}.png`` (grey PNG);
    R2Gen's ``IuxrayMultiImageDataset`` opens both views."""
    out = root / "iu_xray"
    entries = []
    for k, sid in enumerate(("CXR2384_IM-0942", "CXR1000_IM-0003")):
        for view in (0, 1):
            _save(_phantom((100, 100 + 20 * view), 90 + 2 * k + view, "L"), out / "images" / sid / f"{view}.png")
        entries.append(
            {
                "id": sid,
                "report": "The heart size and pulmonary vascularity appear within normal limits. "
                "No pneumothorax or pleural effusion is seen.",
                "image_path": [f"{sid}/0.png", f"{sid}/1.png"],
                "split": "test",
            }
        )
    (out / "annotation.json").write_text(
        json.dumps({"train": entries[:1], "val": entries[1:], "test": entries}), encoding="utf-8"
    )
    return out


# Stored CT-RATE values: int16 raw scanner values, HU = slope * v + intercept from the metadata CSV.
CT_RATE_VOLUMES = {"valid_1_a_1.nii.gz": (1.0, -1024.0, 0.75, 1.5), "valid_1_a_2.nii.gz": (1.0, -8192.0, 0.8, 2.0)}


def ct_rate_raw(name: str) -> np.ndarray:
    """The stored (raw) array of a replica volume (x, y, z), int16."""
    slope, intercept, _, _ = CT_RATE_VOLUMES[name]
    x, y, z = np.mgrid[0:40, 40:0:-1, 0:24].astype(np.float64)
    hu = np.where(((x - 20) / 17) ** 2 + ((y - 20) / 14) ** 2 <= 1, 40.0, -1000.0)  # body in air
    hu = np.where(((x - 12) / 5) ** 2 + ((y - 20) / 8) ** 2 <= 1, -850.0, hu)  # a lung
    hu = hu + z * 2.0  # a cranio-caudal gradient that orientation mistakes would flip
    return np.round((hu - intercept) / slope).astype(np.int16)


def ct_rate(root: Path) -> Path:
    """CT-RATE (https://huggingface.co/datasets/ibrahimhamamci/CT-RATE): the ``dataset`` folder with
    ``radiology_text_reports/validation_reports.csv``, ``metadata/validation_metadata.csv`` and
    ``valid/valid_<patient>/valid_<patient>_<scan>/valid_<patient>_<scan>_<reconstruction>.nii.gz``.

    Volumes keep raw stored values (int16) and a header without the voxel size (unit affine);
    the metadata CSV carries ``RescaleSlope``, ``RescaleIntercept``, ``XYSpacing`` (``"[0.75, 0.75]"``)
    and ``ZSpacing``, which CT-CLIP's ``data_inference_nii.py`` applies.
    """
    import nibabel as nib

    out = root / "CT-RATE" / "dataset"
    meta_rows, report_rows = [], []
    for name, (slope, intercept, xy, z) in CT_RATE_VOLUMES.items():
        parts = name.removesuffix(".nii.gz").split("_")
        path = out / "valid" / "_".join(parts[:2]) / "_".join(parts[:3]) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(ct_rate_raw(name), np.eye(4)), path)
        meta_rows.append(
            [
                name,
                "SIEMENS",
                "Thorax",
                "SOMATOM",
                "M",
                "061Y",
                512,
                512,
                24,
                f"[{xy}, {xy}]",
                z,
                intercept,
                slope,
                "HU",
                "[-200.0, -180.0, -150.0]",
                "[1, 0, 0, 0, 1, 0]",
            ]
        )
        report_rows.append(
            [
                name,
                "Not given.",
                "Non-contrast chest CT.",
                "Trachea and both main bronchi are open. No nodule or mass is seen in either lung. ",
                "No acute findings.",
            ]
        )
    _write_csv(
        out / "metadata" / "validation_metadata.csv",
        [
            "VolumeName",
            "Manufacturer",
            "SeriesDescription",
            "ManufacturerModelName",
            "PatientSex",
            "PatientAge",
            "Rows",
            "Columns",
            "NumberofSlices",
            "XYSpacing",
            "ZSpacing",
            "RescaleIntercept",
            "RescaleSlope",
            "RescaleType",
            "ImagePositionPatient",
            "ImageOrientationPatient",
        ],
        meta_rows,
    )
    _write_csv(
        out / "radiology_text_reports" / "validation_reports.csv",
        ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"],
        report_rows,
    )
    return out


# ---------------------------------------------------------------- M3D


def m3d_volume(seed: int) -> np.ndarray:
    """A (1, 32, 256, 256) float32 volume in 0..1, made the way M3D's ``m3d_cap_data_prepare.py`` makes
    them: 8-bit slices / 255, min-max scaled (so min is exactly 0 and max exactly 1)."""
    slices = np.stack([np.asarray(_phantom((256, 256), seed * 100 + d, "L"), np.float32) / 255.0 for d in range(32)])
    vol = slices - slices.min()
    return (vol / max(float(vol.max()), 1e-8))[None].astype(np.float32)


def m3d(root: Path) -> Path:
    """M3D-Data root (M3D's ``Data/data``): ``M3D-VQA/M3D_VQA_test.csv`` + ``M3D_Cap_npy/M3D_Cap.json`` and
    ``M3D_Cap_npy/ct_quizze/<case>/<series>.npy`` + ``text.txt``.

    VQA columns (``Data/process/m3d_vqa_data_generation.py``): ``Image Path``, ``Text``, ``Question Type``
    (1 plane .. 5 location), ``Question``, ``Choice A``..``Choice D``, ``Answer``, ``Answer Choice``; paths
    relative to the data root. ``M3D_Cap.json``: ``{"train", "validation", "test"}`` lists of
    ``{"image", "text"}`` relative to the data root.
    """
    out = root / "M3D"
    cases = [("012518", "Axial_C__portal_venous_phase"), ("000045", "Axial_lung_window")]
    for k, (case, series) in enumerate(cases):
        folder = out / "M3D_Cap_npy" / "ct_quizze" / case
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{series}.npy", m3d_volume(k))
        (folder / "text.txt").write_text("Hypodense lesion in the right hepatic lobe.", encoding="utf-8")
    header = [
        "Image Path",
        "Text",
        "Question Type",
        "Question",
        "Choice A",
        "Choice B",
        "Choice C",
        "Choice D",
        "Answer",
        "Answer Choice",
    ]
    rows = [
        [
            f"M3D_Cap_npy/ct_quizze/{cases[0][0]}/{cases[0][1]}.npy",
            "Hypodense lesion in the right hepatic lobe.",
            1,
            "In which plane is this image taken?",
            "Axial",
            "Sagittal",
            "Coronal",
            "Oblique",
            "Axial",
            "A",
        ],
        [
            f"M3D_Cap_npy/ct_quizze/{cases[1][0]}/{cases[1][1]}.npy",
            "Nodule in the left lung.",
            3,
            "Which organ shows the abnormality?",
            "Liver",
            "Lung",
            "Kidney",
            "Spleen",
            "Lung",
            "B",
        ],
    ]
    _write_csv(out / "M3D-VQA" / "M3D_VQA_test.csv", header, rows)
    caps = [
        {"image": f"M3D_Cap_npy/ct_quizze/{c}/{s}.npy", "text": f"M3D_Cap_npy/ct_quizze/{c}/text.txt"} for c, s in cases
    ]
    (out / "M3D_Cap_npy" / "M3D_Cap.json").write_text(
        json.dumps({"train": caps[:1], "validation": caps[1:], "test": caps}, indent=4), encoding="utf-8"
    )
    return out


WRITERS = {
    "vqa_rad": vqa_rad,
    "slake": slake,
    "slake_en": slake,
    "slake_zh": slake,
    "pathvqa": pathvqa,
    "pmc_vqa": pmc_vqa,
    "omnimedvqa": omnimedvqa,
    "mimic_cxr": mimic_cxr,
    "iu_xray": iu_xray,
    "ct_rate": ct_rate,
    "m3d_vqa_closed": m3d,
    "m3d_vqa_open": m3d,
    "m3d_cap": m3d,
}
