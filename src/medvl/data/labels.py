"""Tokenisation with exact assistant-only labels.

The conversation is rendered with the chat template, and the rendered text is cut into alternating
prompt / answer character segments: for the k-th assistant message, ``render(messages[:k],
add_generation_prompt=True)`` ends where the answer starts, and the answer runs to the end of its
end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, EOS, ...). Each segment is tokenised on its own
and the ids are concatenated, so the supervised tokens are exactly the answers' tokens plus their
end-of-turn token, by construction, for every template, and no string-split heuristic can drift.

Media markers (``<image>``, ``<volume>``) are expanded to N placeholder ids (N from the model
config), exactly as the processor does, so lengths count media tokens. Nothing is ever truncated:
an over-long sample raises :class:`OverlongSampleError` and the dataset decides (skip or raise).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from medvl.data.records import IMAGE_MARKER, VOLUME_MARKER
from medvl.data.templates import KNOWN_END_OF_TURN, render, resolve_template
from medvl.errors import MedVLDataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from medvl.models.processing_medvl import MedVLProcessor

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_MARKER_SPLIT = re.compile("(" + re.escape(IMAGE_MARKER) + "|" + re.escape(VOLUME_MARKER) + ")")


class OverlongSampleError(MedVLDataError):
    """A sample is longer than ``max_length`` (media tokens included); it is never truncated.

    Args:
        message: what is wrong.
        length: the sample's token count (media tokens included).
        max_length: the configured limit.
        record: record id.
        path: records file.
    """

    def __init__(
        self, message: str, *, length: int, max_length: int, record: str | None = None, path: str | None = None
    ):
        super().__init__(message, record=record, path=path)
        self.length = length
        self.max_length = max_length


@dataclass
class Encoded:
    """Token ids of one conversation.

    Args:
        input_ids: ids with every media marker expanded to its placeholder tokens.
        labels: same length; ``-100`` everywhere except the answers and their end-of-turn tokens.
        text: the rendered conversation (markers not expanded), for inspection.
    """

    input_ids: list[int]
    labels: list[int]
    text: str

    def __len__(self) -> int:
        return len(self.input_ids)


class ConversationEncoder:
    """Renders conversations with a chat template and tokenises them with exact labels.

    Args:
        tokenizer: a Hugging Face tokenizer in which ``<image>``/``<volume>`` are single (special)
            tokens when media are used.
        template: ``auto``, ``tokenizer``, a bundled template name (``chatml``, ``llama3``,
            ``vicuna``/``medmvl``, ``plain``) or a Jinja string; see :mod:`medvl.data.templates`.
        num_image_tokens: placeholder tokens per ``<image>`` (the model's ``num_image_tokens``).
        num_volume_tokens: placeholder tokens per ``<volume>``.
        max_length: longest allowed sample in tokens, media included (None: no limit).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: str | None = "auto",
        *,
        num_image_tokens: int = 1,
        num_volume_tokens: int = 1,
        max_length: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.template, self.end_of_turn = resolve_template(template, tokenizer)
        self.template_name = template or "auto"
        self.num_image_tokens = int(num_image_tokens)
        self.num_volume_tokens = int(num_volume_tokens)
        self.max_length = max_length
        self._marker_ids: dict[str, int | None] = {m: self._single_token_id(m) for m in (IMAGE_MARKER, VOLUME_MARKER)}
        specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t not in (IMAGE_MARKER, VOLUME_MARKER)]
        eos = getattr(tokenizer, "eos_token", None)
        self._eot_candidates = tuple(dict.fromkeys([*KNOWN_END_OF_TURN, *([eos] if eos else []), *specials]))
        self.boundary_safe = self._probe_boundaries()

    _PROBE = (
        {"role": "user", "content": "Is the heart enlarged?"},
        {"role": "assistant", "content": "No, the heart size is normal."},
        {"role": "user", "content": "Any effusion?"},
        {"role": "assistant", "content": "Small left effusion."},
    )

    def _probe_boundaries(self) -> bool:
        """Check once that segment-wise tokenisation equals whole-string tokenisation.

        Why: labels are exact either way, but if a tokenizer merges characters across the
        prompt/answer boundary (SentencePiece tokenizers that prepend a space to every call do),
        a multi-turn prompt tokenised in one piece at inference differs from the training prefix.
        """
        try:
            msgs = [dict(m) for m in self._PROBE]
            segs = self.segments(msgs)
        except Exception:  # templates that need other roles are checked on real data instead
            return True
        pieces = [self.tokenize_text(t) for t, _ in segs]
        joined = [i for p in pieces for i in p]
        whole = self.tokenizer("".join(t for t, _ in segs), add_special_tokens=False)["input_ids"]
        if joined != whole:
            logger.warning(
                "tokenizer/template %r: tokenising the prompt and answer segments separately differs from "
                "tokenising the whole conversation; labels stay exact, but multi-turn prompts at inference may "
                "tokenise differently from training",
                self.template_name,
            )
            return False
        return True

    @classmethod
    def from_processor(
        cls,
        processor: MedVLProcessor | PreTrainedTokenizerBase,
        template: str | None = "auto",
        max_length: int | None = None,
    ) -> ConversationEncoder:
        """Build an encoder matching a ``MedVLProcessor`` (or a bare tokenizer).

        Args:
            processor: a processor with ``tokenizer``, ``chat_template`` and
                ``num_image_tokens``/``num_volume_tokens``, or a tokenizer.
            template: chat template name or Jinja string; ``auto``/``tokenizer`` use the processor's
                own template (the one saved with the model).
            max_length: longest allowed sample (media tokens included).
        """
        # a processor's tokenizer, or the tokenizer passed on its own
        tokenizer = cast("PreTrainedTokenizerBase", getattr(processor, "tokenizer", processor))
        own = getattr(processor, "chat_template", None) if tokenizer is not processor else None
        if template in (None, "auto", "tokenizer") and own:
            template = own
        return cls(
            tokenizer,
            template,
            num_image_tokens=getattr(processor, "num_image_tokens", 1) or 1,
            num_volume_tokens=getattr(processor, "num_volume_tokens", 1) or 1,
            max_length=max_length,
        )

    # ------------------------------------------------------------------ helpers
    def _single_token_id(self, token: str) -> int | None:
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    @staticmethod
    def normalise(messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """Strip the whitespace around assistant answers.

        Why: a leading newline in an answer would merge with the template's own trailing newline
        into one token when the whole prompt is tokenised at inference, and the training prefix
        would no longer equal the inference prompt.

        Args:
            messages: the conversation.
        """
        return [
            {"role": m["role"], "content": m["content"].strip() if m["role"] == "assistant" else m["content"]}
            for m in messages
        ]

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return render(self.tokenizer, self.template, messages, add_generation_prompt=add_generation_prompt)

    def _find_end_of_turn(self, tail: str) -> int | None:
        """Index just past the end-of-turn token at the start region of ``tail`` (text after an answer)."""
        if self.end_of_turn is not None:
            i = tail.find(self.end_of_turn)
            return None if i < 0 else i + len(self.end_of_turn)
        best: tuple[int, int] | None = None
        for cand in self._eot_candidates:
            i = tail.find(cand)
            if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(cand) > best[1])):
                best = (i, len(cand))
        return None if best is None else best[0] + best[1]

    # ------------------------------------------------------------------ segmentation
    def segments(self, messages: list[dict[str, str]], record: str | None = None) -> list[tuple[str, bool]]:
        """Cut the rendered conversation into ``(text, supervised)`` segments.

        Args:
            messages: the conversation (answers are whitespace-stripped first, see :meth:`normalise`).
            record: record id for error messages.
        """
        msgs = self.normalise(messages)
        full = self._render(msgs)
        out: list[tuple[str, bool]] = []
        pos = 0
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            if not any(x["role"] == "user" for x in msgs[:k]):
                raise MedVLDataError(f"message {k}: an assistant answer before any user turn", record=record)
            prompt = self._render(msgs[:k], add_generation_prompt=True)
            upto = self._render(msgs[: k + 1])
            if not (upto.startswith(prompt) and full.startswith(upto) and len(prompt) >= pos):
                raise ValueError(
                    f"chat template {self.template_name!r} does not render conversations prefix by prefix "
                    "(the rendering of the first k messages is not a prefix of the whole), so answers cannot be "
                    "located exactly; choose a bundled template (chatml, llama3, vicuna, plain)"
                )
            answer = upto[len(prompt) :]
            start = answer.find(m["content"])
            if start < 0:
                raise ValueError(
                    f"chat template {self.template_name!r} changed the text of assistant message {k} "
                    f"(record {record!r}); cannot locate the answer in {answer!r}"
                )
            stop = start + len(m["content"])
            eot = self._find_end_of_turn(answer[stop:])
            if eot is None:
                if self.end_of_turn is not None:
                    raise ValueError(f"template {self.template_name!r}: no {self.end_of_turn!r} after answer {k}")
                logger.warning(
                    "template %r has no end-of-turn token after answers; the model will not learn to stop",
                    self.template_name,
                )
                eot = 0
            stop += eot
            out.append((full[pos : len(prompt)], False))
            out.append((answer[:stop], True))
            pos = len(prompt) + stop
        out.append((full[pos:], False))
        return [(t, s) for t, s in out if t]

    # ------------------------------------------------------------------ tokenisation
    def tokenize_text(self, text: str, record: str | None = None) -> list[int]:
        """Tokenise text that may contain media markers, expanding each marker to its placeholders.

        Args:
            text: rendered text (special tokens of the template are written literally).
            record: record id for error messages.
        """
        ids: list[int] = []
        for piece in _MARKER_SPLIT.split(text):
            if not piece:
                continue
            if piece in self._marker_ids:
                tid = self._marker_ids[piece]
                if tid is None:
                    raise MedVLDataError(
                        f"the tokenizer has no single token for {piece}; build the processor with medvl "
                        "(which adds the media tokens) or add it as a special token",
                        record=record,
                    )
                n = self.num_image_tokens if piece == IMAGE_MARKER else self.num_volume_tokens
                ids.extend([tid] * n)
            else:
                ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        return ids

    def encode(self, messages: list[dict[str, str]], record: str | None = None, path: str | None = None) -> Encoded:
        """Tokenise a whole conversation for training, with labels on the answers only.

        Args:
            messages: the conversation (at least one assistant answer).
            record: record id for error messages.
            path: records file for error messages.

        Raises:
            MedVLDataError: no assistant answer to supervise.
            OverlongSampleError: longer than ``max_length`` (media tokens included).
        """
        if not any(m["role"] == "assistant" for m in messages):
            raise MedVLDataError(
                "no assistant answer to learn from (training needs at least one)", record=record, path=path
            )
        input_ids: list[int] = []
        labels: list[int] = []
        media = {i for i in self._marker_ids.values() if i is not None}
        texts = []
        for text, supervised in self.segments(messages, record=record):
            ids = self.tokenize_text(text, record=record)
            texts.append(text)
            input_ids += ids
            # placeholders are never targets, whatever a custom template does
            labels += [i if supervised and i not in media else IGNORE_INDEX for i in ids]
        self.check_length(len(input_ids), record, path)
        return Encoded(input_ids, labels, "".join(texts))

    def prompt_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The messages a prompt is built from: everything before a trailing assistant answer.

        Args:
            messages: the conversation.
        """
        return messages[:-1] if messages and messages[-1]["role"] == "assistant" else list(messages)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """Rendered generation prompt (markers not expanded), as the processor would receive it.

        Args:
            messages: the conversation; a trailing assistant answer (the reference) is dropped.
        """
        return self._render(self.normalise(self.prompt_messages(messages)), add_generation_prompt=True)

    def encode_prompt(self, messages: list[dict[str, str]], record: str | None = None) -> list[int]:
        """Token ids of the generation prompt; equal to the training ids of the same prefix.

        Args:
            messages: the conversation; a trailing assistant answer (the reference) is dropped.
            record: record id for error messages.
        """
        msgs = self.prompt_messages(messages)
        text = self.prompt_text(msgs)
        if not any(m["role"] == "assistant" for m in msgs):
            return self.tokenize_text(text, record=record)
        # multi-turn history: the same segments as training up to the last answer, then the rest
        # (next user turn + generation header) as one piece, exactly as training's prompt segment
        segs = self.segments(msgs, record=record)
        last = max(i for i, (_, sup) in enumerate(segs) if sup)
        ids: list[int] = []
        for seg, _ in segs[: last + 1]:
            ids += self.tokenize_text(seg, record=record)
        done = sum(len(s) for s, _ in segs[: last + 1])
        return ids + self.tokenize_text(text[done:], record=record)

    def count_tokens(self, messages: list[dict[str, str]], record: str | None = None) -> int:
        """Length of the training sample in tokens, media placeholders included.

        Args:
            messages: the conversation.
            record: record id for error messages.
        """
        return sum(len(self.tokenize_text(t, record=record)) for t, _ in self.segments(messages, record=record))

    def check_length(self, length: int, record: str | None = None, path: str | None = None) -> None:
        """Raise :class:`OverlongSampleError` when ``length`` exceeds ``max_length``.

        Args:
            length: token count (media included).
            record: record id.
            path: records file.
        """
        if self.max_length is not None and length > self.max_length:
            raise OverlongSampleError(
                f"sample has {length} tokens (media placeholders included) > max_length {self.max_length}; "
                "it is not truncated (that would cut media tokens or answers): raise max_length, shorten it, "
                "or set on_overlong=skip",
                length=length,
                max_length=self.max_length,
                record=record,
                path=path,
            )
