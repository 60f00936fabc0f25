"""Stage 0: supervised pretraining of a model's image or volume encoder on multi-label findings.

LLaVA-style models start from a pretrained vision encoder (CLIP, SigLIP, MedM-CLIP, ...). Where
there is none (a new modality, or a model built from scratch like the quickstart's), the encoder
can first be pretrained on labelled images, the way chest-radiograph encoders are pretrained on
CheXpert / MIMIC-CXR finding labels. Instruction tuning then only has to teach the connector and
the LLM to read features that already exist.

Why not let instruction tuning train the encoder from scratch: its only signal arrives through the
LLM's attention, which starts out uniform over the media tokens, i.e. as a mean over them. Mean
pooling dilutes a small finding (a 10 mm nodule is a few of 64 tokens) and learns slowly; measured
on the quickstart phantoms, nothing beyond the answer prior after 800 steps, while a classifier
head on the max over the encoder's tokens learns the same findings in a few hundred steps.

The head here is exactly that: max over the tokens of one encoder hidden state -> Linear -> one
logit per label, binary cross-entropy. The head is thrown away afterwards; the encoder keeps its
weights inside the model.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

MEDIA_KINDS = ("image", "volume")


@dataclass
class EncoderPretrainConfig:
    """Settings of :func:`pretrain_encoder`.

    Args:
        steps: optimizer steps.
        batch_size: items per step.
        lr: peak learning rate (AdamW, linear warm-up, cosine decay to 10 %).
        warmup_steps: warm-up steps.
        weight_decay: AdamW weight decay.
        feature_layer: which encoder hidden state the head reads (-1: the last block's output).
        seed: sampling and head-initialisation seed.
    """

    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.0
    feature_layer: int = -1
    seed: int = 0


def _encoder(model: nn.Module, kind: str) -> nn.Module:
    if kind not in MEDIA_KINDS:
        raise ValueError(f"unknown media kind {kind!r}; valid choices: {', '.join(MEDIA_KINDS)}")
    encoder = model.vision_tower if kind == "image" else model.volume_encoder
    if encoder is None:
        raise ValueError(f"the model has no {'2D vision tower' if kind == 'image' else 'volume encoder'} to pretrain")
    return encoder


def _pooled_features(encoder: nn.Module, media: torch.Tensor, feature_layer: int) -> torch.Tensor:
    """Max over the tokens of one hidden state: (N, hidden)."""
    outputs = encoder(media, output_hidden_states=True)
    hidden = outputs.hidden_states[feature_layer]
    return hidden.max(dim=1).values


def pretrain_encoder(model: nn.Module, load_media: Callable[[Sequence[int]], torch.Tensor], labels: torch.Tensor,
                     kind: str = "image", config: EncoderPretrainConfig | None = None,
                     eval_items: tuple[Callable[[Sequence[int]], torch.Tensor], torch.Tensor] | None = None,
                     ) -> dict[str, Any]:
    """Train ``model``'s image or volume encoder (in place) as a multi-label classifier.

    Args:
        model: a ``MedVLForConditionalGeneration`` (its other parts are not touched).
        load_media: indices -> a batch as the encoder takes it ((N, 3, H, W) pixel values or
            (N, C, D, H, W) volume values, already preprocessed).
        labels: (N_items, N_labels) 0/1 floats, one row per item ``load_media`` can return.
        kind: "image" (the 2D tower) or "volume" (the 3D encoder).
        config: steps, batch size, learning rate, ...
        eval_items: optional held-out (load_media, labels) scored after training.

    Returns:
        {"steps", "seconds", "final_loss", "eval_accuracy" (per label, if eval_items)}.
    """
    config = config or EncoderPretrainConfig()
    encoder = _encoder(model, kind)
    labels = labels.float()
    if labels.ndim != 2 or labels.shape[0] < 1:
        raise ValueError(f"labels must be (items, labels) with at least one item, got shape {tuple(labels.shape)}")
    generator = torch.Generator().manual_seed(config.seed)
    width = encoder.config.hidden_size
    head = nn.Linear(width, labels.shape[1])
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=generator)
        head.bias.zero_()
    dtype = next(encoder.parameters()).dtype
    head.to(device=next(encoder.parameters()).device, dtype=dtype)
    params = [p for p in encoder.parameters()] + list(head.parameters())
    was_training = encoder.training
    requires = [p.requires_grad for p in encoder.parameters()]
    encoder.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def lr_factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    rng = random.Random(config.seed)
    order: list[int] = []
    start, loss = time.time(), torch.tensor(float("nan"))
    for step in range(config.steps):
        if len(order) < config.batch_size:  # epochs of a fresh permutation, no item twice per epoch
            more = list(range(labels.shape[0]))
            rng.shuffle(more)
            order += more
        batch, order = order[:config.batch_size], order[config.batch_size:]
        media = load_media(batch).to(device=head.weight.device, dtype=dtype)
        logits = head(_pooled_features(encoder, media, config.feature_layer))
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels[batch].to(logits.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0:
            logger.info("encoder pretraining step %d/%d loss %.4f", step + 1, config.steps, loss.item())
    result: dict[str, Any] = {"steps": config.steps, "seconds": round(time.time() - start, 1),
                              "final_loss": float(loss.item())}
    if eval_items is not None:
        result["eval_accuracy"] = evaluate_encoder_head(encoder, head, *eval_items, feature_layer=config.feature_layer)
    for p, flag in zip(encoder.parameters(), requires):
        p.requires_grad_(flag)
    encoder.train(was_training)
    return result


@torch.no_grad()
def evaluate_encoder_head(encoder: nn.Module, head: nn.Module, load_media: Callable[[Sequence[int]], torch.Tensor],
                          labels: torch.Tensor, feature_layer: int = -1, batch_size: int = 64) -> list[float]:
    """Per-label accuracy of the pretraining head on held-out items (threshold 0.5).

    Args:
        encoder: the pretrained encoder.
        head: its classification head.
        load_media: indices -> a preprocessed batch.
        labels: (N_items, N_labels) 0/1.
        feature_layer: the hidden state the head reads.
        batch_size: items per forward pass.
    """
    was_training = encoder.training
    encoder.eval()
    correct = torch.zeros(labels.shape[1])
    dtype = head.weight.dtype
    for begin in range(0, labels.shape[0], batch_size):
        idx = list(range(begin, min(begin + batch_size, labels.shape[0])))
        logits = head(_pooled_features(encoder, load_media(idx).to(head.weight.device, dtype), feature_layer))
        correct += ((logits.float().cpu() > 0) == (labels[idx] > 0.5)).float().sum(0)
    encoder.train(was_training)
    return [round(float(c) / labels.shape[0], 4) for c in correct]


__all__ = ["EncoderPretrainConfig", "pretrain_encoder", "evaluate_encoder_head", "MEDIA_KINDS"]
