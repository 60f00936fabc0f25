"""``mcq``: option-letter extraction for multiple-choice sets (PMC-VQA, OmniMedVQA, M3D closed).

The chosen option is read from the output in this order (the first rule that fires wins; the
rule is recorded per item as ``method``):

1. ``letter``: the output starts with an option letter ("B", "B.", "(B)", "B)", "B:");
2. ``cue``: a cue followed by a letter ("answer is C", "Answer: (C)", "option C"), or exactly
   one distinct bracketed letter anywhere ("I would pick (C)");
3. ``text``: the text of exactly one option occurs in the output (case-insensitive; the longest
   option wins when one contains another);
4. ``similarity``: otherwise the option most similar to the output (``difflib`` ratio, first
   maximum), as MedEvalKit's ``judge_multi_choice`` falls back to.

An empty output picks nothing and is wrong. The reference may be the letter (``answer_choice``
or a one-letter ``reference``) or the option text.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Sequence
from typing import Any

from medvl.eval.results import ScoreResult, library_versions, mean
from medvl.eval.vqa.base import VQAItem, register_protocol

_LEADING = re.compile(r"^\s*[\(\[]?([A-Za-z])(?:[\)\]\.:,]|\s|$)")
_BRACKETED = re.compile(r"[\(\[]([A-Za-z])[\)\]]")
_CUE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:)?\s*(?:option\s*)?[\(\[]?([A-Za-z])(?:[\)\]\.:,]|\s|$)", re.IGNORECASE
)


def _letters(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n])


def extract_choice(prediction: str, options: Sequence[str]) -> tuple[str | None, str]:
    """The option letter chosen by ``prediction`` and the rule that found it.

    Args:
        prediction: model output.
        options: option texts in letter order.

    Returns:
        (letter or None, method) with method in ``letter``, ``cue``, ``text``, ``similarity``,
        ``empty``.
    """
    letters = _letters(len(options))
    text = prediction.strip()
    if not text:
        return None, "empty"
    m = _LEADING.match(text)
    if m and m.group(1).upper() in letters:
        letter, nxt = m.group(1), text[m.end(1) : m.end(1) + 1]
        # "B", "B.", "(B)", "B)", "B:" are choices; "A mass ..." / "I think ..." are words.
        if (
            nxt in ("", ".", ")", "]", ":", ",")
            or text.lstrip()[0] in "(["
            or (letter.isupper() and letter not in ("A", "I"))
        ):
            return letter.upper(), "letter"
    for m in _CUE.finditer(text):
        if m.group(1).upper() in letters:
            return m.group(1).upper(), "cue"
    bracketed = {x.upper() for x in _BRACKETED.findall(text) if x.upper() in letters}
    if len(bracketed) == 1:
        return bracketed.pop(), "cue"
    low = text.lower()
    hits = [i for i, opt in enumerate(options) if opt.strip() and opt.strip().lower() in low]
    if hits:
        best = max(hits, key=lambda i: len(options[i].strip()))
        return letters[best], "text"
    ratios = [difflib.SequenceMatcher(None, opt.lower(), low).ratio() for opt in options]
    best = max(range(len(options)), key=lambda i: (ratios[i], -i))
    return letters[best], "similarity"


def reference_letter(item: VQAItem) -> str:
    """The correct letter of ``item`` (from ``answer_choice``, a one-letter reference or the text).

    Args:
        item: the sample (must have ``options``).

    Raises:
        ValueError: the reference matches no option (names the item).
    """
    letters = _letters(len(item.options or []))
    if item.answer_choice and item.answer_choice.strip().upper() in letters:
        return item.answer_choice.strip().upper()
    ref = item.reference.strip()
    m = re.fullmatch(r"\(?([A-Za-z])\)?\.?", ref)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    for letter, opt in zip(letters, item.options or []):
        if opt.strip().lower() == ref.lower():
            return letter
    raise ValueError(
        f"item {item.id!r}: reference {item.reference!r} is neither an option letter "
        f"({', '.join(letters)}) nor one of the options {item.options!r}"
    )


@register_protocol("mcq")
def mcq(items: Sequence[VQAItem]) -> ScoreResult:
    """Multiple-choice accuracy with option-letter extraction (see the module docstring).

    Args:
        items: samples with ``options``.

    Returns:
        aggregate keys: ``accuracy`` and ``accuracy_<language>`` per language present.

    Raises:
        ValueError: an item without options.
    """
    rows: list[dict[str, Any]] = []
    for it in items:
        if not it.options:
            raise ValueError(f"item {it.id!r}: the mcq protocol needs 'options' (the answer choices)")
        gt = reference_letter(it)
        choice, method = extract_choice(it.prediction, it.options)
        row = {
            "id": it.id,
            "answer_choice": gt,
            "predicted_choice": choice,
            "method": method,
            "correct": int(choice == gt),
        }
        if it.language:
            row["language"] = it.language
        rows.append(row)
    agg = {"accuracy": mean(r["correct"] for r in rows)}
    for lang in sorted({r["language"] for r in rows if "language" in r}):
        agg[f"accuracy_{lang}"] = mean(r["correct"] for r in rows if r.get("language") == lang)
    methods: dict[str, int] = {}
    for r in rows:
        methods[r["method"]] = methods.get(r["method"], 0) + 1
    return ScoreResult(
        protocol="mcq",
        aggregate=agg,
        per_item=rows,
        versions=library_versions([]),
        counts={"all": len(rows), **{f"method_{k}": v for k, v in methods.items()}},
    )
