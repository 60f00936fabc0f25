"""Benchmark adapters: field-level checks and end-to-end ``medvl eval`` runs on replicas of each release
(``tests/benchmark_replicas.py``; sources in ``docs/benchmarks.md``)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medvl.errors import MedVLDataError
from medvl.eval.tasks import available_tasks, data_fingerprint, get_task
from tests import benchmark_replicas as replicas


def png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
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
    assert {
        "vqa_rad",
        "slake",
        "pathvqa",
        "pmc_vqa",
        "omnimedvqa",
        "mimic_cxr",
        "iu_xray",
        "ct_rate",
        "m3d_vqa_closed",
        "m3d_vqa_open",
        "m3d_cap",
        "synth_vqa",
        "synth_report",
    } <= set(available_tasks())
    with pytest.raises(ValueError, match="unknown task 'rad'.*valid: .*vqa_rad"):
        get_task("rad")
    for name in available_tasks():
        t = get_task(name)
        assert t.protocol and t.source and t.generation["do_sample"] is False


def test_vqa_rad_missing_image_names_entry(tmp_path):
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(
        json.dumps(
            [
                {
                    "qid": 7,
                    "image_name": "nope.jpg",
                    "answer": "yes",
                    "answer_type": "CLOSED",
                    "question": "q",
                    "phrase_type": "test_para",
                }
            ]
        )
    )
    with pytest.raises(MedVLDataError, match="entry 0 \\(qid 7\\).*media file not found"):
        get_task("vqa_rad").load(tmp_path)


def test_synth_tasks(tmp_path):
    from medvl.tools.synth.dataset import synthesize

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


# ---------------------------------------------------------------- what each loader reads from its replica


def test_vqa_rad_release(tmp_path):
    root = replicas.vqa_rad(tmp_path)
    recs = get_task("vqa_rad").load(root)
    assert [r.id for r in recs] == ["vqa_rad-1", "vqa_rad-2", "vqa_rad-3", "vqa_rad-4"]  # test_* phrase types only
    assert user_text(recs[0]) == "<image>\nIs there a pneumothorax?\nAnswer the question using a single word or phrase."
    assert [r.meta["answer_type"] for r in recs] == ["CLOSED", "CLOSED", "OPEN", "OPEN"]  # "CLOSED " stripped
    assert recs[2].meta["reference"] == "2"  # numeric answers become text
    assert [r.meta["organ"] for r in recs] == ["CHEST", "CHEST", "HEAD", "ABD"]
    assert recs[0].images == [str((root / "VQA_RAD Image Folder" / "synpic54610.jpg").resolve())]
    assert [r.id for r in get_task("vqa_rad").load(root, split="train")] == ["vqa_rad-5"]


def test_slake_release(tmp_path):
    root = replicas.slake(tmp_path)
    both = get_task("slake").load(root)
    assert [r.meta["language"] for r in both] == ["en", "en", "en", "zh", "zh", "zh"]
    zh = get_task("slake_zh").load(root)
    assert [r.meta["reference"] for r in zh] == ["CT", "否", "否"]
    assert {(r.meta["modality"], r.meta["organ"], r.meta["question_type"]) for r in zh} == {
        ("CT", "Lung", "Modality"),
        ("CT", "Lung", "Organ"),
        ("MRI", "Abdomen", "Abnormality"),
    }
    assert [r.id for r in get_task("slake").load(root, split="validate")] == ["slake-11938"]


def test_pathvqa_release(tmp_path):
    recs = get_task("pathvqa").load(replicas.pathvqa(tmp_path))
    assert [(r.meta["answer_type"], r.meta["reference"]) for r in recs] == [
        ("CLOSED", "yes"),
        ("OPEN", "necrosis"),
        ("CLOSED", "no"),
    ]
    assert recs[2].images[0].endswith("pvqa/images/test/test_0002.jpg")


def test_pmc_vqa_both_csv_versions(tmp_path):
    root = replicas.pmc_vqa(tmp_path)
    v2 = get_task("pmc_vqa").load(root)
    assert [r.meta["answer_choice"] for r in v2] == ["B", "B"] and v2[0].meta["reference"] == "Lung"
    assert v2[0].meta["options"] == ["Liver", "Lung", "Kidney", "Spleen"]  # " A:" prefixes removed
    assert user_text(v2[0]).startswith(
        "<image>\nWhich organ shows the lesion?\nA. Liver\nB. Lung\nC. Kidney\nD. Spleen\n"
    )
    v1 = get_task("pmc_vqa").load(root, split="test_clean")
    assert v1[0].meta["answer_choice"] == "B" and v1[0].meta["reference"] == "Focal uptake pattern"


def test_omnimedvqa_release(tmp_path):
    recs = get_task("omnimedvqa").load(replicas.omnimedvqa(tmp_path))
    by_id = {r.id: r for r in recs}
    ct = by_id["omnimedvqa-Chest CT Scan_1"]
    assert ct.meta["answer_choice"] == "B" and ct.meta["modality"] == "CT(Computed Tomography)"
    derm = by_id["omnimedvqa-ISIC2019_3"]
    assert derm.meta["options"] == ["Dermoscopy", "X-Ray"] and derm.meta["modality"] == "Dermoscopy"  # "modality" key
    assert {r.meta["question_type"] for r in recs} == {"Disease Diagnosis", "Modality Recognition"}


@pytest.mark.parametrize("task,views", [("iu_xray", 2), ("mimic_cxr", 1)])
def test_r2gen_release(tmp_path, task, views):
    root = getattr(replicas, task)(tmp_path)
    recs = get_task(task).load(root)
    assert len(recs) == 2 and all(len(r.images) == views and user_text(r).count("<image>") == views for r in recs)
    assert recs[0].meta["reference"].startswith(("There is no focal", "The heart size"))
    with pytest.raises(MedVLDataError, match="split 'dev' not in annotation.json"):
        get_task(task).load(root, split="dev")


def test_ct_rate_release_carries_rescale_and_spacing(tmp_path):
    root = replicas.ct_rate(tmp_path)
    recs = get_task("ct_rate").load(root)
    assert [r.id for r in recs] == ["ct_rate-valid_1_a_1", "ct_rate-valid_1_a_2"]
    assert (
        recs[0].meta["reference"] == "Trachea and both main bronchi are open. No nodule or mass is seen in either lung."
    )
    assert recs[0].meta["volume_load"] == {"rescale": [1.0, -1024.0], "spacing": [0.75, 0.75, 1.5]}
    assert recs[1].meta["volume_load"] == {"rescale": [1.0, -8192.0], "spacing": [0.8, 0.8, 2.0]}
    (root / "metadata" / "validation_metadata.csv").unlink()
    with pytest.raises(MedVLDataError, match="metadata CSV not found"):
        get_task("ct_rate").load(root)


def test_m3d_release(tmp_path):
    root = replicas.m3d(tmp_path)
    closed = get_task("m3d_vqa_closed").load(root)
    assert (
        user_text(closed[0])
        == "<volume>\nIn which plane is this image taken? Choices: A. Axial B. Sagittal C. Coronal D. Oblique"
    )
    assert [r.meta["reference"] for r in closed] == ["A. Axial", "B. Lung"]
    assert [r.meta["question_type"] for r in closed] == ["plane", "organ"]
    opened = get_task("m3d_vqa_open").load(root)
    assert (
        opened[1].meta["reference"] == "Lung" and user_text(opened[1]) == "<volume>\nWhich organ shows the abnormality?"
    )
    cap = get_task("m3d_cap").load(root)
    assert len(cap) == 2 and cap[0].meta["reference"] == "Hypodense lesion in the right hepatic lobe."
    for rec in closed + opened + cap:
        assert rec.meta["volume_load"] == {"intensity": "unit"}
    arr = np.load(cap[0].volumes[0])
    assert arr.shape == (1, 32, 256, 256) and arr.dtype == np.float32 and arr.min() == 0.0 and arr.max() == 1.0


# ---------------------------------------------------------------- media through the model's processor


def test_m3d_volume_reaches_the_model_in_0_1_not_flat(tmp_path, tiny_model, tiny_processor):
    from medvl.inference import prepare_batch

    rec = get_task("m3d_cap").load(replicas.m3d(tmp_path))[0]
    vp = tiny_processor.volume_processor
    batch = prepare_batch(tiny_model, tiny_processor, [rec])
    got = batch["volume_values"][0].float().numpy()
    # independent: resize the release array with the processor's spatial step only, then the output range
    low, high = vp.output_range
    expected = vp.as_unit().spatial(np.load(rec.volumes[0])[0])[0]
    np.testing.assert_allclose(got[0], low + np.clip(expected, 0, 1) * (high - low), atol=1e-5)
    assert got.std() > 0.1 * (high - low)  # an HU window would leave it flat grey


def test_ct_rate_volume_is_rescaled_to_hu_with_the_csv_spacing(tmp_path, tiny_model, tiny_processor):
    from medvl.imaging.volume3d import Volume
    from medvl.inference import prepare_batch

    rec = get_task("ct_rate").load(replicas.ct_rate(tmp_path))[1]  # slope 1, intercept -8192, 0.8 x 0.8 x 2 mm
    got = prepare_batch(tiny_model, tiny_processor, [rec])["volume_values"][0].float().numpy()
    raw = replicas.ct_rate_raw("valid_1_a_2.nii.gz").astype(np.float64)
    hu = Volume(array=(raw - 8192.0).astype(np.float32), affine=np.diag([0.8, 0.8, 2.0, 1.0]))
    expected = tiny_processor.volume_processor([hu])["volume_values"][0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert hu.array.min() == pytest.approx(-1000.0) and hu.array.max() < 100  # body and air, in HU


# ---------------------------------------------------------------- end to end: medvl eval on each replica

HEADLINE_OF = {
    "vqa_rad": "closed_accuracy",
    "slake": "accuracy",
    "slake_en": "accuracy",
    "slake_zh": "accuracy",
    "pathvqa": "closed_accuracy",
    "pmc_vqa": "accuracy",
    "omnimedvqa": "accuracy",
    "mimic_cxr": "bleu_4",
    "iu_xray": "bleu_4",
    "ct_rate": "rouge_l",
    "m3d_vqa_closed": "closed_accuracy",
    "m3d_vqa_open": "bleu1",
    "m3d_cap": "cider",
}


@pytest.mark.parametrize("task", sorted(HEADLINE_OF))
def test_medvl_eval_end_to_end_on_the_replica(task, tmp_path, tiny_model_dir, capsys):
    from medvl.cli import main

    root = replicas.WRITERS[task](tmp_path / "data")
    out = tmp_path / "run"
    argv = [
        "eval",
        str(tiny_model_dir),
        "--tasks",
        task,
        "--data",
        f"{task}={root}",
        "--limit",
        "3",
        "--max-new-tokens",
        "2",
        "--batch-size",
        "2",
        "--no-meteor",
        "--tokenization",
        "lowercase_whitespace",
        "--bootstrap-resamples",
        "50",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    spec = get_task(task)
    records = spec.load(root, limit=3)
    rows = [json.loads(line) for line in (out / "predictions" / f"{task}.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r.id for r in records]
    assert all(isinstance(r["prediction"], str) for r in rows)
    assert {r["data_fingerprint"] for r in rows} == {data_fingerprint(records)}
    results = json.loads((out / "results.json").read_text())["results"]
    head = [
        r for r in results if r["metric"] == HEADLINE_OF[task] and r["language"] == "all" and r["subgroup"] == "all"
    ]
    assert len(head) == 1 and head[0]["protocol"] == spec.protocol and head[0]["n"] == len(records)
    assert 0.0 <= head[0]["value"] <= 10.0
    low, high = head[0]["ci95"]  # every headline metric here has a seeded bootstrap interval
    assert low - 1e-12 <= head[0]["value"] <= high + 1e-12 and head[0]["bootstrap"]["n_resamples"] == 50
    scores = json.loads((out / "scores" / f"{task}.json").read_text())
    assert len(scores["all"]["per_item"]) == len(records)


def test_medvl_eval_reads_the_media_and_names_a_broken_file(tmp_path, tiny_model_dir, capsys):
    """The images really go through the loader and the processor: a truncated JPEG stops the run,
    naming the record and the file."""
    from medvl.cli import main

    root = replicas.vqa_rad(tmp_path / "data")
    broken = root / "VQA_RAD Image Folder" / "synpic29265.jpg"
    broken.write_bytes(broken.read_bytes()[:40])
    argv = [
        "eval",
        str(tiny_model_dir),
        "--tasks",
        "vqa_rad",
        "--data",
        f"vqa_rad={root}",
        "--max-new-tokens",
        "1",
        "--batch-size",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "vqa_rad-3" in err and "synpic29265.jpg" in err
