"""The one inference path of medvl: batched ``generate`` and multi-turn ``chat``.

``medvl infer``, ``medvl chat``, evaluation, the demo and the server all call these two functions,
so a model answers the same prompt identically everywhere. The prompt is built by the model's own
processor (its chat template and media processors); batches are left-padded so that every row's
continuation starts right after its prompt.

Example::

    from medvl.inference import load_model, generate
    model, processor = load_model("runs/medm-vl-2d")
    texts = generate(model, processor, load_records("test.json"), max_new_tokens=64)
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import torch
from transformers import PreTrainedConfig
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from medvl.data.records import ImageSource, Record, VolumeSource
from medvl.errors import MedVLDataError

if TYPE_CHECKING:  # medvl.models pulls in the model code; it is imported when a model is loaded
    from PIL import Image

    from medvl.imaging.volume3d import Volume
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

logger = logging.getLogger(__name__)


def load_model(
    path: str | Path, *, dtype: str | torch.dtype | None = None, device: str | None = None
) -> tuple[MedVLForConditionalGeneration, MedVLProcessor]:
    """Load a medvl checkpoint (model in eval mode + processor) from a local folder.

    Args:
        path: checkpoint folder (``config.json`` of model_type ``medvl``, weights, processor files).
        dtype: "float32", "bfloat16", "float16", a torch dtype, or None for the checkpoint's dtype
            on GPU and float32 on CPU (CPUs have no fast fp16).
        device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when available.
    """
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor
    from medvl.utils.files import check_model_folder

    path = Path(path)
    check_model_folder(path)  # a missing or damaged config / weights / tokenizer file is named here
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(dtype, str):
        valid = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in valid:
            raise ValueError(f"dtype {dtype!r}: valid choices: {', '.join(valid)}")
        dtype = valid[dtype]
    if dtype is None and str(device).startswith("cpu"):
        dtype = torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {"dtype": "auto"}
    model = MedVLForConditionalGeneration.from_pretrained(path, **kwargs)
    # transformers wraps .to with functools.wraps(nn.Module.to), whose stub signature mypy then misreads
    model.to(device).eval()  # type: ignore[arg-type]
    processor = MedVLProcessor.from_pretrained(path)
    return model, processor


def prompt_messages(record: Record) -> list[dict[str, str]]:
    """The messages a model answers for ``record``: everything up to (excluding) a trailing assistant turn.

    Args:
        record: the sample.
    """
    messages = list(record.messages)
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise MedVLDataError("the conversation has no user turn to answer", record=record.id)
    return messages


def reference_of(record: Record) -> str | None:
    """The reference answer of a record: ``meta["reference"]`` (MedM-VL ``answer``), else a trailing assistant turn.

    Args:
        record: the sample.
    """
    if record.meta.get("reference") is not None:
        return str(record.meta["reference"])
    if record.messages and record.messages[-1]["role"] == "assistant":
        return record.messages[-1]["content"]
    return None


@dataclass(frozen=True)
class EncodedMedia:
    """One image or volume already run through the model's encoder (:func:`encode_media`).

    A conversation that asks several questions about the same media keeps these in place of the
    files (``Record.images`` / ``volumes``, ``chat(images=...)``) so that the encoder runs once per
    conversation instead of once per turn. The connector still runs on every turn: it is cheap and
    trainable, and only the encoder output is what a frozen-encoder feature cache stores too.

    Args:
        kind: "image" or "volume".
        features: (tokens, width) output of ``encode_images`` / ``encode_volumes`` for this item.
        source: where the media came from (file name or "<memory>"), for messages.
    """

    kind: str
    features: torch.Tensor
    source: str = ""


LoadedImage: TypeAlias = "Image.Image | EncodedMedia"
LoadedVolume: TypeAlias = "Volume | EncodedMedia"


def _load_media(record: Record) -> tuple[list[LoadedImage], list[LoadedVolume]]:
    """The record's media, read from disk; entries that are already loaded (a ``PIL.Image`` or a
    ``Volume``, as the server and the demo decode uploads in memory, or :class:`EncodedMedia`) pass
    through unchanged."""
    from medvl.imaging.image2d import load_image, record_window
    from medvl.imaging.volume3d import load_volume

    images: list[LoadedImage] = []
    volumes: list[LoadedVolume] = []
    # the record's or its data set's intensity window (meta["window"])
    window = record_window(record.meta, record.id, record.source_file)
    for image in record.images:
        if not isinstance(image, (str, Path)):
            images.append(image)
            continue
        try:
            images.append(load_image(image, window=window, record=record.id))
        except MedVLDataError:
            raise
        except Exception as err:  # unreadable / corrupt file: name the record and file
            raise MedVLDataError(f"cannot read image: {err}", record=record.id, path=str(image)) from err
    # A release's own conventions (M3D's 0..1 arrays, CT-RATE's rescale and spacing) come with the
    # record from the benchmark task: ``meta["volume_load"]`` = keywords of ``load_volume``.
    volume_load = dict(record.meta.get("volume_load") or {}) if isinstance(record.meta, dict) else {}
    for volume in record.volumes:
        if not isinstance(volume, (str, Path)):
            volumes.append(volume)
            continue
        try:
            volumes.append(load_volume(volume, record=record.id, **volume_load))
        except MedVLDataError:
            raise
        except Exception as err:
            raise MedVLDataError(f"cannot read volume: {err}", record=record.id, path=str(volume)) from err
    return images, volumes


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def check_prompt_lengths(model: torch.nn.Module, records: Sequence[Record], lengths: Sequence[int]) -> None:
    """Refuse a prompt longer than the model's positions: it would be answered with garbage.

    Args:
        model: the model (its text config's ``max_position_embeddings`` is the limit; none: no check).
        records: the samples of the batch.
        lengths: each prompt's token count (media placeholders included).

    Raises:
        OverlongSampleError: naming the first over-long record, its file, its length and the limit.
    """
    from medvl.data.labels import OverlongSampleError

    config = getattr(model, "config", None)
    text_config = config.get_text_config() if isinstance(config, PreTrainedConfig) else config
    limit = getattr(text_config, "max_position_embeddings", None)
    if not limit:
        return
    for rec, n in zip(records, lengths):
        if int(n) > limit:
            raise OverlongSampleError(
                f"the prompt is {int(n)} tokens (media placeholders included), more than the model's {limit} positions "
                "(max_position_embeddings); shorten the conversation, or skip such records (medvl infer --on-overlong skip)",
                length=int(n),
                max_length=int(limit),
                record=rec.id,
                path=rec.source_file,
            )


def prepare_batch(
    model: MedVLForConditionalGeneration, processor: MedVLProcessor, records: Sequence[Record]
) -> dict[str, torch.Tensor]:
    """Render, tokenise and preprocess ``records`` into one left-padded batch on the model's device.

    Args:
        model: a ``MedVLForConditionalGeneration``.
        processor: its ``MedVLProcessor``.
        records: the samples (their trailing assistant turn, if any, is left out).
    """
    texts: list[str] = []
    images: list[LoadedImage] = []
    volumes: list[LoadedVolume] = []
    for rec in records:
        texts.append(_render_prompt(processor, rec))
        imgs, vols = _load_media(rec)
        images.extend(imgs)
        volumes.extend(vols)
    if any(isinstance(m, EncodedMedia) for m in (*images, *volumes)):
        batch = _prepare_with_features(model, processor, records, texts, images, volumes)
    else:
        kwargs: dict[str, Any] = {}
        if images:
            kwargs["images"] = images
        if volumes:
            kwargs["volumes"] = volumes
        batch = dict(processor(text=texts, padding=True, padding_side="left", return_tensors="pt", **kwargs))
    device, dtype = _model_device_dtype(model)
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    check_prompt_lengths(model, records, out["attention_mask"].sum(dim=1).tolist())
    return out


def _render_prompt(processor: MedVLProcessor, record: Record) -> str:
    """The record's prompt rendered by the processor's chat template, ending with the assistant header."""
    text = processor.apply_chat_template(prompt_messages(record), add_generation_prompt=True, tokenize=False)
    if not isinstance(text, str):  # tokenize=False and one conversation render one string
        raise TypeError(f"the chat template rendered {type(text).__name__}, not a string")
    return text


def _prepare_with_features(
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    records: Sequence[Record],
    texts: list[str],
    images: list[LoadedImage],
    volumes: list[LoadedVolume],
) -> dict[str, torch.Tensor]:
    """The batch of :func:`prepare_batch` when some media are :class:`EncodedMedia`.

    The text goes through the processor's own marker expansion and tokenizer (what its ``__call__``
    does); each modality that holds any encoded item is passed as ``*_encoder_features`` (the media
    still in raw form are encoded here, in text order), the others as pixel / volume values.
    """
    names = ", ".join(r.id for r in records)
    for marker, count in ((processor.image_token, len(images)), (processor.volume_token, len(volumes))):
        found = sum(t.count(marker) for t in texts)
        if found != count:
            raise MedVLDataError(f"{count} media given for {found} {marker} marker(s)", record=names)
    expanded = [processor.expand_text(t, row) for row, t in enumerate(texts)]
    batch: dict[str, torch.Tensor] = dict(
        processor.tokenizer(expanded, padding=True, padding_side="left", return_tensors="pt")
    )
    for kind, items, values_key in (("image", images, "pixel_values"), ("volume", volumes, "volume_values")):
        if not items:
            continue
        if any(isinstance(m, EncodedMedia) for m in items):
            batch[f"{kind}_encoder_features"] = _features_in_order(model, processor, kind, items)
        else:
            batch[values_key] = _preprocess(processor, kind, [m for m in items if not isinstance(m, EncodedMedia)])
    return batch


def _preprocess(processor: MedVLProcessor, kind: str, items: Sequence[Image.Image | Volume]) -> torch.Tensor:
    """Pixel values (N, 3, H, W) or volume values (N, C, D, H, W) of loaded media, by the saved processor."""
    # ``kind`` says which of the two the items are
    if kind == "image":
        if processor.image_processor is None:
            raise ValueError("images given but this processor has no image processor")
        images = cast("list[Image.Image]", list(items))
        return processor.image_processor(images, return_tensors="pt")["pixel_values"]
    if processor.volume_processor is None:
        raise ValueError("volumes given but this processor has no volume processor")
    return processor.volume_processor(cast("list[Volume]", list(items)))["volume_values"]


def _features_in_order(
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    kind: str,
    items: Sequence[Image.Image | Volume | EncodedMedia],
) -> torch.Tensor:
    """(N, tokens, width) encoder features of ``items`` in order: cached ones as they are, the rest encoded now."""
    raw = [m for m in items if not isinstance(m, EncodedMedia)]
    fresh = iter(_encode(model, processor, kind, raw)) if raw else iter(())
    rows = []
    for m in items:
        if isinstance(m, EncodedMedia):
            if m.kind != kind:
                raise MedVLDataError(f"an encoded {m.kind} was given where a {kind} is expected", path=m.source)
            rows.append(m.features)
        else:
            rows.append(next(fresh))
    device, _ = _model_device_dtype(model)
    return torch.stack([r.to(device) for r in rows])


def _encode(
    model: MedVLForConditionalGeneration, processor: MedVLProcessor, kind: str, items: Sequence[Image.Image | Volume]
) -> list[torch.Tensor]:
    """Encoder outputs (one (tokens, width) tensor per item) of loaded media, encoded in one batch."""
    device, dtype = _model_device_dtype(model)
    values = _preprocess(processor, kind, items).to(device=device, dtype=dtype)
    encode = model.encode_images if kind == "image" else model.encode_volumes
    return list(encode(values).unbind(0))


@torch.no_grad()
def encode_media(
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    *,
    images: Sequence[ImageSource] = (),
    volumes: Sequence[VolumeSource] = (),
) -> tuple[list[EncodedMedia], list[EncodedMedia]]:
    """Read, preprocess and encode media once, for reuse over the turns of a conversation.

    Passing the results to :func:`chat` / :func:`stream_chat` / records instead of the files gives
    the same answers as the files (the encoder sees the same tensors, batched per modality the
    same way a one-record batch is) without running the encoder again.

    Args:
        model: a ``MedVLForConditionalGeneration``.
        processor: its ``MedVLProcessor``.
        images: image paths or loaded ``PIL.Image`` objects (already encoded ones pass through).
        volumes: volume paths or loaded ``Volume`` objects (already encoded ones pass through).

    Returns:
        (encoded images, encoded volumes), in the given order.
    """
    record = Record(id="encode", messages=[], images=list(images), volumes=list(volumes))
    loaded_images, loaded_volumes = _load_media(record)
    out: list[list[EncodedMedia]] = []
    loaded: Sequence[LoadedImage | LoadedVolume]
    given: Sequence[ImageSource | VolumeSource]
    for kind, loaded, given in (("image", loaded_images, images), ("volume", loaded_volumes, volumes)):
        features = iter(
            _encode(model, processor, kind, [m for m in loaded if not isinstance(m, EncodedMedia)])
            if any(not isinstance(m, EncodedMedia) for m in loaded)
            else ()
        )
        encoded = []
        for m, src in zip(loaded, given):
            if isinstance(m, EncodedMedia):
                encoded.append(m)
            else:
                name = str(src) if isinstance(src, (str, Path)) else getattr(m, "source", "") or "<memory>"
                encoded.append(EncodedMedia(kind, next(features), name))
        out.append(encoded)
    return out[0], out[1]


def _generation_kwargs(
    processor: MedVLProcessor, max_new_tokens: int, min_new_tokens: int, do_sample: bool, extra: dict[str, Any]
) -> dict[str, Any]:
    tok = processor.tokenizer
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    }
    if min_new_tokens:
        kwargs["min_new_tokens"] = min_new_tokens
    kwargs.update(extra)
    return kwargs


TextCallback = Callable[[int, str], None]
"""``on_text(record_index, delta)``: called with each newly decoded piece of a record's answer."""


class _RowStreamer(BaseStreamer):
    """Turns the token ids ``generate`` produces for a whole batch into per-row text deltas.

    transformers' own ``TextStreamer`` handles batch size 1 only; the server streams every row of a
    batched generation, so each row keeps its token list and emits the growth of its decoded text.
    A delta is held back while the text ends in an incomplete multi-byte character (U+FFFD), so the
    deltas of a row concatenate exactly to the final decoded answer.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, rows: Sequence[int], on_text: TextCallback, stop_ids: set[int]
    ):
        self.tokenizer = tokenizer
        self.rows = list(rows)
        self.on_text = on_text
        self.stop_ids = stop_ids
        self.tokens: list[list[int]] = [[] for _ in self.rows]
        self.sent: list[str] = ["" for _ in self.rows]
        self.done = [False] * len(self.rows)
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call carries the prompt ids
            self._prompt_seen = True
            return
        ids = value.reshape(len(self.rows), -1)
        for j in range(len(self.rows)):
            if self.done[j]:
                continue
            for tok in ids[j].tolist():
                if tok in self.stop_ids:
                    self.done[j] = True
                    break
                self.tokens[j].append(tok)
            self._emit(j, final=self.done[j])

    def end(self) -> None:
        for j in range(len(self.rows)):
            self._emit(j, final=True)

    def _emit(self, j: int, final: bool) -> None:
        text = cast(str, self.tokenizer.decode(self.tokens[j], skip_special_tokens=True))  # one sequence: one str
        if not final and text.endswith("\ufffd"):
            return
        if len(text) > len(self.sent[j]) and text.startswith(self.sent[j]):
            delta = text[len(self.sent[j]) :]
            self.sent[j] = text
            self.on_text(self.rows[j], delta)


class _RowStop(StoppingCriteria):
    """Per-row early stop: a row whose ``should_stop(record_index)`` is true finishes (e.g. its client left)."""

    def __init__(self, rows: Sequence[int], should_stop: Callable[[int], bool]):
        self.rows = list(rows)
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        flags = [bool(self.should_stop(i)) for i in self.rows]
        return cast(torch.BoolTensor, torch.tensor(flags, dtype=torch.bool, device=input_ids.device))


def _stop_token_ids(model: MedVLForConditionalGeneration, processor: MedVLProcessor) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if processor.tokenizer.eos_token_id is not None:
        ids.add(processor.tokenizer.eos_token_id)
    return ids


@dataclass
class Generation:
    """One record's answer with its token accounting (what a server reports as ``usage``).

    Args:
        text: the decoded continuation (special tokens skipped), as :func:`generate` returns it.
        prompt_tokens: tokens of the rendered prompt (media placeholders included, padding excluded).
        completion_tokens: generated tokens before the end-of-sequence token (which is not counted).
        finish_reason: ``"stop"`` (end-of-sequence), ``"length"`` (its max new tokens reached) or
            ``"cancelled"`` (``should_stop`` ended it).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class _RowLimit(StoppingCriteria):
    """Per-row generation length: row j stops once it has ``limits[j]`` new tokens (rows of one batch
    may ask for different lengths; the batch runs to the longest)."""

    def __init__(self, prompt_length: int, limits: Sequence[int]):
        self.prompt_length = prompt_length
        self.limits = torch.tensor(list(limits))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        produced = input_ids.shape[1] - self.prompt_length
        return cast(torch.BoolTensor, (self.limits <= produced).to(input_ids.device))


@torch.no_grad()
def generate(
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    records: Sequence[Record],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    progress: bool = True,
    on_text: TextCallback | None = None,
    should_stop: Callable[[int], bool] | None = None,
    **gen_kwargs: Any,
) -> list[str]:
    """Answer every record's last user turn; returns the decoded continuations in record order.

    Args:
        model: a ``MedVLForConditionalGeneration`` (eval mode).
        processor: its ``MedVLProcessor`` (chat template, tokenizer, image and volume processors).
        records: samples; the prompt is each record's messages up to (excluding) a trailing assistant turn.
        batch_size: samples per left-padded batch.
        max_new_tokens: generation length limit.
        min_new_tokens: suppress end-of-sequence before this many new tokens.
        do_sample: sample instead of greedy decoding.
        progress: show a progress bar (stderr).
        on_text: streaming hook, ``on_text(record_index, delta)`` for each newly decoded piece of an
            answer (greedy or sampling; not with beam search). The deltas of a record concatenate to
            its returned text.
        should_stop: ``should_stop(record_index) -> bool``, polled after every step; a record for which
            it returns True stops generating (its text so far is returned), the others go on.
        **gen_kwargs: passed to ``model.generate`` (e.g. ``num_beams``, ``repetition_penalty``).
    """
    results = generate_detailed(
        model,
        processor,
        records,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=do_sample,
        progress=progress,
        on_text=on_text,
        should_stop=should_stop,
        **gen_kwargs,
    )
    return [r.text for r in results]


@torch.no_grad()
def generate_detailed(
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    records: Sequence[Record],
    *,
    batch_size: int = 8,
    max_new_tokens: int | Sequence[int] = 128,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    progress: bool = True,
    on_text: TextCallback | None = None,
    should_stop: Callable[[int], bool] | None = None,
    **gen_kwargs: Any,
) -> list[Generation]:
    """:func:`generate` with per-record token counts and finish reasons, and optionally per-record lengths.

    The same batches and the same ``model.generate`` call as :func:`generate` (which is this function
    without the accounting), so texts are identical.

    Args:
        model: a ``MedVLForConditionalGeneration`` (eval mode).
        processor: its ``MedVLProcessor``.
        records: samples (see :func:`generate`).
        batch_size: samples per left-padded batch.
        max_new_tokens: one limit for all records, or one per record (a batch then runs to its
            longest row and stops each row at its own limit).
        min_new_tokens: suppress end-of-sequence before this many new tokens.
        do_sample: sample instead of greedy decoding.
        progress: show a progress bar (stderr).
        on_text: streaming hook (see :func:`generate`).
        should_stop: per-record early stop (see :func:`generate`).
        **gen_kwargs: passed to ``model.generate``.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    records = list(records)
    record_limits = _record_limits(max_new_tokens, len(records))
    stop_ids = _stop_token_ids(model, processor)
    outputs: list[Generation | None] = [None] * len(records)
    # Batch prompts of similar length together (less padding); results go back to record order.
    order = sorted(range(len(records)), key=lambda i: _prompt_size(processor, records[i]), reverse=True)
    bar = tqdm(total=len(records), desc="generate", unit="sample", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            limits = [record_limits[i] for i in index]
            kwargs = _generation_kwargs(processor, max(limits), min_new_tokens, do_sample, gen_kwargs)
            batch = prepare_batch(model, processor, [records[i] for i in index])
            prompt_length = batch["input_ids"].shape[1]
            if on_text is not None:
                kwargs["streamer"] = _RowStreamer(processor.tokenizer, index, on_text, stop_ids)
            criteria = _stopping_criteria(
                kwargs.pop("stopping_criteria", None), index, limits, prompt_length, should_stop
            )
            if criteria:
                kwargs["stopping_criteria"] = criteria
            sequences = model.generate(**batch, **kwargs)
            # Left padding: every row's prompt ends at the same column, new tokens follow it.
            new_tokens = sequences[:, prompt_length:]
            texts = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row, (i, text) in enumerate(zip(index, texts)):
                count, reason = _completion(
                    new_tokens[row].tolist()[: limits[row]],
                    limits[row],
                    stop_ids,
                    kwargs["pad_token_id"],
                    _never if should_stop is None else functools.partial(should_stop, i),
                )
                outputs[i] = Generation(
                    text=text,
                    prompt_tokens=int(batch["attention_mask"][row].sum()),
                    completion_tokens=count,
                    finish_reason=reason,
                )
            bar.update(len(index))
    finally:
        bar.close()
    done = [g for g in outputs if g is not None]
    if len(done) != len(records):  # every record belongs to exactly one batch
        raise RuntimeError(f"{len(records) - len(done)} record(s) got no generation")
    return done


def _never() -> bool:
    return False


def _record_limits(max_new_tokens: int | Sequence[int], num_records: int) -> list[int]:
    """Each record's max new tokens: one limit for all, or one per record (checked)."""
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * num_records
    per_row = [int(n) for n in max_new_tokens]
    if len(per_row) != num_records:
        raise ValueError(f"max_new_tokens has {len(per_row)} entries for {num_records} records")
    if min(per_row, default=1) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {per_row}")
    return per_row


def _stopping_criteria(
    given: StoppingCriteriaList | list[StoppingCriteria] | None,
    rows: Sequence[int],
    limits: Sequence[int],
    prompt_length: int,
    should_stop: Callable[[int], bool] | None,
) -> StoppingCriteriaList:
    """The caller's stopping criteria plus per-row early stop and per-row lengths (when rows differ)."""
    criteria = StoppingCriteriaList(given or [])
    if should_stop is not None:
        criteria.append(_RowStop(rows, should_stop))
    if len(set(limits)) > 1:
        criteria.append(_RowLimit(prompt_length, limits))
    return criteria


def _completion(
    ids: list[int], limit: int, stop_ids: set[int], pad_id: int | None, stopped: Callable[[], bool]
) -> tuple[int, str]:
    """(completion tokens, finish reason) of one row's new tokens (cut to its ``limit``).

    Args:
        ids: the row's new token ids, at most ``limit``.
        limit: the row's max new tokens.
        stop_ids: end-of-sequence ids (not counted).
        pad_id: the padding id: a finished row is padded, so padding before the limit means a cancel.
        stopped: whether the caller's ``should_stop`` ended this row (asked only for a full-length row).
    """
    for n, tok in enumerate(ids):
        if tok in stop_ids:
            return n, "stop"
        if tok == pad_id:  # a finished row is padded: it was stopped by should_stop
            return n, "cancelled"
    if len(ids) < limit or stopped():
        return len(ids), "cancelled"
    return len(ids), "length"


def _prompt_size(processor: MedVLProcessor, record: Record) -> int:
    """Rough prompt length in placeholder-expanded characters (for length-sorted batching)."""
    text = " ".join(m["content"] for m in record.messages)
    n_media = getattr(processor, "num_image_tokens", 0) * len(record.images)
    n_media += getattr(processor, "num_volume_tokens", 0) * len(record.volumes)
    return len(text) + 4 * n_media


def chat(
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    messages: list[dict[str, str]],
    *,
    images: Sequence[ImageSource] = (),
    volumes: Sequence[VolumeSource] = (),
    max_new_tokens: int = 256,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    **gen_kwargs: Any,
) -> str:
    """One assistant reply to a multi-turn conversation (same path as :func:`generate`).

    Args:
        model: a ``MedVLForConditionalGeneration``.
        processor: its ``MedVLProcessor``.
        messages: ``[{"role": ..., "content": ...}]`` ending with a user turn; ``<image>`` /
            ``<volume>`` markers in the user turns, one per file.
        images: image paths (or loaded ``PIL.Image`` objects, or :func:`encode_media` outputs), in
            marker order over the whole conversation.
        volumes: volume paths (file or DICOM folder), loaded ``Volume`` objects or
            :func:`encode_media` outputs, in marker order.
        max_new_tokens: generation length limit.
        min_new_tokens: suppress end-of-sequence before this many new tokens.
        do_sample: sample instead of greedy decoding.
        **gen_kwargs: passed to ``model.generate``.
    """
    record = Record(id="chat", messages=list(messages), images=list(images), volumes=list(volumes))
    return generate(
        model,
        processor,
        [record],
        batch_size=1,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=do_sample,
        progress=False,
        **gen_kwargs,
    )[0]


def stream_chat(
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    messages: list[dict[str, str]],
    *,
    images: Sequence[ImageSource] = (),
    volumes: Sequence[VolumeSource] = (),
    max_new_tokens: int = 256,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    cancel: threading.Event | None = None,
    **gen_kwargs: Any,
) -> Generator[str, None, None]:
    """:func:`chat`, streamed: yields text deltas as tokens are generated (they concatenate to ``chat``'s answer).

    Generation runs in a worker thread; the consumer iterates the deltas. Setting ``cancel`` (or
    closing the generator) stops generation after the current step.

    Args:
        model: a ``MedVLForConditionalGeneration``.
        processor: its ``MedVLProcessor``.
        messages: the conversation, ending with a user turn (``<image>`` / ``<volume>`` markers).
        images: image paths, loaded ``PIL.Image`` objects or :func:`encode_media` outputs, in marker order.
        volumes: volume paths, loaded ``Volume`` objects or :func:`encode_media` outputs, in marker order.
        max_new_tokens: generation length limit.
        min_new_tokens: suppress end-of-sequence before this many new tokens.
        do_sample: sample instead of greedy decoding.
        cancel: an event that, once set, stops generation.
        **gen_kwargs: passed to ``model.generate``.
    """
    record = Record(id="chat", messages=list(messages), images=list(images), volumes=list(volumes))
    cancel = cancel or threading.Event()
    # text deltas, then None at the end, or the exception generation raised
    deltas: queue.Queue[str | BaseException | None] = queue.Queue()

    def work() -> None:
        try:
            generate(
                model,
                processor,
                [record],
                batch_size=1,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                do_sample=do_sample,
                progress=False,
                on_text=lambda _i, d: deltas.put(d),
                should_stop=lambda _i: cancel.is_set(),
                **gen_kwargs,
            )
            deltas.put(None)
        except BaseException as err:  # handed to the consumer, raised there
            deltas.put(err)

    worker = threading.Thread(target=work, name="medvl-stream-chat", daemon=True)
    worker.start()
    try:
        while True:
            item = deltas.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                return
            yield item
    finally:
        cancel.set()
        worker.join()


__all__ = [
    "load_model",
    "generate",
    "generate_detailed",
    "Generation",
    "chat",
    "stream_chat",
    "encode_media",
    "EncodedMedia",
    "prepare_batch",
    "prompt_messages",
    "reference_of",
]
