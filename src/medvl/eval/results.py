"""The result object every scorer returns: values always travel with their protocol name."""

from __future__ import annotations

import importlib.metadata
import logging
import math
import platform
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class ScoreResult:
    """Scores of one protocol on one set of predictions.

    Args:
        protocol: the protocol name (e.g. ``"llava_med_v1"``, ``"report"``); never empty.
        aggregate: metric name -> value (fractions in [0, 1] unless the metric says otherwise,
            e.g. sacrebleu's 0-100 BLEU).
        per_item: one dict per item, in input order, each with at least ``"id"``.
        versions: library name -> version used to compute the values.
        notes: how the values were computed where it matters (tokeniser used, metrics skipped).
        counts: number of items per group (e.g. ``{"open": 7, "closed": 6}``).
        intervals: metric -> bootstrap 95% interval [low, high] computed by the scorer itself, for
            corpus-level metrics whose resampling needs more than per-item values (corpus BLEU).
    """

    protocol: str
    aggregate: dict[str, float]
    per_item: list[dict[str, Any]]
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.protocol:
            raise ValueError("a score result must name its protocol")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``protocol``, ``aggregate``, ``counts``, ``per_item``, ``versions``, ``notes``)."""
        return {
            "protocol": self.protocol,
            "aggregate": {k: _jsonable(v) for k, v in self.aggregate.items()},
            "counts": dict(self.counts),
            "per_item": [{k: _jsonable(v) for k, v in row.items()} for row in self.per_item],
            "versions": dict(self.versions),
            "notes": list(self.notes),
            **({"intervals": {k: list(v) for k, v in self.intervals.items()}} if self.intervals else {}),
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        return v.item()  # numpy scalar
    return v


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean; 0.0 for an empty sequence (the reference codes either crash or use 0).

    Args:
        values: numbers.
    """
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else 0.0


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of ``names`` (distribution names); missing ones are "not installed".

    Args:
        names: pip distribution names, e.g. ``["nltk", "rouge-score"]``.
    """
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def java_version() -> str | None:
    """First line of ``java -version``, or None when no Java runtime is on PATH."""
    try:
        proc = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[0] if lines else "java"


# Per-item values behind each headline metric that is a mean over items: protocol -> metric ->
# (per-item column, answer type the mean is taken over or None for every item that has the column).
# The bootstrap checks that the mean of the column equals the reported value before using it.
ITEM_MEANS: dict[str, dict[str, tuple[str, str | None]]] = {
    "llava_med_v1": {
        "closed_accuracy": ("closed_hit_run_eval_batch", "CLOSED"),
        "open_recall": ("token_recall", "OPEN"),
        "open_accuracy": ("open_substring_hit", "OPEN"),
    },
    "exact_norm": {
        "accuracy": ("correct", None),
        "closed_accuracy": ("correct", "CLOSED"),
        "open_accuracy": ("correct", "OPEN"),
    },
    "mcq": {"accuracy": ("correct", None)},
    "m3d": {
        "closed_accuracy": ("correct", "CLOSED"),
        "bleu1": ("bleu1", "OPEN"),
        "rouge1": ("rouge1", "OPEN"),
        "meteor": ("meteor", "OPEN"),
        "bert_f1": ("bert_f1", "OPEN"),
    },
    # pycocoevalcap's ROUGE-L and CIDEr-D are means of per-report scores (CIDEr's document
    # frequencies stay those of the full reference set while items are resampled).
    "report": {
        "rouge_l": ("rouge_l", None),
        "cider": ("cider", None),
        "rougeL": ("rougeL", None),
        "bertscore_f1": ("bertscore_f1", None),
        "f1_chexbert_accuracy": ("f1_chexbert_accuracy_5", None),
        "radgraph_simple": ("radgraph_simple", None),
        "radgraph_partial": ("radgraph_partial", None),
        "radgraph_complete": ("radgraph_complete", None),
        "ratescore": ("ratescore", None),
    },
}


def item_values(result: ScoreResult, metric: str) -> list[float] | None:
    """Per-item values whose mean is ``result.aggregate[metric]``, or None when the metric is not a
    mean over items (corpus BLEU, METEOR's Java aggregate) or the values do not reproduce it.

    Args:
        result: a scored result.
        metric: aggregate key.
    """
    spec = ITEM_MEANS.get(result.protocol, {}).get(metric)
    if spec is None or metric not in result.aggregate:
        return None
    column, answer_type = spec
    values = [
        float(r[column])
        for r in result.per_item
        if r.get(column) is not None and (answer_type is None or r.get("answer_type") == answer_type)
    ]
    if not values:
        return None
    if abs(sum(values) / len(values) - float(result.aggregate[metric])) > 1e-9:
        # a registered mean that the per-item column no longer reproduces: the registry or the
        # scorer changed; say so instead of quietly reporting no interval
        logger.warning(
            "%s %s: the per-item %r values do not reproduce the aggregate; no interval", result.protocol, metric, column
        )
        return None
    return values


def bootstrap_ci(
    values: list[float], *, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (items resampled with replacement).

    Args:
        values: per-item values.
        n_resamples: number of bootstrap resamples.
        seed: seed of numpy's ``default_rng`` (same seed, same interval).
        confidence: coverage of the interval (0.95 -> 2.5th and 97.5th percentiles).
    """
    import numpy as np

    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), size=(n_resamples, len(data)))
    means = data[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)
