"""Clinical report metrics run by their real packages on tiny random checkpoints in each package's format.

F1-CheXbert (``f1chexbert`` 0.0.2) and RaTEScore (``ratescore`` 0.6.0) load the folders written here
exactly as they load the released weights; the heads' biases are set so that the labels, and hence
the scores, are known in advance whatever the (random) encoder computes.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch

from medvl.eval import report_metrics as rm

REPORTS = ["no acute cardiopulmonary process .", "mild cardiomegaly with small left pleural effusion .",
           "the lungs are clear and there is no pneumothorax ."]
WORDS = sorted({w for r in REPORTS for w in r.split()} | {"heart", "normal", "lung"})


def tiny_bert(folder, num_labels: int | None = None, id2label: dict | None = None, seed: int = 0):
    """A 1-layer BERT (hidden 16) with its WordPiece vocabulary saved as a Hugging Face folder."""
    from transformers import BertConfig, BertForTokenClassification, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    kwargs = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=512, **kwargs)
    torch.manual_seed(seed)
    model = BertForTokenClassification(config) if id2label else BertModel(config)
    model.save_pretrained(folder)
    return model


def chexbert_folder(tmp_path, positive: bool):
    """``chexbert.pth`` as CheXbert saves it (DataParallel ``module.`` keys under ``model_state_dict``)
    plus ``bert-base-uncased/``; every condition head predicts class 1 (positive) or 2 (negative)."""
    folder = tmp_path / ("chexbert-pos" if positive else "chexbert-neg")
    bert = tiny_bert(folder / "bert-base-uncased")
    state = OrderedDict((f"module.bert.{k}", v) for k, v in bert.state_dict().items())
    for i in range(14):
        classes = 4 if i < 13 else 2
        bias = torch.zeros(classes)
        bias[(1 if positive else 2) if i < 13 else 0] = 1e4  # "No Finding" head: class 0 (blank)
        state[f"module.linear_heads.{i}.weight"] = torch.zeros(classes, 16)
        state[f"module.linear_heads.{i}.bias"] = bias
    torch.save({"model_state_dict": state}, folder / "chexbert.pth")
    return folder


def test_f1_chexbert_real_package_local_checkpoint(tmp_path):
    pytest.importorskip("f1chexbert", reason="optional extra medvl[clinical]")
    preds, refs = REPORTS, list(reversed(REPORTS))
    pos = rm.clinical_metric("f1_chexbert", preds, refs, weights=str(chexbert_folder(tmp_path, True)))
    # every report labelled positive for the 13 conditions: all agree, all five CheXpert labels are hits
    assert pos["accuracy"] == 1.0 and pos["micro_f1_5"] == 1.0 and pos["micro_f1_14"] == 1.0
    assert pos["per_item"] == [{"accuracy_5": 1.0}] * 3
    neg = rm.clinical_metric("f1_chexbert", preds, refs, weights=str(chexbert_folder(tmp_path, False)))
    # every report negative: labels still agree, but there is no positive to find (sklearn's F1 is 0)
    assert neg["accuracy"] == 1.0 and neg["micro_f1_5"] == 0.0
    with pytest.raises(ValueError, match="lacks bert-base-uncased/config.json"):
        (tmp_path / "bare").mkdir()
        torch.save({}, tmp_path / "bare" / "chexbert.pth")
        rm.clinical_metric("f1_chexbert", preds, refs, weights=str(tmp_path / "bare"))


RATE_LABELS = {0: "O", 1: "B-ANATOMY", 2: "I-ANATOMY", 3: "B-ABNORMALITY", 4: "I-ABNORMALITY", 5: "B-DISEASE",
               6: "I-DISEASE", 7: "B-NON-ABNORMALITY", 8: "I-NON-ABNORMALITY", 9: "B-NON-DISEASE",
               10: "I-NON-DISEASE"}


def ratescore_folder(tmp_path, label: str):
    """``RaTE-NER-Deberta/`` (token classifier with RaTE's entity labels; every token gets ``label``) and
    ``BioLORD-2023-C/`` (entity encoder), both tiny random Hugging Face folders."""
    folder = tmp_path / f"rate-{label}"
    ner = tiny_bert(folder / "RaTE-NER-Deberta", id2label=RATE_LABELS, seed=1)
    with torch.no_grad():
        ner.classifier.weight.zero_()
        ner.classifier.bias.zero_()
        ner.classifier.bias[{v: k for k, v in RATE_LABELS.items()}[label]] = 1e4
    ner.save_pretrained(folder / "RaTE-NER-Deberta")
    tiny_bert(folder / "BioLORD-2023-C", seed=2)
    return folder


def test_ratescore_real_package_local_checkpoint(tmp_path):
    pytest.importorskip("RaTEScore", reason="optional extra medvl[clinical]")
    refs = REPORTS
    preds = [REPORTS[0], "", REPORTS[2]]
    none = rm.clinical_metric("ratescore", preds, refs, weights=str(ratescore_folder(tmp_path, "O")))
    # no entities anywhere: RaTEScore's rule gives 0.5 per report (the empty one included, see medvl)
    assert [r["ratescore"] for r in none["per_item"]] == [0.5, 0.5, 0.5]
    every = rm.clinical_metric("ratescore", preds, refs, weights=str(ratescore_folder(tmp_path, "B-ANATOMY")))
    # every token an anatomy entity: identical reports match each entity with cosine 1 -> F1 1
    got = [r["ratescore"] for r in every["per_item"]]
    assert got[0] == pytest.approx(1.0, abs=1e-5) and got[2] == pytest.approx(1.0, abs=1e-5) and got[1] == 0.5
    assert every["ratescore"] == pytest.approx(sum(got) / 3)


def test_clinical_values_kept_per_item_in_score_reports(tmp_path):
    pytest.importorskip("f1chexbert", reason="optional extra medvl[clinical]")
    folder = chexbert_folder(tmp_path, True)
    res = rm.score_reports(["a", "b", "c"], REPORTS, REPORTS, tokenization="lowercase_whitespace", meteor=False,
                           clinical={"f1_chexbert": str(folder)})
    assert res.aggregate["f1_chexbert_accuracy"] == 1.0 and res.aggregate["f1_chexbert_micro_f1_5"] == 1.0
    assert [r["f1_chexbert_accuracy_5"] for r in res.per_item] == [1.0, 1.0, 1.0]
    assert any(n.startswith("f1_chexbert: 0.0.2") for n in res.notes)
    json.dumps(res.to_dict())  # JSON-ready


def test_medvl_eval_clinical_on_a_report_replica(tmp_path, tiny_model_dir):
    pytest.importorskip("f1chexbert", reason="optional extra medvl[clinical]")
    import benchmark_replicas as replicas

    from medvl.cli import main

    root = replicas.iu_xray(tmp_path / "data")
    out = tmp_path / "run"
    folder = chexbert_folder(tmp_path, True)
    assert main(["eval", str(tiny_model_dir), "--tasks", "iu_xray", "--data", f"iu_xray={root}", "--max-new-tokens", "3",
                 "--no-meteor", "--tokenization", "lowercase_whitespace", "--clinical", f"f1_chexbert={folder}",
                 "--bootstrap-resamples", "20", "--no-progress", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    acc = next(r for r in results if r["metric"] == "f1_chexbert_accuracy")
    assert acc["value"] == 1.0 and acc["ci95"] == [1.0, 1.0] and acc["n"] == 2
    per_item = json.loads((out / "scores" / "iu_xray.json").read_text())["all"]["per_item"]
    assert [r["f1_chexbert_accuracy_5"] for r in per_item] == [1.0, 1.0]
    assert "f1_chexbert_micro_f1_5" in (out / "results.md").read_text()
