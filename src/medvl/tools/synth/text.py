"""The bilingual questions and findings reports of a synthetic chest case.

Everything a record says (closed yes/no, choice and count questions, open questions, the findings
report; English and Chinese) derives from a case's :class:`~medvl.tools.synth.findings.CaseFindings`.
Closed types have a fixed answer set (scored by exact match), open ones are scored as text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvl.tools.synth.findings import CaseFindings, Nodule

LANGUAGES = ("en", "zh")

# Closed question types (fixed answer set, scored by exact match) and open ones (scored as text).
CLOSED_TYPES = ("nodule_presence", "nodule_count", "nodule_side", "effusion_presence", "effusion_side", "heart_size")
OPEN_TYPES = ("nodule_location", "nodule_size", "report")

_ZH_SIDE = {"left": "左", "right": "右", "both": "双侧", "none": "无"}
_ZH_LOBE = {"upper": "上叶", "middle": "中叶", "lower": "下叶"}
_ZH_YESNO = {"yes": "是", "no": "否"}
_ZH_HEART = {"normal": "正常", "enlarged": "增大"}


# --------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------

# (English templates, Chinese templates) per question type. Several phrasings so that a model must
# read the question, not memorise one string.
_TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "nodule_presence": (
        ("Is there a lung nodule?", "Are there any pulmonary nodules?", "Does this patient have a lung nodule?"),
        ("是否有肺结节？", "图像中可见肺结节吗？"),
    ),
    "nodule_count": (
        ("How many lung nodules are there?", "How many pulmonary nodules can be seen?"),
        ("有几个肺结节？", "图像中可见几个肺结节？"),
    ),
    "nodule_side": (
        ("Which lung has the nodule: left, right or both?", "On which side are the lung nodules: left, right or both?"),
        ("结节位于哪一侧肺：左、右还是双侧？", "肺结节在哪一侧：左、右还是双侧？"),
    ),
    "effusion_presence": (
        ("Is there a pleural effusion?", "Is pleural fluid present?"),
        ("是否有胸腔积液？", "可见胸腔积液吗？"),
    ),
    "effusion_side": (
        (
            "Which side is the pleural effusion on: left, right or both?",
            "Where is the pleural effusion: left, right or both?",
        ),
        ("胸腔积液位于哪一侧：左、右还是双侧？", "积液在哪一侧：左、右还是双侧？"),
    ),
    "heart_size": (
        ("Is the heart size normal or enlarged?", "Is the cardiac silhouette normal or enlarged?"),
        ("心脏大小正常还是增大？", "心影正常还是增大？"),
    ),
    "nodule_location": (
        ("Where is the lung nodule located?", "In which lobe is the nodule?"),
        ("肺结节位于哪个肺叶？", "结节在什么位置？"),
    ),
    "nodule_size": (
        ("What is the diameter of the lung nodule?", "How large is the nodule?"),
        ("肺结节的直径是多少？", "结节有多大？"),
    ),
    "report": (
        ("Describe the findings of this image.", "Write the findings section of the radiology report."),
        ("请描述该图像的影像所见。", "请写出影像学报告的所见部分。"),
    ),
}


@dataclass
class QA:
    """One question about a case with its reference answer.

    Args:
        question_type: one of CLOSED_TYPES or OPEN_TYPES.
        language: "en" or "zh".
        question: the question text (no media marker).
        answer: the reference answer.
        answer_type: "CLOSED" or "OPEN".
    """

    question_type: str
    language: str
    question: str
    answer: str
    answer_type: str


def _side_answer(side: str, language: str) -> str:
    return side if language == "en" else _ZH_SIDE[side]


def _yes_no(value: bool, language: str) -> str:
    word = "yes" if value else "no"
    return word if language == "en" else _ZH_YESNO[word]


def _lobe_name(n: Nodule, language: str) -> str:
    if language == "en":
        return f"{n.side} {n.lobe} lobe"
    return f"{_ZH_SIDE[n.side]}肺{_ZH_LOBE[n.lobe]}"


def answer_for(f: CaseFindings, question_type: str, language: str) -> str | None:
    """The reference answer of ``question_type`` for findings ``f``, or None when the question
    does not apply (e.g. which side the effusion is on when there is none).

    Args:
        f: the case's findings.
        question_type: one of CLOSED_TYPES or OPEN_TYPES.
        language: "en" or "zh".
    """
    if question_type == "nodule_presence":
        return _yes_no(bool(f.nodules), language)
    if question_type == "nodule_count":
        return str(len(f.nodules))
    if question_type == "nodule_side":
        return _side_answer(f.nodule_sides, language) if f.nodules else None
    if question_type == "effusion_presence":
        return _yes_no(f.effusion != "none", language)
    if question_type == "effusion_side":
        return _side_answer(f.effusion, language) if f.effusion != "none" else None
    if question_type == "heart_size":
        return f.heart if language == "en" else _ZH_HEART[f.heart]
    if question_type == "nodule_location":
        return _lobe_name(f.nodules[0], language) if len(f.nodules) == 1 else None
    if question_type == "nodule_size":
        if len(f.nodules) != 1:
            return None
        mm = round(f.nodules[0].diameter_mm)
        return f"{mm} mm" if language == "en" else f"{mm}毫米"
    if question_type == "report":
        return findings_report(f, language)
    raise ValueError(f"unknown question type {question_type!r}; valid: {', '.join(CLOSED_TYPES + OPEN_TYPES)}")


def make_question(f: CaseFindings, question_type: str, language: str, rng: np.random.Generator) -> QA | None:
    """A :class:`QA` of the given type with a random phrasing, or None when it does not apply.

    Args:
        f: the case's findings.
        question_type: one of CLOSED_TYPES or OPEN_TYPES.
        language: "en" or "zh".
        rng: random generator choosing the phrasing.
    """
    answer = answer_for(f, question_type, language)
    if answer is None:
        return None
    templates = _TEMPLATES[question_type][LANGUAGES.index(language)]
    question = templates[int(rng.integers(len(templates)))]
    answer_type = "CLOSED" if question_type in CLOSED_TYPES else "OPEN"
    return QA(question_type, language, question, answer, answer_type)


def _nodule_phrase(n: Nodule, language: str) -> str:
    mm = round(n.diameter_mm)
    if language == "en":
        return f"a {mm} mm nodule in the {_lobe_name(n, 'en')}"
    return f"{_lobe_name(n, 'zh')}见一约{mm}毫米结节"


def findings_report(f: CaseFindings, language: str) -> str:
    """The findings section of a report, built from the description (sentences in a fixed order:
    nodules, effusion, heart).

    Args:
        f: the case's findings.
        language: "en" or "zh".
    """
    # Order nodules anatomically so the same findings always give the same text.
    order = {
        ("right", "upper"): 0,
        ("right", "middle"): 1,
        ("right", "lower"): 2,
        ("left", "upper"): 3,
        ("left", "lower"): 4,
    }
    nodules = sorted(f.nodules, key=lambda n: (order[(n.side, n.lobe)], -n.diameter_mm))
    parts = []
    if language == "en":
        if not nodules:
            parts.append("No lung nodules.")
        elif len(nodules) == 1:
            phrase = _nodule_phrase(nodules[0], "en")
            parts.append(phrase[0].upper() + phrase[1:] + ".")
        else:
            phrases = ", ".join(f"{round(n.diameter_mm)} mm in the {_lobe_name(n, 'en')}" for n in nodules)
            parts.append(f"{len(nodules)} lung nodules: {phrases}.")
        parts.append(
            {
                "none": "No pleural effusion.",
                "left": "Left pleural effusion.",
                "right": "Right pleural effusion.",
                "both": "Bilateral pleural effusions.",
            }[f.effusion]
        )
        parts.append("The heart size is normal." if f.heart == "normal" else "The heart is enlarged.")
        return " ".join(parts)
    if not nodules:
        parts.append("未见肺结节。")
    elif len(nodules) == 1:
        parts.append(_nodule_phrase(nodules[0], "zh") + "。")
    else:
        phrases = "，".join(f"{_lobe_name(n, 'zh')}约{round(n.diameter_mm)}毫米" for n in nodules)
        parts.append(f"可见{len(nodules)}枚肺结节：{phrases}。")
    parts.append(
        {"none": "未见胸腔积液。", "left": "左侧胸腔积液。", "right": "右侧胸腔积液。", "both": "双侧胸腔积液。"}[
            f.effusion
        ]
    )
    parts.append("心脏大小正常。" if f.heart == "normal" else "心脏增大。")
    return "".join(parts)


def balance_keep_probabilities(answers_by_type: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Per question type, the probability to keep a question with a given answer so that every
    answer of the type is equally frequent (the blind guard: the answer prior carries no signal).

    Args:
        answers_by_type: question type -> the (language-independent) answers of all candidates.
    """
    keep: dict[str, dict[str, float]] = {}
    for qtype, answers in answers_by_type.items():
        if not answers:  # a tiny split may hold no candidate of this type: nothing to balance
            keep[qtype] = {}
            continue
        values, counts = np.unique(np.asarray(answers), return_counts=True)
        rarest = counts.min()
        keep[qtype] = {str(v): float(rarest / c) for v, c in zip(values, counts)}
    return keep
