"""Loader of tests/fixtures/eval-golden.json for the eval tests."""

from __future__ import annotations

import json

from tests.conftest import fixture_path


def load_golden() -> dict:
    """The golden vectors (a missing file fails collection; it never skips)."""
    return json.loads(fixture_path("eval-golden.json").read_text(encoding="utf-8"))
