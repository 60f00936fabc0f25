"""The seeded synthetic data of the MedM-VL workloads: media files and chats sized to the token.

Images are radiograph-like gradients with a bright blob, volumes are the ``volume`` suite's chest CT
phantom as ``.npy`` HU arrays; each chat has one media marker, a question grown word by word to the
target sample length and (training) an answer of a set number of supervised tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from medvl.tools.bench.volume_suite import synthetic_ct
from medvl.tools.bench.workload_spec import WORKLOADS, WorkloadSizes

if TYPE_CHECKING:
    from medvl.data.dataset import ConversationDataset
    from medvl.models import MedVLProcessor

T = TypeVar("T")
Messages = list[dict[str, str]]


class _TextSizer:
    """Builds question / answer texts whose tokenised sample is as long as a target (whole words:
    the longest text not over the target, usually within a token of it)."""

    def __init__(self, processor: MedVLProcessor, seed: int):
        from medvl.data.dataset import encoder_for
        from medvl.tokenization import builtin_corpus

        self.encoder = encoder_for(processor)
        self.words = " ".join(builtin_corpus(200, seed=seed)).split()
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def _grow(build: Callable[[int], T], count: Callable[[T], int], target: int) -> T:
        # add words while the token count stays <= target
        n = 1
        best = build(n)
        while True:
            candidate = build(n + 1)
            if count(candidate) > target:
                break
            best, n = candidate, n + 1
        return best

    def _answer(self, marker: str, answer_tokens: int) -> str:
        """The longest run of corpus words (up to 60) whose supervised tokens stay <= ``answer_tokens``."""
        start = int(self.rng.integers(0, len(self.words) - 64))
        words = self.words[start:]

        def labelled(n: int) -> int:
            enc = self.encoder.encode(
                [{"role": "user", "content": marker}, {"role": "assistant", "content": " ".join(words[:n])}]
            )
            return sum(1 for y in enc.labels if y != -100)

        n = 1
        while n < 60 and labelled(n + 1) <= answer_tokens:
            n += 1
        return " ".join(words[:n])

    def conversation(self, marker: str, total: int, answer_tokens: int | None) -> Messages:
        """Messages (user question with one media marker, assistant answer) of about ``total`` tokens.

        Args:
            marker: ``<image>`` or ``<volume>``.
            total: target sample length (training) or prompt length (``answer_tokens`` None).
            answer_tokens: supervised tokens wanted (training); None: a prompt only.
        """
        answer = self._answer(marker, answer_tokens) if answer_tokens is not None else ""
        start = int(self.rng.integers(0, len(self.words) - 400))
        words = self.words[start:]

        def messages(n: int) -> Messages:
            user = [{"role": "user", "content": f"{marker}\n{' '.join(words[:n])}"}]
            return user + [{"role": "assistant", "content": answer}] if answer_tokens is not None else user

        def length(msgs: Messages) -> int:
            if answer_tokens is None:
                return len(self.encoder.encode_prompt(msgs))
            return len(self.encoder.encode(msgs).input_ids)

        return self._grow(messages, length, total)


def _write_images(folder: Path, n: int, size: int, seed: int) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(n):
        # a smooth radiograph-like gradient with a bright blob and noise: different per image
        cx, cy = rng.uniform(0.2, 0.8, 2)
        img = 90 + 80 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02) + 40 * yy + rng.normal(0, 8, (size, size))
        name = f"img{k:04d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGB").save(folder / name)
        paths.append(name)
    return paths


def _write_volumes(folder: Path, n: int, shape: Sequence[int], seed: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    d, h, w = shape
    paths = []
    for k in range(n):
        # (X, Y, Z) phantom -> (D, H, W) HU array as the .npy loader expects it
        array = synthetic_ct((w, h, d), seed=seed + k).transpose(2, 1, 0)
        name = f"ct{k:04d}.npy"
        np.save(folder / name, np.ascontiguousarray(array))
        paths.append(name)
    return paths


def write_workload_data(sizes: WorkloadSizes, processor: MedVLProcessor, kind: str, folder: Path) -> dict[str, Any]:
    """Write the seeded data set of a workload (media files + ``train.jsonl``); returns its facts.

    Args:
        sizes: workload sizes.
        processor: the workload model's processor (the texts are sized with its tokenizer).
        kind: "w2d", "w3d" or "i2d".
        folder: where to write.
    """
    if kind not in WORKLOADS:
        raise ValueError(f"unknown workload {kind!r}; valid choices: {', '.join(WORKLOADS)}")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sizes.seed + {"w2d": 0, "w3d": 1, "i2d": 2}[kind])
    sizer = _TextSizer(processor, sizes.seed + 7)
    answer: int | None
    if kind == "w3d":
        media = _write_volumes(folder / "volumes", sizes.w3d_records, sizes.volume["image_size"], sizes.seed)
        targets = [sizes.w3d_length] * sizes.w3d_records
        marker, key, answer = "<volume>", "volumes", sizes.w2d_answer_tokens
    else:
        n = sizes.w2d_records if kind == "w2d" else sizes.i2d_prompts
        lo, hi = sizes.w2d_lengths if kind == "w2d" else sizes.i2d_lengths
        media = _write_images(folder / "images", n, sizes.vision["image_size"], sizes.seed + (kind == "i2d"))
        targets = [int(t) for t in rng.integers(lo, hi + 1, n)]
        marker, key = "<image>", "images"
        answer = sizes.w2d_answer_tokens if kind == "w2d" else None
    records = [
        {"id": f"{kind}-{k}", "messages": sizer.conversation(marker, target, answer), key: [f"{key}/{path}"]}
        for k, (path, target) in enumerate(zip(media, targets))
    ]
    records_file = folder / "train.jsonl"
    records_file.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return {"records_file": str(records_file), "records": len(records)}


def sample_stats(dataset: ConversationDataset) -> tuple[list[int], list[int]]:
    """(tokens, supervised positions) of every sample of a training data set (no media read).

    Args:
        dataset: the training data set (its records and its conversation encoder).
    """
    tokens, supervised = [], []
    for rec in dataset.records:
        enc = dataset.encoder.encode(rec.messages, record=rec.id)
        tokens.append(len(enc.input_ids))
        supervised.append(sum(1 for y in enc.labels if y != -100))
    return tokens, supervised
