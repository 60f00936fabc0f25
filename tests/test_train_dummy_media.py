"""Dummy media: a batch without images still runs the vision tower, with the loss unchanged."""

from __future__ import annotations

import pytest
import torch

from medvl.data.collator import PackingCollator, PaddedCollator
from medvl.train.dummy_media import add_dummy_media, media_slots


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from medvl.models import MedVLForConditionalGeneration

    return MedVLForConditionalGeneration.from_pretrained(tiny_model_dir).train()


def _samples():
    # text-only samples of different lengths, labels on the answer part
    out = []
    for n in (7, 11):
        ids = torch.arange(10, 10 + n)
        labels = ids.clone()
        labels[: n // 2] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def test_slots_follow_the_model_config(model):
    slots = {s.key: s for s in media_slots(model.config)}
    assert set(slots) == {"pixel_values", "volume_values"}
    image = slots["pixel_values"]
    assert image.token_id == model.config.image_token_id and image.num_tokens == model.config.num_image_tokens
    assert image.shape == (3, 64, 64)  # configs/tiny.yaml: 64 px SigLIP
    assert slots["volume_values"].shape == (1, 16, 64, 64)  # configs/tiny.yaml: native 3D ViT, 16x64x64


@pytest.mark.parametrize("collator", [PaddedCollator(pad_token_id=0), PackingCollator()], ids=["padded", "packed"])
def test_loss_unchanged_and_every_encoder_gets_a_gradient(model, collator):
    batch = collator(_samples())
    model.zero_grad()
    plain = model(**batch).loss
    with_dummy = add_dummy_media(batch, media_slots(model.config))
    assert with_dummy["pixel_values"].shape[0] == 1 and with_dummy["volume_values"].shape[0] == 1
    assert (with_dummy["input_ids"] == model.config.image_token_id).sum() == model.config.num_image_tokens
    loss = model(**with_dummy).loss
    assert loss.item() == pytest.approx(plain.item(), rel=1e-5)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    # the encoders took part in the graph (zero gradient); only the modules that never run (the
    # towers' post-norm / pooling heads: features are taken from hidden states) have none
    for name in (
        "vision_tower.embeddings.",
        "vision_tower.encoder.layers.",
        "volume_encoder.",
        "image_connector.",
        "volume_connector.",
    ):
        part = [g for n, g in grads.items() if n.startswith(name)]
        assert part and any(g is not None for g in part), name
        assert all(g is None or not g.any() for g in part), name
    assert all(
        grads[n] is not None for n in grads if n.startswith(("vision_tower.encoder.layers.", "image_connector."))
    )
    model.zero_grad()


def test_batch_with_media_is_left_alone(model):
    batch = PaddedCollator(pad_token_id=0)(_samples())
    batch["pixel_values"] = torch.zeros(0, 3, 64, 64)
    batch["volume_values"] = torch.zeros(1, 1, 16, 64, 64)
    out = add_dummy_media(batch, media_slots(model.config))
    assert out["pixel_values"].shape[0] == 1 and out["volume_values"] is batch["volume_values"]
    assert out["input_ids"].shape[1] == batch["input_ids"].shape[1] + model.config.num_image_tokens


def test_cached_kinds_get_dummy_features_and_present_features_count(model):
    batch = PaddedCollator(pad_token_id=0)(_samples())
    plain = model(**batch).loss
    volume_shape = (
        model.config.num_volume_tokens * 8,
        model.config.volume_config.hidden_size,
    )  # 64 tokens before pooling
    slots = media_slots(model.config)
    with_dummy = add_dummy_media(batch, slots, feature_shapes={"volume_values": volume_shape})
    # the cached kind gets zero encoder features (its encoder runs nowhere), the other raw media
    assert "volume_values" not in with_dummy and with_dummy["volume_encoder_features"].shape == (1, *volume_shape)
    assert with_dummy["pixel_values"].shape[0] == 1
    assert model(**with_dummy).loss.item() == pytest.approx(plain.item(), rel=1e-5)
    # a batch that already has a kind's cached features gets no dummy for that kind
    again = add_dummy_media(with_dummy, slots, feature_shapes={"volume_values": volume_shape})
    assert again["input_ids"].shape == with_dummy["input_ids"].shape
