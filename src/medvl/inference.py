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

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medvl.data.records import Record
from medvl.errors import MedVLDataError

logger = logging.getLogger(__name__)


def load_model(path: str | Path, *, dtype: str | torch.dtype | None = None, device: str | None = None) -> tuple[Any, Any]:
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
    model.to(device).eval()
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


def _load_media(record: Record) -> tuple[list[Any], list[Any]]:
    from medvl.imaging.image2d import load_image
    from medvl.imaging.volume3d import load_volume

    images, volumes = [], []
    from medvl.imaging.image2d import record_window

    # the record's or its data set's intensity window (meta["window"])
    window = record_window(record.meta, record.id, record.source_file)
    for p in record.images:
        try:
            images.append(load_image(p, window=window, record=record.id))
        except MedVLDataError:
            raise
        except Exception as err:  # unreadable / corrupt file: name the record and file
            raise MedVLDataError(f"cannot read image: {err}", record=record.id, path=p) from err
    for p in record.volumes:
        try:
            volumes.append(load_volume(p, record=record.id))
        except MedVLDataError:
            raise
        except Exception as err:
            raise MedVLDataError(f"cannot read volume: {err}", record=record.id, path=p) from err
    return images, volumes


def _model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def check_prompt_lengths(model: Any, records: Sequence[Record], lengths: Sequence[int]) -> None:
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
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text_config, "max_position_embeddings", None)
    if not limit:
        return
    for rec, n in zip(records, lengths):
        if int(n) > limit:
            raise OverlongSampleError(
                f"the prompt is {int(n)} tokens (media placeholders included), more than the model's {limit} positions "
                "(max_position_embeddings); shorten the conversation, or skip such records (medvl infer --on-overlong skip)",
                length=int(n), max_length=int(limit), record=rec.id, path=rec.source_file)


def prepare_batch(model: Any, processor: Any, records: Sequence[Record]) -> dict[str, torch.Tensor]:
    """Render, tokenise and preprocess ``records`` into one left-padded batch on the model's device.

    Args:
        model: a ``MedVLForConditionalGeneration``.
        processor: its ``MedVLProcessor``.
        records: the samples (their trailing assistant turn, if any, is left out).
    """
    texts, images, volumes = [], [], []
    for rec in records:
        texts.append(processor.apply_chat_template(prompt_messages(rec), add_generation_prompt=True, tokenize=False))
        imgs, vols = _load_media(rec)
        images.extend(imgs)
        volumes.extend(vols)
    kwargs: dict[str, Any] = {}
    if images:
        kwargs["images"] = images
    if volumes:
        kwargs["volumes"] = volumes
    batch = processor(text=texts, padding=True, padding_side="left", return_tensors="pt", **kwargs)
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


def _generation_kwargs(processor: Any, max_new_tokens: int, min_new_tokens: int, do_sample: bool, extra: dict) -> dict:
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


@torch.no_grad()
def generate(
    model: Any,
    processor: Any,
    records: Sequence[Record],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    progress: bool = True,
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
        **gen_kwargs: passed to ``model.generate`` (e.g. ``num_beams``, ``repetition_penalty``).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    records = list(records)
    kwargs = _generation_kwargs(processor, max_new_tokens, min_new_tokens, do_sample, gen_kwargs)
    outputs: list[str] = [""] * len(records)
    # Batch prompts of similar length together (less padding); results go back to record order.
    order = sorted(range(len(records)), key=lambda i: _prompt_size(processor, records[i]), reverse=True)
    bar = tqdm(total=len(records), desc="generate", unit="sample", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = prepare_batch(model, processor, [records[i] for i in index])
            sequences = model.generate(**batch, **kwargs)
            # Left padding: every row's prompt ends at the same column, new tokens follow it.
            new_tokens = sequences[:, batch["input_ids"].shape[1] :]
            texts = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text in zip(index, texts):
                outputs[i] = text
            bar.update(len(index))
    finally:
        bar.close()
    return outputs


def _prompt_size(processor: Any, record: Record) -> int:
    """Rough prompt length in placeholder-expanded characters (for length-sorted batching)."""
    text = " ".join(m["content"] for m in record.messages)
    n_media = getattr(processor, "num_image_tokens", 0) * len(record.images)
    n_media += getattr(processor, "num_volume_tokens", 0) * len(record.volumes)
    return len(text) + 4 * n_media


def chat(
    model: Any,
    processor: Any,
    messages: list[dict[str, str]],
    *,
    images: Sequence[str] = (),
    volumes: Sequence[str] = (),
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
        images: image paths, in marker order over the whole conversation.
        volumes: volume paths (file or DICOM folder), in marker order.
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


__all__ = ["load_model", "generate", "chat", "prepare_batch", "prompt_messages", "reference_of"]
