"""VQA item type and the protocol registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from medvl.eval.results import ScoreResult

ANSWER_TYPES = ("CLOSED", "OPEN")


@dataclass
class VQAItem:
    """One scored VQA sample.

    Args:
        id: sample id (unique within a run).
        prediction: the model's answer (may be empty: an empty answer is scored, not dropped).
        reference: the ground-truth answer.
        answer_type: "CLOSED" (yes/no or fixed choice) or "OPEN"; other spellings are normalised
            ("closed", "yes/no" -> "CLOSED").
        question: the question text.
        options: answer options in letter order (A, B, ...) for multiple-choice items.
        answer_choice: the correct option letter, when known (M3D closed questions, MCQ sets).
        language: "en", "zh", ... (for per-language reporting).
        meta: anything else carried through to the per-item output.
    """

    id: str
    prediction: str
    reference: str
    answer_type: str = "OPEN"
    question: str = ""
    options: list[str] | None = None
    answer_choice: str | None = None
    language: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.answer_type = normalize_answer_type(self.answer_type)
        self.prediction = "" if self.prediction is None else str(self.prediction)
        self.reference = str(self.reference)


def normalize_answer_type(value: str | None) -> str:
    """Map the answer-type spellings of the public sets to "CLOSED"/"OPEN".

    Args:
        value: e.g. "CLOSED", "closed", "yes/no", "OPEN", "open", "other".

    Raises:
        ValueError: for anything else (lists the valid spellings).
    """
    v = (value or "").strip().lower()
    if v in {"closed", "close", "yes/no", "yesno", "closed-ended", "close-ended"}:
        return "CLOSED"
    if v in {"open", "other", "open-ended", "number"}:
        return "OPEN"
    raise ValueError(f"unknown answer_type {value!r}; valid: CLOSED, OPEN (or closed, yes/no, open, other)")


Protocol = Callable[..., ScoreResult]
_REGISTRY: dict[str, Protocol] = {}


def register_protocol(name: str) -> Callable[[Protocol], Protocol]:
    """Decorator registering a VQA protocol function under ``name``.

    Args:
        name: the protocol name written into every result.
    """

    def deco(fn: Protocol) -> Protocol:
        _REGISTRY[name] = fn
        fn.protocol_name = name  # type: ignore[attr-defined]
        return fn

    return deco


def available_protocols() -> list[str]:
    """Names of the registered VQA protocols, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get_protocol(name: str) -> Protocol:
    """The protocol function called ``name``.

    Args:
        name: protocol name, e.g. ``"llava_med_v1"``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown VQA protocol {name!r}; valid: {', '.join(sorted(_REGISTRY))}") from None


def score_vqa(items: Sequence[VQAItem], protocol: str, **options: Any) -> ScoreResult:
    """Score ``items`` with the named protocol.

    Args:
        items: the samples.
        protocol: protocol name (see :func:`available_protocols`).
        **options: protocol options (e.g. ``reference_prf_mixup=True`` for ``medevalkit``).
    """
    return get_protocol(protocol)(items, **options)


def _load_all() -> None:
    # The protocol modules register themselves on import.
    from medvl.eval.vqa import exact_norm, llava_med, m3d, mcq, medevalkit, uni_med  # noqa: F401
