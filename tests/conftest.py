"""Shared fixtures: a tiny medvl checkpoint built once per test session from configs/tiny.yaml.

``fixtures_dir`` / ``fixture_path(...)``: the data under ``tests/fixtures/`` (golden metric vectors,
MedM-VL and CT-CLIP reference checkpoints; see its README). A missing fixture fails the test that
needs it; it never skips.
``tiny_model_dir``: a saved, self-contained checkpoint folder (treat it as read-only).
``tiny_processor``: its ``MedVLProcessor``. ``tiny_model``: the model loaded from it (eval mode;
do not modify it in place, load your own copy for training).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = REPO_ROOT / "configs" / "tiny.yaml"
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


def fixture_path(*parts: str) -> Path:
    """A file or folder under ``tests/fixtures``; a missing one is a failure, never a skip.

    Module-level callers (``from tests.conftest import fixture_path``) fail at collection, which pytest
    reports as an error naming the missing path.

    Args:
        parts: path components below ``tests/fixtures`` (e.g. ``"medmvl", "medmvl-2d-siglip-mlp"``).
    """
    path = FIXTURES_DIR.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test fixture missing: {path} (tests/fixtures/README.md lists what belongs there)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The ``tests/fixtures`` folder (checked to exist)."""
    return fixture_path()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from medvl.build import build_model, load_model_spec, save_checkpoint

    model, processor = build_model(load_model_spec(TINY_YAML))
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("tiny_medvl") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_processor(tiny_model_dir):
    from medvl.models import MedVLProcessor

    return MedVLProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from medvl.models import MedVLForConditionalGeneration

    return MedVLForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
