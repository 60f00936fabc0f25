"""MedVLProcessor: tokenizer + 2D image processor + volume processor + chat template.

REMOTE-CODE SAFE: imports only torch/transformers/numpy and siblings (copied into checkpoints).

The processor owns the placeholder expansion: every ``<image>`` / ``<volume>`` marker in the text
becomes exactly ``num_image_tokens`` / ``num_volume_tokens`` copies of itself before tokenisation
(the markers are special tokens, so each copy is one id). The model later swaps those positions for
media features.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast

from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from .volume_processing_medvl import MedVLVolumeProcessor, VolumeInput

# A chat message: {"role": str, "content": str with markers, or a list of content parts}
Message = dict[str, Any]

IMAGE_TOKEN = "<image>"
VOLUME_TOKEN = "<volume>"

# ChatML (Qwen2 style). Content is a string with markers or a list of parts
# {"type": "text"|"image"|"volume"}; a media part renders as its marker plus a newline, like the
# "<image>\n" convention of LLaVA/MedM-VL data. {% generation %} marks assistant tokens so that
# tokenizer.apply_chat_template(..., return_assistant_tokens_mask=True) works.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}{%- generation -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}"
    "{%- elif part['type'] == 'volume' -%}{{- '<volume>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _flatten(items: object) -> list[Any]:
    """Images/volumes may come flat or nested per batch row; the model wants them flat in text order."""
    if items is None:
        return []
    if not isinstance(items, (list, tuple)):
        return [items]
    out: list[Any] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(item)
        else:
            out.append(item)
    return out


def media_from_parts(conversations: Sequence[Sequence[Message]], kind: str) -> list[Any]:
    """The media objects carried by content parts ``{"type": kind, kind: obj}``, in rendering order.

    Hugging Face's chat-template convention (used by TRL's vision-language collators) puts the image
    itself in its content part; the template renders the part as a marker, so the order here is
    the order of the markers. A string (``"path"``/``"url"`` key or the value itself) is loaded with
    ``transformers.image_utils.load_image`` for images; volumes must be arrays or ``Volume``-likes.

    Args:
        conversations: a batch of message lists.
        kind: "image" or "volume".
    """
    found: list[Any] = []
    for conversation in conversations:
        for message in conversation:
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, (list, tuple)):
                continue
            for part in content:
                if not isinstance(part, dict) or part.get("type") != kind:
                    continue
                value = part.get(kind, part.get("path", part.get("url")))
                if value is None:
                    continue
                if kind == "image" and isinstance(value, str):
                    from transformers.image_utils import load_image

                    value = load_image(value)
                found.append(value)
    return found


class MedVLProcessor(ProcessorMixin):
    """Tokenizer + image processor + volume processor of a medvl model.

    Args:
        image_processor: a transformers image processor (PIL backend, e.g. ``SiglipImageProcessorPil``).
        tokenizer: a fast tokenizer that has ``<image>`` and ``<volume>`` as special tokens.
        chat_template: Jinja chat template (defaults to ChatML with media content parts).
        volume_processor_config: settings of the ``MedVLVolumeProcessor`` (its ``to_dict()``), or None.
        num_image_tokens / num_volume_tokens: placeholders per image / volume (the model config's).
        image_token / volume_token: the marker strings.
    """

    image_processor: BaseImageProcessor | None
    tokenizer: PreTrainedTokenizerBase

    def __init__(
        self,
        image_processor: BaseImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        chat_template: str | None = None,
        volume_processor_config: dict[str, Any] | MedVLVolumeProcessor | None = None,
        num_image_tokens: int = 0,
        num_volume_tokens: int = 0,
        image_token: str = IMAGE_TOKEN,
        volume_token: str = VOLUME_TOKEN,
        **kwargs: Any,
    ):
        self.num_image_tokens = int(num_image_tokens)
        self.num_volume_tokens = int(num_volume_tokens)
        self.image_token = image_token
        self.volume_token = volume_token
        # a processor instance (not isinstance: remote code may load a second copy of its class)
        if volume_processor_config is not None and not isinstance(volume_processor_config, dict):
            volume_processor_config = volume_processor_config.to_dict()
        self.volume_processor_config: dict[str, Any] | None = volume_processor_config
        self._volume_processor: MedVLVolumeProcessor | None = None
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHATML_TEMPLATE)
        self.image_token_id = self._marker_id(image_token)
        self.volume_token_id = self._marker_id(volume_token)

    def _marker_id(self, marker: str) -> int:
        ids = self.tokenizer.encode(marker, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"the tokenizer does not treat {marker!r} as one special token (got ids {ids}); "
                "add it with tokenizer.add_special_tokens"
            )
        return ids[0]

    @property
    def volume_processor(self) -> MedVLVolumeProcessor | None:
        """The ``MedVLVolumeProcessor`` built from ``volume_processor_config`` (None without one)."""
        if self._volume_processor is None and self.volume_processor_config is not None:
            self._volume_processor = MedVLVolumeProcessor.from_dict(self.volume_processor_config)
        return self._volume_processor

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("_volume_processor", None)
        if self._volume_processor is not None:
            out["volume_processor_config"] = self._volume_processor.to_dict()
        return out

    # ------------------------------------------------------------------ text expansion
    def expand_text(self, text: str, row: int = 0) -> str:
        """Replace each marker by its N placeholder copies.

        Args:
            text: one prompt with ``<image>`` / ``<volume>`` markers.
            row: batch row (for error messages).
        """
        if self.image_token in text and self.num_image_tokens <= 0:
            raise ValueError(f"text row {row} has an {self.image_token} marker but this model has no 2D encoder")
        if self.volume_token in text and self.num_volume_tokens <= 0:
            raise ValueError(f"text row {row} has a {self.volume_token} marker but this model has no volume encoder")
        pattern = re.compile(f"({re.escape(self.image_token)}|{re.escape(self.volume_token)})")
        return pattern.sub(
            lambda m: (
                m.group(0) * (self.num_image_tokens if m.group(0) == self.image_token else self.num_volume_tokens)
            ),
            text,
        )

    def __call__(
        self,
        text: str | list[str] | None = None,
        images: ImageInput | Sequence[ImageInput] | None = None,
        volumes: VolumeInput | Sequence[VolumeInput] | Sequence[Sequence[VolumeInput]] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenise prompts (markers expanded) and preprocess their media.

        Args:
            text: one prompt or a batch of prompts with ``<image>`` / ``<volume>`` markers.
            images: PIL images of all rows in text order (flat, or one list per row).
            volumes: volumes (``Volume``-like or ndarray) of all rows in text order (flat or per row).
            return_tensors: "pt" (default), "np" or None.
            **kwargs: passed to the tokenizer (``padding``, ``padding_side``, ``truncation``,
                ``max_length``, ``add_special_tokens``...).

        Returns:
            ``BatchFeature`` with ``input_ids``, ``attention_mask`` and, when media are given,
            ``pixel_values`` (N, 3, H, W) and ``volume_values`` (N, C, D, H, W).
        """
        if text is None:
            raise ValueError("MedVLProcessor needs text (with <image>/<volume> markers for the media)")
        texts = [text] if isinstance(text, str) else list(text)
        image_list = _flatten(images)
        volume_list = _flatten(volumes)
        n_image_markers = [t.count(self.image_token) for t in texts]
        n_volume_markers = [t.count(self.volume_token) for t in texts]
        for kind, counts, items in (("image", n_image_markers, image_list), ("volume", n_volume_markers, volume_list)):
            if sum(counts) != len(items):
                per_row = ", ".join(f"row {i}: {c}" for i, c in enumerate(counts))
                raise ValueError(
                    f"{len(items)} {kind}(s) given but the text has {sum(counts)} <{kind}> marker(s) ({per_row})"
                )
        expanded = [self.expand_text(t, row) for row, t in enumerate(texts)]
        data: dict[str, Any] = dict(self.tokenizer(expanded, return_tensors=None, **kwargs))
        self._check_placeholders_survived(data["input_ids"], n_image_markers, n_volume_markers)
        if image_list:
            if self.image_processor is None:
                raise ValueError("images given but this processor has no image processor")
            data["pixel_values"] = self.image_processor(image_list, return_tensors="pt")["pixel_values"]
        if volume_list:
            if self.volume_processor is None:
                raise ValueError("volumes given but this processor has no volume processor")
            data["volume_values"] = self.volume_processor(volume_list)["volume_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _check_placeholders_survived(
        self, input_ids: list[list[int]], n_images: list[int], n_volumes: list[int]
    ) -> None:
        """Truncation must never cut through (or drop) media placeholders."""
        for row, ids in enumerate(input_ids):
            for kind, token_id, per_item, markers in (
                ("image", self.image_token_id, self.num_image_tokens, n_images[row]),
                ("volume", self.volume_token_id, self.num_volume_tokens, n_volumes[row]),
            ):
                found = sum(1 for i in ids if i == token_id)
                if found != markers * per_item:
                    raise ValueError(
                        f"text row {row}: {found} {kind} placeholder tokens after tokenisation, expected "
                        f"{markers} x {per_item}; truncation (max_length) cut into the {kind} tokens, or the "
                        f"text contains the placeholder token itself. Raise max_length or shorten the text."
                    )

    # ------------------------------------------------------------------ chat
    def apply_chat_template(  # type: ignore[override]  # media arguments instead of tools/documents; returns a BatchFeature when tokenizing
        self,
        conversation: list[Message] | list[list[Message]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        images: ImageInput | Sequence[ImageInput] | None = None,
        volumes: Sequence[VolumeInput] | None = None,
        **kwargs: Any,
    ) -> str | list[str] | BatchFeature:
        """Render messages (string content with markers, or content parts) with the chat template.

        Args:
            conversation: one list of ``{"role", "content"}`` messages, or a batch of them.
                Content parts ``{"type": "image"}``, ``{"type": "volume"}``, ``{"type": "text", "text"}``.
            chat_template: override the processor's template.
            add_generation_prompt: end with the assistant header.
            tokenize: False -> the rendered string(s); True -> ``self(text=..., images=..., volumes=...)``.
            images / volumes: media for ``tokenize=True``; when not given, the media carried by the
                content parts (``{"type": "image", "image": <PIL.Image>}``, ``{"type": "volume",
                "volume": <array or Volume>}``, the Hugging Face / TRL convention) are used.
            **kwargs: passed to ``__call__`` when tokenizing (padding, padding_side...), also as
                transformers' ``processor_kwargs`` mapping.
        """
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        # a batch when its first item is a message list, one conversation otherwise
        conversations = cast(list[list[Message]], conversation) if batched else [cast(list[Message], conversation)]
        template = chat_template or self.chat_template
        if isinstance(template, dict):
            raise ValueError(f"MedVLProcessor renders with one chat template, got named templates {sorted(template)}")
        rendered = [
            # tokenize=False renders the string (transformers annotates every return form)
            cast(
                str,
                self.tokenizer.apply_chat_template(
                    list(conv), chat_template=template, add_generation_prompt=add_generation_prompt, tokenize=False
                ),
            )
            for conv in conversations
        ]
        if not tokenize:
            return rendered if batched else rendered[0]
        kwargs.pop("return_dict", None)  # always a BatchFeature (dict-like)
        kwargs.update(kwargs.pop("processor_kwargs", None) or {})  # transformers >= 5.4 passes them so
        if kwargs.pop("return_assistant_tokens_mask", False):
            raise ValueError(
                "MedVLProcessor.apply_chat_template does not return assistant masks; medvl's "
                "training data path (medvl.data.labels) supervises the assistant turns"
            )
        if images is None:
            images = media_from_parts(conversations, "image") or None
        if volumes is None:
            volumes = media_from_parts(conversations, "volume") or None
        return self(text=rendered, images=images, volumes=volumes, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str | list[str]:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "volume_values"]


__all__ = ["MedVLProcessor", "CHATML_TEMPLATE"]
