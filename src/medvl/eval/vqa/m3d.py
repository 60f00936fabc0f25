"""``m3d``: M3D-Bench VQA scoring (BAAI-DCAI/M3D ``Bench/eval/eval_vqa.py``).

- Closed (multiple-choice) questions: correct when the answer letter followed by a period
  (e.g. ``"C."``) occurs anywhere in the output, exactly as M3D checks ``answer_choice + '.' in
  generated_text``.
- Open questions: M3D computes, *per sample*, HF ``evaluate``'s BLEU with ``max_order=1`` (what
  its tables call "BLEU" is BLEU-1), ROUGE-1, METEOR and BERTScore F1 (``lang="en"``, i.e.
  roberta-large), and averages over samples. medvl never uses ``evaluate`` (it downloads code
  at run time); the same computations are re-implemented:

  * BLEU-1: sacrebleu's 13a tokeniser (split into words, case kept), clipped unigram precision,
    brevity penalty ``exp(1 - r/c)`` (0 for an empty output), no smoothing;
  * ROUGE-1 F: ``rouge_score`` with its default tokeniser, no stemming;
  * METEOR: NLTK ``single_meteor_score(alpha=0.9, beta=3, gamma=0.5)`` on NLTK's Treebank word
    tokeniser (``evaluate`` calls ``word_tokenize``, which first splits sentences with punkt;
    punkt is not shipped offline, so medvl tokenises the whole text at once: same tokens except
    for periods that end an inner sentence) with WordNet from :mod:`medvl.eval.wordnet`;
  * BERTScore F1: only when ``bertscore_model`` (a local model folder) is given, since M3D's
    roberta-large cannot be fetched offline. Results with another model are not comparable to
    M3D's and the note says which model was used.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from medvl.eval.results import ScoreResult, library_versions, mean
from medvl.eval.vqa.base import VQAItem, register_protocol

_LETTER = re.compile(r"^\s*\(?([A-Za-z])[\.\):]")


def bleu1_13a(prediction: str, reference: str) -> float:
    """Single-sample corpus BLEU with max_order=1 on 13a tokens (HF ``evaluate`` ``bleu``).

    Args:
        prediction: hypothesis.
        reference: reference.
    """
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tok = Tokenizer13a()
    hyp = tok(prediction.strip()).split()
    ref = tok(reference.strip()).split()
    if not hyp or not ref:
        return 0.0
    matches = sum((Counter(hyp) & Counter(ref)).values())
    precision = matches / len(hyp)
    if precision == 0:
        return 0.0
    ratio = len(hyp) / len(ref)
    bp = 1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio)
    return precision * bp


def rouge1_f(prediction: str, reference: str) -> float:
    """ROUGE-1 F-measure from ``rouge_score`` (default tokeniser, no stemming).

    Args:
        prediction: hypothesis.
        reference: reference.
    """
    from rouge_score import rouge_scorer

    return (
        rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
        .score(reference.strip(), prediction.strip())["rouge1"]
        .fmeasure
    )


def meteor_nltk(prediction: str, reference: str) -> float:
    """NLTK METEOR (alpha 0.9, beta 3, gamma 0.5) on Treebank word tokens, offline WordNet.

    Args:
        prediction: hypothesis.
        reference: reference.
    """
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.translate.meteor_score import single_meteor_score

    from medvl.eval.wordnet import get_wordnet

    tok = NLTKWordTokenizer()
    return float(
        single_meteor_score(
            tok.tokenize(reference.strip()),
            tok.tokenize(prediction.strip()),
            alpha=0.9,
            beta=3,
            gamma=0.5,
            wordnet=get_wordnet(),
        )
    )


def answer_letter(item: VQAItem) -> str:
    """The correct option letter of a closed M3D item (``answer_choice`` or "C. ..." reference).

    Args:
        item: the sample.

    Raises:
        ValueError: no letter can be found (names the item).
    """
    if item.answer_choice:
        return item.answer_choice.strip()
    m = _LETTER.match(item.reference)
    if m:
        return m.group(1).upper()
    raise ValueError(
        f"item {item.id!r}: m3d closed questions need answer_choice (the option letter) "
        f"or a reference starting with 'A.'..'D.'; got reference {item.reference!r}"
    )


@register_protocol("m3d")
def m3d(items: Sequence[VQAItem], bertscore_model: str | None = None, with_meteor: bool = True) -> ScoreResult:
    """Score VQA items the M3D-Bench way (see the module docstring).

    Args:
        items: samples (CLOSED = multiple choice with a letter, OPEN = free text).
        bertscore_model: local folder of a BERT-like model for BERTScore (optional).
        with_meteor: compute METEOR (needs WordNet offline; see :mod:`medvl.eval.wordnet`).

    Returns:
        aggregate keys: ``closed_accuracy``, ``bleu1``, ``rouge1``, ``meteor`` and (with a model)
        ``bert_f1``.
    """
    rows = []
    notes = ["open metrics are per-sample values averaged over samples (M3D-Bench); BLEU is BLEU-1"]
    for it in items:
        row: dict[str, Any] = {"id": it.id, "answer_type": it.answer_type}
        if it.answer_type == "CLOSED":
            letter = answer_letter(it)
            row["answer_choice"] = letter
            row["correct"] = int(letter + "." in it.prediction)
        else:
            row["bleu1"] = bleu1_13a(it.prediction, it.reference)
            row["rouge1"] = rouge1_f(it.prediction, it.reference)
            if with_meteor:
                row["meteor"] = meteor_nltk(it.prediction, it.reference)
        rows.append(row)
    open_rows = [r for r in rows if r["answer_type"] == "OPEN"]
    if bertscore_model and open_rows:
        from medvl.eval.report_metrics import bertscore

        open_items = [it for it in items if it.answer_type == "OPEN"]
        bs = bertscore(
            [it.prediction for it in open_items], [it.reference for it in open_items], model_path=bertscore_model
        )
        for r, f in zip(open_rows, bs["F1_per_item"]):
            r["bert_f1"] = f
        notes.append(f"bert_f1 with local model {bertscore_model} (M3D used roberta-large)")
    elif open_rows:
        notes.append("bert_f1 not computed: no local BERTScore model given (bertscore_model=PATH)")
    if not with_meteor:
        notes.append("meteor not computed (with_meteor=False)")
    closed_rows = [r for r in rows if r["answer_type"] == "CLOSED"]
    agg: dict[str, float] = {}
    if closed_rows:  # an answer type without items has no value
        agg["closed_accuracy"] = mean(r["correct"] for r in closed_rows)
    if open_rows:
        agg["bleu1"] = mean(r["bleu1"] for r in open_rows)
        agg["rouge1"] = mean(r["rouge1"] for r in open_rows)
    if with_meteor and open_rows:
        agg["meteor"] = mean(r["meteor"] for r in open_rows)
    if open_rows and "bert_f1" in open_rows[0]:
        agg["bert_f1"] = mean(r["bert_f1"] for r in open_rows)
    return ScoreResult(
        protocol="m3d",
        aggregate=agg,
        per_item=rows,
        versions=library_versions(["sacrebleu", "rouge-score", "nltk", "bert-score"]),
        notes=notes,
        counts={"open": len(open_rows), "closed": len(closed_rows)},
    )
