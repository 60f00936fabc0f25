"""``medvl score`` end to end through medvl.cli.main, including bad input."""

from __future__ import annotations

import json

import pytest

from medvl.cli import main

try:
    from tests.eval_golden import load_golden
except ImportError:  # tests/ not a package
    from eval_golden import load_golden

GOLDEN = load_golden()


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def vqa_records():
    return [
        {
            "id": it["id"],
            "question": it["question"],
            "answer_type": it["answer_type"],
            "prediction": it["pred"],
            "reference": it["gt"],
        }
        for it in GOLDEN["vqa"]["items"]
    ]


def test_score_vqa_llava_med(tmp_path, capsys):
    src = write_jsonl(tmp_path / "preds.jsonl", vqa_records())
    out = tmp_path / "scores.json"
    assert main(["score", "--task", "vqa", "--protocol", "llava_med_v1", "--in", str(src), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["protocol"] == "llava_med_v1" and data["task"] == "vqa"
    table = GOLDEN["vqa"]["llava_med_v1"]["run_eval_batch_table_percent"]
    assert abs(data["aggregate"]["closed_accuracy"] * 100 - table["yes/no accuracy"]) < 1e-3
    assert abs(data["aggregate"]["open_recall"] * 100 - table["recall"]) < 1e-3
    assert abs(data["aggregate"]["open_accuracy"] * 100 - table["open accuracy"]) < 1e-3
    assert len(data["per_item"]) == 13 and data["versions"]["nltk"]
    assert "closed_accuracy" in capsys.readouterr().out


def test_score_vqa_empty_prediction_is_scored(tmp_path):
    recs = vqa_records()[:2]
    recs[1]["prediction"] = ""
    src = write_jsonl(tmp_path / "p.jsonl", recs)
    out = tmp_path / "s.json"
    assert main(["score", "--task", "vqa", "--protocol", "exact_norm", "--in", str(src), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["per_item"]) == 2 and data["aggregate"]["accuracy"] == 0.0


def test_score_report(tmp_path):
    items = GOLDEN["reports"]["items"][:4]
    src = write_jsonl(
        tmp_path / "r.jsonl",
        [{"id": i["id"], "prediction": i["prediction"], "reference": i["reference"]} for i in items],
    )
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "score",
                "--task",
                "report",
                "--in",
                str(src),
                "--out",
                str(out),
                "--no-meteor",
                "--tokenization",
                "lowercase_whitespace",
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["protocol"] == "report"
    assert {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider", "rouge1", "rouge2", "rougeL"} <= set(
        data["aggregate"]
    )
    assert "pycocoevalcap tokenization: lowercase_whitespace" in data["notes"]
    assert "rouge-score" in data["versions"] and "sacrebleu" in data["versions"]


@pytest.mark.parametrize(
    "content,expected",
    [
        ('{"id": 1, "answer_type": "OPEN", "prediction": "a"}\n', "line 1.*missing field\\(s\\) reference"),
        (
            '{"id": 1, "answer_type": "OPEN", "prediction": "a", "reference": "a"}\n{not json\n',
            "line 2.*not valid JSON",
        ),
        (
            '{"id": 1, "answer_type": "OPEN", "prediction": "a", "reference": "a"}\n\n'
            '{"id": 1, "answer_type": "OPEN", "prediction": "b", "reference": "b"}\n',
            "line 3.*duplicate id '1' \\(first seen on line 1\\)",
        ),
        (
            '{"id": 1, "answer_type": "maybe", "prediction": "a", "reference": "a"}\n',
            "line 1.*unknown answer_type 'maybe'",
        ),
        ("[1, 2]\n", "line 1.*expected a JSON object"),
    ],
)
def test_score_bad_input_names_line(tmp_path, capsys, content, expected):
    src = tmp_path / "bad.jsonl"
    src.write_text(content)
    rc = main(
        ["score", "--task", "vqa", "--protocol", "exact_norm", "--in", str(src), "--out", str(tmp_path / "o.json")]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err
    import re

    assert re.search(expected, err), err
    assert not (tmp_path / "o.json").exists()


def test_score_unknown_protocol(tmp_path, capsys):
    src = write_jsonl(tmp_path / "p.jsonl", vqa_records()[:1])
    rc = main(["score", "--task", "vqa", "--protocol", "vqa_acc", "--in", str(src), "--out", str(tmp_path / "o.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown VQA protocol 'vqa_acc'" in err and "llava_med_v1" in err


def test_score_protocol_options(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", vqa_records())
    cands = tmp_path / "train_open_answers.json"
    cands.write_text(json.dumps(GOLDEN["vqa"]["llava_med_candidates"]))
    out = tmp_path / "s.json"
    assert (
        main(
            [
                "score",
                "--task",
                "vqa",
                "--protocol",
                "llava_med_v1",
                "--candidates",
                str(cands),
                "--in",
                str(src),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    run_eval = GOLDEN["vqa"]["llava_med_v1"]["run_eval_table_percent"]
    assert (
        abs(json.loads(out.read_text())["aggregate"]["open_accuracy_candidates"] * 100 - run_eval["open accuracy"])
        < 1e-3
    )
    assert (
        main(
            [
                "score",
                "--task",
                "vqa",
                "--protocol",
                "medevalkit",
                "--reference-prf-mixup",
                "--in",
                str(src),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    item7 = next(r for r in data["per_item"] if r["id"] == "7")
    assert abs(item7["open"]["precision"] - 0.4) < 1e-6  # MedEvalKit's mislabelled column (holds F1)
    assert "reference_prf_mixup=True" in data["notes"][0]
