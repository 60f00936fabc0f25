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

REPORTS = [
    "no acute cardiopulmonary process .",
    "mild cardiomegaly with small left pleural effusion .",
    "the lungs are clear and there is no pneumothorax .",
]
WORDS = sorted({w for r in REPORTS for w in r.split()} | {"heart", "normal", "lung", "a", "b", "edema", "clear"})


def tiny_bert(folder, num_labels: int | None = None, id2label: dict | None = None, seed: int = 0):
    """A 1-layer BERT (hidden 16) with its WordPiece vocabulary saved as a Hugging Face folder."""
    from transformers import BertConfig, BertForTokenClassification, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("no effusion", add_special_tokens=False)) == [
        "no",
        "effusion",
    ]  # a real WordPiece vocabulary, not [UNK] everywhere
    tokenizer.save_pretrained(folder)
    kwargs = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=512,
        **kwargs,
    )
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


RATE_LABELS = {
    0: "O",
    1: "B-ANATOMY",
    2: "I-ANATOMY",
    3: "B-ABNORMALITY",
    4: "I-ABNORMALITY",
    5: "B-DISEASE",
    6: "I-DISEASE",
    7: "B-NON-ABNORMALITY",
    8: "I-NON-ABNORMALITY",
    9: "B-NON-DISEASE",
    10: "I-NON-DISEASE",
}


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
    res = rm.score_reports(
        ["a", "b", "c"],
        REPORTS,
        REPORTS,
        tokenization="lowercase_whitespace",
        meteor=False,
        clinical={"f1_chexbert": str(folder)},
    )
    assert res.aggregate["f1_chexbert_accuracy"] == 1.0 and res.aggregate["f1_chexbert_micro_f1_5"] == 1.0
    assert [r["f1_chexbert_accuracy_5"] for r in res.per_item] == [1.0, 1.0, 1.0]
    assert any(n.startswith("f1_chexbert: 0.0.2") for n in res.notes)
    json.dumps(res.to_dict())  # JSON-ready


def test_medvl_eval_clinical_on_a_report_replica(tmp_path, tiny_model_dir):
    pytest.importorskip("f1chexbert", reason="optional extra medvl[clinical]")
    from medvl.cli import main
    from tests import benchmark_replicas as replicas

    root = replicas.iu_xray(tmp_path / "data")
    out = tmp_path / "run"
    folder = chexbert_folder(tmp_path, True)
    assert (
        main(
            [
                "eval",
                str(tiny_model_dir),
                "--tasks",
                "iu_xray",
                "--data",
                f"iu_xray={root}",
                "--max-new-tokens",
                "3",
                "--no-meteor",
                "--tokenization",
                "lowercase_whitespace",
                "--clinical",
                f"f1_chexbert={folder}",
                "--bootstrap-resamples",
                "20",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())["results"]
    acc = next(r for r in results if r["metric"] == "f1_chexbert_accuracy")
    assert acc["value"] == 1.0 and acc["ci95"] == [1.0, 1.0] and acc["n"] == 2
    per_item = json.loads((out / "scores" / "iu_xray.json").read_text())["all"]["per_item"]
    assert [r["f1_chexbert_accuracy_5"] for r in per_item] == [1.0, 1.0]
    assert "f1_chexbert_micro_f1_5" in (out / "results.md").read_text()


def radgraph_folder(tmp_path):
    """``radgraph/{config.json, vocabulary/, weights.th}`` as the package's radgraph.tar.gz unpacks, with a
    tiny local BERT. Spans are one token wide; the NER head labels every span OBS-DP and the relation
    head predicts no relation, so each report's entities are its distinct tokens."""
    from radgraph.allennlp.data import Vocabulary, token_indexers  # noqa: F401 - the package's own classes
    from radgraph.allennlp.modules import text_field_embedders, token_embedders
    from radgraph.dygie.models import dygie

    folder = tmp_path / "radgraph-models"
    model_dir = folder / "radgraph"
    bert_dir = tmp_path / "radgraph-bert"
    tiny_bert(bert_dir, seed=3)
    bert = {"model_name": str(bert_dir), "max_length": 512}
    config = {
        "dataset_reader": {
            "type": "dygie",
            "max_span_width": 1,
            "token_indexers": {"bert": {"type": "pretrained_transformer_mismatched", **bert}},
        },
        "model": {
            "type": "dygie",
            "embedder": {"token_embedders": {"bert": {"type": "pretrained_transformer_mismatched", **bert}}},
            "initializer": {},
            "module_initializer": {},
            "feature_size": 4,
            "max_span_width": 1,
            "target_task": "relation",
            "feedforward_params": {"num_layers": 1, "hidden_dims": 8, "dropout": 0.0},
            "loss_weights": {"ner": 1.0, "relation": 1.0, "coref": 0.0, "events": 0.0},
            "modules": {
                "coref": {"spans_per_word": 0.3, "max_antecedents": 10, "coref_prop": 0},
                "ner": {},
                "relation": {"spans_per_word": 0.5},
                "events": {
                    "trigger_spans_per_word": 0.3,
                    "argument_spans_per_word": 0.8,
                    "loss_weights": {"trigger": 1.0, "arguments": 1.0},
                },
            },
        },
    }
    vocab_dir = model_dir / "vocabulary"
    vocab_dir.mkdir(parents=True)
    (vocab_dir / "non_padded_namespaces.txt").write_text("*tags\n*labels\n", encoding="utf-8")
    (vocab_dir / "radgraph__ner_labels.txt").write_text("\nANAT-DP\nOBS-DP\nOBS-U\nOBS-DA\n", encoding="utf-8")
    (vocab_dir / "radgraph__relation_labels.txt").write_text("suggestive_of\nlocated_at\nmodify\n", encoding="utf-8")
    (model_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    vocab = Vocabulary.from_files(str(vocab_dir))
    with rm.encode_plus_available():  # the vendored allennlp needs it under transformers 5 (see medvl)
        embedder = text_field_embedders.BasicTextFieldEmbedder(
            {"bert": token_embedders.PretrainedTransformerMismatchedEmbedder(**bert)}
        )
    model_cfg = {
        k: v for k, v in config["model"].items() if k not in ("type", "embedder", "initializer", "module_initializer")
    }
    torch.manual_seed(4)
    model = dygie.DyGIE(vocab=vocab, embedder=embedder, **model_cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("_ner._ner_scorers.") and name.endswith("bias") and param.shape[0] == 4:
                param.zero_()
                param[1] = 1e4  # labels 1.. = ANAT-DP, OBS-DP, ...: index 1 of the non-null scores is OBS-DP
            if name.startswith("_relation._relation_scorers.") and name.endswith("bias"):
                param.fill_(-1e4)
    torch.save(model.state_dict(), model_dir / "weights.th")
    return folder


def test_radgraph_real_package_local_checkpoint(tmp_path):
    pytest.importorskip("radgraph", reason="optional extra medvl[clinical]")
    folder = radgraph_folder(tmp_path)
    preds = ["no effusion", "mild edema", ""]
    refs = ["no effusion", "mild effusion", "clear lungs"]
    res = rm.clinical_metric("radgraph", preds, refs, weights=str(folder))
    # entities = distinct tokens labelled OBS-DP, no relations: every level is the token-set F1;
    # the empty prediction scores 0 (the package's rule)
    want = [1.0, 0.5, 0.0]
    for level in ("simple", "partial", "complete"):
        assert [r[level] for r in res["per_item"]] == pytest.approx(want)
        assert res[level] == pytest.approx(sum(want) / 3)
    assert res["model_type"] == "radgraph"
