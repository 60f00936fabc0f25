"""Normalisers against the values printed by the reference implementations (eval-golden.json)."""

from __future__ import annotations

import pytest

from medvl.eval.text import (
    has_cjk,
    jieba_tokenize,
    llava_med_normalize_word,
    medevalkit_parse_response,
    slake_normalize_answer,
    squad_normalize_answer,
)

try:
    from tests.eval_golden import load_golden
except ImportError:  # tests/ not a package
    from eval_golden import load_golden

GOLDEN = load_golden()


@pytest.mark.parametrize("case", GOLDEN["normalization"], ids=lambda c: c["input"])
def test_normalisers_match_references(case):
    assert llava_med_normalize_word(case["input"]) == case["llava_med_normalize_word"]
    assert slake_normalize_answer(case["input"]) == case["lmms_eval_slake_normalize_answer"]
    assert squad_normalize_answer(case["input"]) == case["m3d_squad_normalize_answer"]


def test_jieba_segmentation_matches_golden():
    for text, tokens in GOLDEN["jieba_lcut"].items():
        assert jieba_tokenize(text) == tokens


def test_llava_period_count_quirk():
    # re.UNICODE (32) passed as count: only the first 32 sentence periods are removed.
    text = "a." * 40
    assert llava_med_normalize_word(text).count(".") == 8


def test_medevalkit_parse_response():
    assert medevalkit_parse_response("Reasoning... The answer is: Yes") == ": yes"
    assert medevalkit_parse_response("<answer>Left lung</answer>") == "left lung"
    assert medevalkit_parse_response(r"so \boxed{{a}b}") == "{a}b"
    assert medevalkit_parse_response("boxed in") == "None"  # reference quirk kept


def test_has_cjk():
    assert has_cjk("左肺") and not has_cjk("left lung")
