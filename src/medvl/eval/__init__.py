"""Evaluation: VQA scoring protocols, report metrics, benchmark tasks and the ``medvl eval`` runner.

Public API (imported lazily so that ``import medvl.eval`` stays cheap)::

    from medvl.eval import VQAItem, score_vqa, available_protocols, score_reports, evaluate, EvalConfig
    res = score_vqa(items, "llava_med_v1")        # ScoreResult(protocol=..., aggregate=..., per_item=...)
    rep = score_reports(ids, predictions, references)   # protocol "report"
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VQAItem": "medvl.eval.vqa",
    "score_vqa": "medvl.eval.vqa",
    "get_protocol": "medvl.eval.vqa",
    "available_protocols": "medvl.eval.vqa",
    "ScoreResult": "medvl.eval.results",
    "score_reports": "medvl.eval.report_metrics",
    "coco_metrics": "medvl.eval.report_metrics",
    "bertscore": "medvl.eval.report_metrics",
    "clinical_metric": "medvl.eval.report_metrics",
    "get_task": "medvl.eval.tasks",
    "available_tasks": "medvl.eval.tasks",
    "EvalConfig": "medvl.eval.runner",
    "evaluate": "medvl.eval.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medvl.eval' has no attribute {name!r}")
