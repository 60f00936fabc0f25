"""``llava_med_v1``: LLaVA-Med v1.0.0 VQA scoring, bug-compatible.

Re-implements microsoft/LLaVA-Med tag v1.0.0 ``llava/eval/run_eval_batch.py`` (the numbers of the
paper's tables), with ``eval_metrics/{glossary,evaluate_metrics,utils}.py`` and, as extra
columns, ``run_eval.py``'s variants. Behaviour kept on purpose:

- both texts are lower-cased and passed through ``normalize_word`` (see
  :func:`medvl.eval.text.llava_med_normalize_word`), and again inside the token metrics;
- closed accuracy: the normalised reference is a *substring* of the normalised prediction
  ("no" matches "nodule", "yes" matches "eyes");
- open "recall" (the number LLaVA-Med reports for open questions): token recall where a
  predicted word counts as often as it occurs in the prediction (unclipped: "left left left" vs
  "left lung" gives 3/4);
- open accuracy: substring hit (``run_eval_batch``) or, with ``candidates``, the
  closest-candidate match of ``run_eval.py`` (``open_accuracy_candidates``);
- BLEU columns: NLTK ``sentence_bleu`` on whitespace tokens without smoothing (the default
  4-gram BLEU is 0 for almost every short answer; kept because LLaVA-Med prints it).

Values are fractions in [0, 1]; LLaVA-Med prints them x100.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from medvl.eval.results import ScoreResult, library_versions, mean
from medvl.eval.text import llava_med_normalize_word, llava_med_split_sentence
from medvl.eval.vqa.base import VQAItem, register_protocol


def token_f1_precision_recall(candidate: str, reference: str) -> tuple[float, float, float]:
    """LLaVA-Med ``calculate_f1score``: (f1, precision, recall) over word counts, unclipped.

    True positives add the *candidate's* count of each shared word, so repeating a correct word
    raises recall above what clipping would allow. Returns zeros when either side is empty or
    nothing matches.

    Args:
        candidate: prediction (normalised again here, as in the reference).
        reference: ground truth.
    """
    cand = llava_med_split_sentence(llava_med_normalize_word(candidate), 1)
    ref = llava_med_split_sentence(llava_med_normalize_word(reference), 1)
    tp = fp = fn = 0
    for word in set(cand) | set(ref):
        if word in cand and word in ref:
            tp += cand[word]
        elif word in cand:
            fp += cand[word]
        else:
            fn += ref[word]
    if not cand or not ref or tp == 0:
        return 0.0, 0.0, 0.0
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), precision, recall


def exact_match_score(candidate: str, reference: str) -> float:
    """LLaVA-Med ``calculate_exactmatch``: distinct reference words found in the candidate divided
    by the candidate's word count (a precision-like number despite its name).

    Args:
        candidate: prediction.
        reference: ground truth.
    """
    cand = llava_med_split_sentence(llava_med_normalize_word(candidate), 1)
    ref = llava_med_split_sentence(llava_med_normalize_word(reference), 1)
    count = sum(1 for w in ref if w in cand)
    total = sum(cand.values())
    return count / total if total else 0.0


def candidate_match(prediction: str, reference: str, candidates: Sequence[str]) -> float:
    """LLaVA-Med ``calculate_appearance_with_normalization`` (``run_eval.py`` open accuracy).

    Picks the candidate answer (from the training set's open answers) whose words are best
    covered by the prediction's distinct words (first maximum wins) and scores 1.0 when it equals
    the reference after normalisation.

    Args:
        prediction: prediction.
        reference: ground truth.
        candidates: candidate answers (ints allowed, as in the released files).
    """
    pred_words = llava_med_split_sentence(llava_med_normalize_word(prediction), 1)
    ref = llava_med_normalize_word(reference)
    best, best_sim = None, None
    for cand in candidates:
        cand_norm = llava_med_normalize_word(str(cand))
        cand_words = llava_med_split_sentence(cand_norm, 1)
        count = sum(1 for w in pred_words if w in cand_words)
        sim = count / len(cand_words) if cand_words else 0.0
        if best_sim is None or sim > best_sim:
            best, best_sim = cand_norm, sim
    return 1.0 if best is not None and best == ref else 0.0


def nltk_sentence_bleu(reference: str, prediction: str, weights: tuple[float, ...]) -> float:
    """NLTK ``sentence_bleu`` on whitespace tokens, no smoothing (warnings silenced).

    Args:
        reference: reference text.
        prediction: hypothesis text.
        weights: n-gram weights, e.g. ``(1, 0, 0, 0)``.
    """
    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([reference.lower().split()], prediction.lower().split(), weights=weights))


@register_protocol("llava_med_v1")
def llava_med_v1(items: Sequence[VQAItem], candidates: Sequence[str] | None = None) -> ScoreResult:
    """Score VQA items the way LLaVA-Med v1.0.0 does (see the module docstring).

    Args:
        items: samples with ``answer_type`` CLOSED/OPEN.
        candidates: optional candidate answers (LLaVA-Med's ``train_open_answers.json`` list,
            i.e. the ``"0"`` entry) for ``run_eval.py``'s candidate-based open accuracy.

    Returns:
        aggregate keys: ``closed_accuracy``, ``open_recall``, ``open_accuracy`` (the three numbers
        LLaVA-Med reports), plus ``open_precision``, ``open_f1``, ``exact_match``, ``bleu``,
        ``bleu_1``..``bleu_3``, ``recall_closed``, ``closed_accuracy_run_eval`` and, with
        candidates, ``open_accuracy_candidates``.
    """
    rows = []
    for it in items:
        gt = llava_med_normalize_word(it.reference.lower())
        pred = llava_med_normalize_word(it.prediction.lower())
        row: dict[str, Any] = {"id": it.id, "answer_type": it.answer_type, "gt_norm": gt, "pred_norm": pred}
        if it.language:
            row["language"] = it.language
        f1, precision, recall = token_f1_precision_recall(pred, gt)
        if it.answer_type == "OPEN":
            row["open_substring_hit"] = int(gt in pred)
            row["token_recall"] = recall
            row["token_precision"] = precision
            row["token_f1"] = f1
            row["exact_match_score"] = exact_match_score(pred, gt)
            if candidates is not None:
                row["candidate_open_acc"] = candidate_match(pred, gt, candidates)
            row["nltk_sentence_bleu_default"] = nltk_sentence_bleu(gt, pred, (0.25, 0.25, 0.25, 0.25))
            row["nltk_sentence_bleu1"] = nltk_sentence_bleu(gt, pred, (1, 0, 0, 0))
            row["nltk_sentence_bleu2"] = nltk_sentence_bleu(gt, pred, (0, 1, 0, 0))
            row["nltk_sentence_bleu3"] = nltk_sentence_bleu(gt, pred, (0, 0, 1, 0))
        else:
            row["closed_hit_run_eval_batch"] = int(gt in pred)
            # run_eval.py only credits a hit when "yes" or "no" occurs somewhere in the output.
            row["closed_hit_run_eval"] = int(("yes" in pred or "no" in pred) and gt in pred)
            row["closed_token_recall"] = recall
        rows.append(row)

    open_rows = [r for r in rows if r["answer_type"] == "OPEN"]
    closed_rows = [r for r in rows if r["answer_type"] == "CLOSED"]
    agg: dict[str, float] = {}
    # A group without items has no value (LLaVA-Med divides by zero there): its keys are omitted.
    if closed_rows:
        agg["closed_accuracy"] = mean(r["closed_hit_run_eval_batch"] for r in closed_rows)
    if open_rows:
        agg.update(
            {
                "open_recall": mean(r["token_recall"] for r in open_rows),
                "open_accuracy": mean(r["open_substring_hit"] for r in open_rows),
                "open_precision": mean(r["token_precision"] for r in open_rows),
                "open_f1": mean(r["token_f1"] for r in open_rows),
                "exact_match": mean(r["exact_match_score"] for r in open_rows),
                "bleu": mean(r["nltk_sentence_bleu_default"] for r in open_rows),
                "bleu_1": mean(r["nltk_sentence_bleu1"] for r in open_rows),
                "bleu_2": mean(r["nltk_sentence_bleu2"] for r in open_rows),
                "bleu_3": mean(r["nltk_sentence_bleu3"] for r in open_rows),
            }
        )
        if candidates is not None:
            agg["open_accuracy_candidates"] = mean(r["candidate_open_acc"] for r in open_rows)
    if closed_rows:
        agg["recall_closed"] = mean(r["closed_token_recall"] for r in closed_rows)
        agg["closed_accuracy_run_eval"] = mean(r["closed_hit_run_eval"] for r in closed_rows)
    notes = ["fractions in [0, 1]; LLaVA-Med prints x100"]
    if not open_rows or not closed_rows:
        notes.append("metrics of an answer type without items are omitted")
    return ScoreResult(
        protocol="llava_med_v1",
        aggregate=agg,
        per_item=rows,
        versions=library_versions(["nltk"]),
        notes=notes,
        counts={"open": len(open_rows), "closed": len(closed_rows)},
    )
