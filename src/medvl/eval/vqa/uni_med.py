"""``uni_med``: the Uni-Med scoring that MedM-VL-2D's reported numbers follow.

Re-implements MSIIP/Uni-Med ``eval_vqa.py`` (``calculate_acc``, ``calculate_bleu``,
``calculate_f1``) and ``eval_cls.py``:

- predictions are lower-cased, ``<unk>`` removed and stripped, as Uni-Med does after
  generation; both sides then go through LLaVA-Med's ``normalize_word``;
- closed accuracy: normalised reference is a substring of the normalised prediction;
- BLEU-1..4: NLTK ``sentence_bleu`` with cumulative uniform weights, no smoothing, on
  whitespace tokens of the normalised texts, averaged (reported for open, closed and all);
- F1: LLaVA-Med's unclipped token F1, averaged;
- classification (``classification=True``): exact match of the normalised texts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from medvl.eval.results import ScoreResult, library_versions, mean
from medvl.eval.text import llava_med_normalize_word
from medvl.eval.vqa.base import VQAItem, register_protocol
from medvl.eval.vqa.llava_med import token_f1_precision_recall

_WEIGHTS = {1: (1, 0, 0, 0), 2: (0.5, 0.5), 3: (1 / 3, 1 / 3, 1 / 3), 4: (0.25, 0.25, 0.25, 0.25)}


def _clean_prediction(text: str) -> str:
    return text.lower().replace("<unk>", "").strip()


@register_protocol("uni_med")
def uni_med(items: Sequence[VQAItem], classification: bool = False) -> ScoreResult:
    """Score items the Uni-Med way (see the module docstring).

    Args:
        items: samples.
        classification: score as a classification task (normalised exact match, ``accuracy``)
            instead of VQA.

    Returns:
        aggregate keys (VQA): ``closed_accuracy``, ``open_bleu1``..``open_bleu4``, ``open_f1``,
        ``closed_bleu1``.., ``closed_f1``, ``all_bleu1``.., ``all_f1``; (classification): ``accuracy``.
    """
    from nltk.translate.bleu_score import sentence_bleu

    rows = []
    for it in items:
        pred = llava_med_normalize_word(_clean_prediction(it.prediction))
        gt = llava_med_normalize_word(it.reference)
        row: dict[str, Any] = {"id": it.id, "answer_type": it.answer_type, "gt_norm": gt, "pred_norm": pred}
        if classification:
            row["correct"] = int(gt == pred)
        else:
            row["substring_hit"] = int(gt in pred)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for n, w in _WEIGHTS.items():
                    row[f"bleu{n}"] = float(sentence_bleu([gt.split()], pred.split(), weights=w))
            # Uni-Med passes the raw (cleaned) texts; normalize_word is applied inside again.
            row["f1"] = token_f1_precision_recall(_clean_prediction(it.prediction), it.reference)[0]
        rows.append(row)
    versions = library_versions(["nltk"])
    if classification:
        return ScoreResult(
            protocol="uni_med",
            aggregate={"accuracy": mean(r["correct"] for r in rows)},
            per_item=rows,
            versions=versions,
            notes=["classification exact match"],
            counts={"all": len(rows)},
        )
    groups = {
        "open": [r for r in rows if r["answer_type"] == "OPEN"],
        "closed": [r for r in rows if r["answer_type"] == "CLOSED"],
        "all": rows,
    }
    agg: dict[str, float] = {}
    if groups["closed"]:
        agg["closed_accuracy"] = mean(r["substring_hit"] for r in groups["closed"])
    for g, rs in groups.items():
        if not rs:  # an answer type without items has no value
            continue
        for n in range(1, 5):
            agg[f"{g}_bleu{n}"] = mean(r[f"bleu{n}"] for r in rs)
        agg[f"{g}_f1"] = mean(r["f1"] for r in rs)
    return ScoreResult(
        protocol="uni_med",
        aggregate=agg,
        per_item=rows,
        versions=versions,
        counts={k: len(v) for k, v in groups.items()},
    )
