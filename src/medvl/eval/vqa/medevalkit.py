"""``medevalkit``: MedEvalKit's VQA scoring (alibaba-damo-academy/MedEvalKit).

Re-implements ``utils/utils.py`` (``parse_response``, ``judge_judgement``,
``judge_close_end_vqa``, ``judge_open_end_vqa``, ``calculate_f1``, ``bleu``, ``rouge``) and the
aggregation of ``utils/SLAKE/SLAKE.py`` ``cal_metrics``:

- the response is lower-cased and reduced to its answer part (``\\boxed{}``, ``<answer>``,
  "answer:" cues);
- closed yes/no: correct when exactly one of "yes"/"no" occurs as a substring (XOR) and the
  reference occurs in the response; other closed answers need an exact match after removing
  newlines and periods. As in MedEvalKit, the yes/no rule is chosen when the reference is
  exactly "yes" or "no" (case-sensitive: a reference "Yes" takes the exact-match rule);
- open: exact match (``em``, which is what open accuracy counts), NLTK sentence BLEU-1..4 on
  MedEvalKit's tokeniser (no smoothing), ROUGE-1/2/L F from the ``rouge`` package (1.0.1), and
  set-based token precision/recall/F1.

**The precision/recall/F1 mix-up.** MedEvalKit's ``calculate_f1`` returns ``(f1, precision,
recall)`` but the caller unpacks ``precision, recall, f1 = ...``, so its "precision" column holds
F1, "recall" holds precision and "f1" holds recall. medvl reports the correct values by default;
``reference_prf_mixup=True`` reproduces MedEvalKit's columns exactly (for comparing with
published tables). The flag is recorded in the result's notes.

Edge cases where MedEvalKit crashes (empty response: ``rouge`` raises, ``calculate_f1`` returns a
bare 0 that cannot be unpacked) score 0 here instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from medvl.eval.results import ScoreResult, library_versions, mean
from medvl.eval.text import medevalkit_parse_response, medevalkit_tokenize
from medvl.eval.vqa.base import VQAItem, register_protocol

_OPEN_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougel", "precision", "recall", "f1")


def judge_judgement(answer: str, response: str) -> bool:
    """MedEvalKit closed yes/no rule (XOR of "yes"/"no" substrings, then reference substring).

    Args:
        answer: reference ("yes"/"no").
        response: model output.
    """
    answer = answer.lower()
    response = medevalkit_parse_response(response).replace("\n", "").replace(".", "")
    return (("yes" in response) ^ ("no" in response)) and answer in response


def judge_close_end_vqa(answer: str, response: str) -> bool:
    """MedEvalKit closed non-yes/no rule: exact match after dropping newlines and periods.

    Args:
        answer: reference.
        response: model output.
    """
    response = medevalkit_parse_response(response).replace("\n", "").replace(".", "")
    return response == answer.lower()


def set_precision_recall_f1(prediction: str, reference: str) -> tuple[float, float, float]:
    """Set-based token precision, recall and F1 on lower-cased whitespace tokens (correct order).

    Args:
        prediction: parsed response.
        reference: reference answer.
    """
    p_tokens = set(prediction.lower().split())
    r_tokens = set(reference.lower().split())
    if not p_tokens or not r_tokens:
        return 0.0, 0.0, 0.0
    common = p_tokens & r_tokens
    precision = len(common) / len(p_tokens)
    recall = len(common) / len(r_tokens)
    if precision + recall == 0:
        return 0.0, 0.0, 0.0
    return precision, recall, 2 * precision * recall / (precision + recall)


def _bleu(pred: str, target: str, n: int) -> float:
    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([medevalkit_tokenize(target)], medevalkit_tokenize(pred), weights=[1 / n] * n))


def _rouge(pred: str, target: str) -> tuple[float, float, float]:
    from rouge import Rouge

    try:
        s = Rouge().get_scores(pred.lower(), target.lower())[0]
    except (ValueError, RecursionError):
        # `rouge` raises on an empty hypothesis/reference; MedEvalKit would crash: score 0.
        return 0.0, 0.0, 0.0
    return s["rouge-1"]["f"], s["rouge-2"]["f"], s["rouge-l"]["f"]


def judge_open_end_vqa(answer: str, response: str, reference_prf_mixup: bool = False) -> dict[str, Any]:
    """MedEvalKit open-question metrics for one sample.

    Args:
        answer: reference.
        response: model output.
        reference_prf_mixup: reproduce MedEvalKit's precision/recall/F1 key mix-up.
    """
    answer = answer.lower()
    response = medevalkit_parse_response(response)
    out: dict[str, Any] = {"em": response == answer}
    for n in range(1, 5):
        out[f"bleu{n}"] = _bleu(response, answer, n)
    out["rouge1"], out["rouge2"], out["rougel"] = _rouge(response, answer)
    precision, recall, f1 = set_precision_recall_f1(response, answer)
    if reference_prf_mixup:
        # calculate_f1 returns (f1, p, r) and is unpacked as (precision, recall, f1).
        out["precision"], out["recall"], out["f1"] = f1, precision, recall
    else:
        out["precision"], out["recall"], out["f1"] = precision, recall, f1
    return out


@register_protocol("medevalkit")
def medevalkit(items: Sequence[VQAItem], reference_prf_mixup: bool = False) -> ScoreResult:
    """Score VQA items the MedEvalKit way (see the module docstring).

    Args:
        items: samples with answer types.
        reference_prf_mixup: if True, the ``precision``/``recall``/``f1`` values are MedEvalKit's
            mislabelled ones (F1, precision, recall); default False gives the correct values.

    Returns:
        aggregate keys: ``accuracy`` (closed correct + open exact match over all), ``closed_accuracy``,
        ``open_accuracy`` (exact match), and the open means ``bleu1``..``bleu4``, ``rouge1``,
        ``rouge2``, ``rougel``, ``precision``, ``recall``, ``f1``.
    """
    rows = []
    for it in items:
        row: dict[str, Any] = {"id": it.id, "answer_type": it.answer_type}
        if it.answer_type == "CLOSED":
            if it.reference in ("yes", "no"):
                row["closed_correct"] = judge_judgement(it.reference, it.prediction)
            else:
                row["closed_correct"] = judge_close_end_vqa(it.reference, it.prediction)
            row["correct"] = row["closed_correct"]
        else:
            row["open"] = judge_open_end_vqa(it.reference, it.prediction, reference_prf_mixup)
            row["correct"] = row["open"]["em"]
        rows.append(row)
    open_rows = [r for r in rows if r["answer_type"] == "OPEN"]
    closed_rows = [r for r in rows if r["answer_type"] == "CLOSED"]
    agg = {"accuracy": mean(r["correct"] for r in rows)}
    if closed_rows:  # an answer type without items has no value
        agg["closed_accuracy"] = mean(r["correct"] for r in closed_rows)
    if open_rows:
        agg["open_accuracy"] = mean(r["correct"] for r in open_rows)
        for key in _OPEN_KEYS:
            agg[key] = mean(r["open"][key] for r in open_rows)
    notes = [
        (
            "precision/recall/f1 carry MedEvalKit's mislabelled values (reference_prf_mixup=True)"
            if reference_prf_mixup
            else "precision/recall/f1 are correct (MedEvalKit's key mix-up not reproduced; "
            "reference_prf_mixup=True reproduces it)"
        )
    ]
    return ScoreResult(
        protocol="medevalkit",
        aggregate=agg,
        per_item=rows,
        versions=library_versions(["nltk", "rouge"]),
        notes=notes,
        counts={"open": len(open_rows), "closed": len(closed_rows)},
    )
