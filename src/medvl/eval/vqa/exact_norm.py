"""``exact_norm``: lmms-eval's SLAKE scoring (exact match after normalisation).

Re-implements EvolvingLMMs-Lab/lmms-eval ``lmms_eval/tasks/slake/utils.py``: an answer is
correct when ``normalize_answer(prediction) == normalize_answer(reference)`` (see
:func:`medvl.eval.text.slake_normalize_answer`: lower-case, no parenthesised asides, no ASCII
or Chinese punctuation, "x ray" == "xray", whole-answer yes/no synonyms in English and Chinese).
A verbose correct answer ("Yes, there is ...") scores 0: this protocol rewards short answers,
which is why lmms-eval prompts with a short-answer suffix.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from medvl.eval.results import ScoreResult, library_versions, mean
from medvl.eval.text import slake_normalize_answer
from medvl.eval.vqa.base import VQAItem, register_protocol


@register_protocol("exact_norm")
def exact_norm(items: Sequence[VQAItem]) -> ScoreResult:
    """Normalised exact match (lmms-eval SLAKE).

    Args:
        items: samples; ``language`` (if set) gives per-language accuracies.

    Returns:
        aggregate keys: ``accuracy``, ``open_accuracy``, ``closed_accuracy`` and
        ``accuracy_<language>`` for every language present.
    """
    rows: list[dict[str, Any]] = []
    for it in items:
        pred_norm = slake_normalize_answer(it.prediction)
        gt_norm = slake_normalize_answer(it.reference)
        row = {
            "id": it.id,
            "answer_type": it.answer_type,
            "pred_norm": pred_norm,
            "gt_norm": gt_norm,
            "correct": pred_norm == gt_norm,
        }
        if it.language:
            row["language"] = it.language
        rows.append(row)
    agg = {"accuracy": mean(r["correct"] for r in rows)}
    for group in ("open", "closed"):
        vals = [r["correct"] for r in rows if r["answer_type"] == group.upper()]
        if vals:  # an answer type without items has no value
            agg[f"{group}_accuracy"] = mean(vals)
    by_lang: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        if "language" in r:
            by_lang[r["language"]].append(r["correct"])
    for lang, vals in sorted(by_lang.items()):
        agg[f"accuracy_{lang}"] = mean(vals)
    counts = {
        "open": sum(r["answer_type"] == "OPEN" for r in rows),
        "closed": sum(r["answer_type"] == "CLOSED" for r in rows),
    }
    counts.update({f"language_{k}": len(v) for k, v in by_lang.items()})
    return ScoreResult(
        protocol="exact_norm", aggregate=agg, per_item=rows, versions=library_versions([]), counts=counts
    )
