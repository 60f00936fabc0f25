"""Benchmark adapters read tiny fixtures written here in each release's own format."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from medvl.errors import MedVLDataError
from medvl.eval.tasks import available_tasks, data_fingerprint, get_task


def png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


def npy(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.zeros((1, 4, 8, 8), dtype=np.float32))
    return path


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def user_text(rec):
    return rec.messages[0]["content"]


def test_registry():
    assert {"vqa_rad", "slake", "pathvqa", "pmc_vqa", "omnimedvqa", "mimic_cxr", "iu_xray", "ct_rate",
            "m3d_vqa_closed", "m3d_vqa_open", "m3d_cap", "synth_vqa", "synth_report"} <= set(available_tasks())
    with pytest.raises(ValueError, match="unknown task 'rad'.*valid: .*vqa_rad"):
        get_task("rad")
    for name in available_tasks():
        t = get_task(name)
        assert t.protocol and t.source and t.generation["do_sample"] is False


def test_vqa_rad(tmp_path):
    png(tmp_path / "VQA_RAD Image Folder" / "synpic1.jpg")
    data = [
        {"qid": 1, "image_name": "synpic1.jpg", "image_organ": "CHEST", "answer": "Yes", "answer_type": "CLOSED",
         "question_type": "PRES", "question": "Is there a mass?", "phrase_type": "test_freeform"},
        {"qid": 2, "image_name": "synpic1.jpg", "image_organ": "CHEST", "answer": 2, "answer_type": "OPEN",
         "question_type": "COUNT", "question": "How many?", "phrase_type": "freeform"},
    ]
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(data))
    task = get_task("vqa_rad")
    recs = task.load(tmp_path)
    assert [r.id for r in recs] == ["vqa_rad-1"]
    assert user_text(recs[0]) == "<image>\nIs there a mass?\nAnswer the question using a single word or phrase."
    assert recs[0].meta["reference"] == "Yes" and recs[0].meta["answer_type"] == "CLOSED"
    assert recs[0].images == [str((tmp_path / "VQA_RAD Image Folder" / "synpic1.jpg").resolve())]
    train = task.load(tmp_path, split="train")
    assert train[0].meta["reference"] == "2" and train[0].meta["answer_type"] == "OPEN"


def test_vqa_rad_missing_image_names_entry(tmp_path):
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps([
        {"qid": 7, "image_name": "nope.jpg", "answer": "yes", "answer_type": "CLOSED", "question": "q",
         "phrase_type": "test_para"}]))
    with pytest.raises(MedVLDataError, match="entry 0 \\(qid 7\\).*media file not found"):
        get_task("vqa_rad").load(tmp_path)


def test_slake_bilingual(tmp_path):
    png(tmp_path / "imgs" / "xmlab1" / "source.jpg")
    data = [{"qid": 11, "img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Is this a CT?", "answer": "Yes",
             "q_lang": "en", "answer_type": "CLOSED", "modality": "CT", "content_type": "Modality"},
            {"qid": 12, "img_id": 1, "img_name": "xmlab1/source.jpg", "question": "这是CT吗？", "answer": "是",
             "q_lang": "zh", "answer_type": "CLOSED", "modality": "CT", "content_type": "Modality"}]
    (tmp_path / "test.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    both = get_task("slake").load(tmp_path)
    assert [r.meta["language"] for r in both] == ["en", "zh"] and get_task("slake").bilingual
    zh = get_task("slake_zh").load(tmp_path)
    assert [r.id for r in zh] == ["slake-12"] and zh[0].meta["reference"] == "是"


def test_pathvqa_pickle(tmp_path):
    png(tmp_path / "images" / "test" / "test_0001.jpg")
    qa = [{"image": "test_0001", "question": "Is this tumor?", "answer": "yes"},
          {"image": "test_0001", "question": "What is seen?", "answer": "necrosis"}]
    (tmp_path / "qas" / "test").mkdir(parents=True)
    with open(tmp_path / "qas" / "test" / "test_qa.pkl", "wb") as fh:
        pickle.dump(qa, fh)
    recs = get_task("pathvqa").load(tmp_path)
    assert [r.meta["answer_type"] for r in recs] == ["CLOSED", "OPEN"]
    assert recs[1].meta["reference"] == "necrosis"


def test_pmc_vqa_csv(tmp_path):
    png(tmp_path / "images" / "PMC1_fig1.jpg")
    write_csv(tmp_path / "test_2.csv", [{"Figure_path": "PMC1_fig1.jpg", "Question": "Which organ?", "Answer": "Liver",
                                         "Choice A": "A:Lung ", "Choice B": "B:Liver ", "Choice C": "C:Heart ",
                                         "Choice D": "D:Brain ", "Answer_label": "B"}])
    rec = get_task("pmc_vqa").load(tmp_path)[0]
    assert rec.meta["options"] == ["Lung", "Liver", "Heart", "Brain"] and rec.meta["answer_choice"] == "B"
    assert user_text(rec).startswith("<image>\nWhich organ?\nA. Lung\nB. Liver\nC. Heart\nD. Brain\nAnswer with")


def test_omnimedvqa(tmp_path):
    png(tmp_path / "Images" / "Chest CT Scan" / "a.png")
    qa = [{"dataset": "Chest CT Scan", "question_id": "ct_1", "question_type": "Disease Diagnosis",
           "question": "What is shown?", "gt_answer": "Adenocarcinoma", "image_path": "Images/Chest CT Scan/a.png",
           "option_A": "Normal", "option_B": "Adenocarcinoma", "modality_type": "CT"}]
    (tmp_path / "QA_information" / "Open-access").mkdir(parents=True)
    (tmp_path / "QA_information" / "Open-access" / "Chest CT Scan.json").write_text(json.dumps(qa))
    rec = get_task("omnimedvqa").load(tmp_path)[0]
    assert rec.meta["answer_choice"] == "B" and rec.meta["options"] == ["Normal", "Adenocarcinoma"]


@pytest.mark.parametrize("task,views", [("iu_xray", 2), ("mimic_cxr", 1)])
def test_r2gen_annotation(tmp_path, task, views):
    rels = [f"CXR1/{i}.png" for i in range(views)]
    for rel in rels:
        png(tmp_path / "images" / rel)
    ann = {"train": [], "val": [], "test": [{"id": "CXR1", "report": "The lungs are clear.", "image_path": rels,
                                             "split": "test"}]}
    (tmp_path / "annotation.json").write_text(json.dumps(ann))
    rec = get_task(task).load(tmp_path)[0]
    assert len(rec.images) == views and user_text(rec).count("<image>") == views
    assert rec.meta["reference"] == "The lungs are clear."
    with pytest.raises(MedVLDataError, match="split 'dev' not in annotation.json"):
        get_task(task).load(tmp_path, split="dev")


def test_ct_rate(tmp_path):
    vol = tmp_path / "valid" / "valid_1" / "valid_1_a" / "valid_1_a_1.nii.gz"
    import nibabel as nib

    vol.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), vol)
    write_csv(tmp_path / "radiology_text_reports" / "validation_reports.csv",
              [{"VolumeName": "valid_1_a_1.nii.gz", "ClinicalInformation_EN": "", "Technique_EN": "",
                "Findings_EN": "No nodules. ", "Impressions_EN": "Normal."}])
    rec = get_task("ct_rate").load(tmp_path)[0]
    assert rec.volumes == [str(vol.resolve())] and rec.meta["reference"] == "No nodules."
    assert user_text(rec).startswith("<volume>\n")


def test_m3d_vqa_and_cap(tmp_path):
    npy(tmp_path / "ct_quizze" / "001" / "Axial.npy")
    row = {"Image Path": "ct_quizze/001/Axial.npy", "Text": "", "Question Type": "1", "Question": "Which plane?",
           "Choice A": "Axial", "Choice B": "Sagittal", "Choice C": "Coronal", "Choice D": "Oblique",
           "Answer": "Axial", "Answer Choice": "A"}
    write_csv(tmp_path / "M3D-VQA" / "M3D_VQA_test.csv", [row])
    closed = get_task("m3d_vqa_closed").load(tmp_path)[0]
    assert user_text(closed) == "<volume>\nWhich plane? Choices: A. Axial B. Sagittal C. Coronal D. Oblique"
    assert closed.meta["answer_choice"] == "A" and closed.meta["reference"] == "A. Axial"
    opened = get_task("m3d_vqa_open").load(tmp_path)[0]
    assert user_text(opened) == "<volume>\nWhich plane?" and opened.meta["reference"] == "Axial"
    (tmp_path / "ct_case" / "001").mkdir(parents=True)
    npy(tmp_path / "ct_case" / "001" / "Axial_C.npy")
    (tmp_path / "ct_case" / "001" / "text.txt").write_text("Liver lesion.\n")
    (tmp_path / "M3D_Cap.json").write_text(json.dumps({"test": [{"image": "ct_case/001/Axial_C.npy",
                                                                  "text": "ct_case/001/text.txt"}]}))
    cap = get_task("m3d_cap").load(tmp_path)[0]
    assert cap.meta["reference"] == "Liver lesion." and len(cap.volumes) == 1


def test_synth_tasks(tmp_path):
    from medvl.data.synth import synthesize

    synthesize("2d", 4, 0, tmp_path)
    vqa = get_task("synth_vqa").load(tmp_path, split="train")
    rep = get_task("synth_report").load(tmp_path, split="train")
    assert vqa and rep
    assert {r.meta["language"] for r in vqa} <= {"en", "zh"}
    assert all(r.meta["question_type"] != "report" for r in vqa)
    assert all(r.meta["answer_type"] in ("CLOSED", "OPEN") for r in vqa)
    # prompted exactly as the phantom training data: no lmms-eval suffix (issue 14, case 7)
    assert not user_text(vqa[0]).endswith("Answer the question using a single word or phrase.")
    fp = data_fingerprint(vqa)
    assert fp == data_fingerprint(get_task("synth_vqa").load(tmp_path, split="train")) and len(fp) == 16
    assert fp != data_fingerprint(vqa[:-1])


def test_missing_folder_is_clear(tmp_path):
    with pytest.raises(MedVLDataError, match="data folder does not exist"):
        get_task("slake").load(tmp_path / "nope")
