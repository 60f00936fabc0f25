"""Shared loader of ../shared/fixtures/eval-golden.json for the eval tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_CANDIDATES = [
    os.environ.get("MEDVL_EVAL_GOLDEN", ""),
    str(Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "eval-golden.json"),
    "/work/shared/fixtures/eval-golden.json",
]


def load_golden() -> dict:
    """The golden vectors, or a clean skip when the shared fixtures are not checked out."""
    for c in _CANDIDATES:
        if c and Path(c).is_file():
            return json.loads(Path(c).read_text(encoding="utf-8"))
    pytest.skip("eval-golden.json not found (set MEDVL_EVAL_GOLDEN)")
