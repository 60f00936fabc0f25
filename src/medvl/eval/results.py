"""The result object every scorer returns: values always travel with their protocol name."""

from __future__ import annotations

import importlib.metadata
import math
import platform
import subprocess
from dataclasses import dataclass, field
from typing import Any, Iterable


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
    """

    protocol: str
    aggregate: dict[str, float]
    per_item: list[dict[str, Any]]
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

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
