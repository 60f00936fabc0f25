"""Shared fixtures: a tiny medvl checkpoint built once per test session from configs/tiny.yaml.

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
