"""Stage 0: the encoder learns image-only labels; nothing else in the model changes."""

from __future__ import annotations

import pytest
import torch
from tests.test_models_medvl import make_config

from medvl.models import MedVLForConditionalGeneration
from medvl.train.encoder_pretrain import EncoderPretrainConfig, pretrain_encoder


def _blob_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a bright 8x8 square in the left and/or right half; labels [left, right]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g) * 0.3
    labels = torch.randint(0, 2, (n, 2), generator=g).float()
    for i in range(n):
        for side in range(2):
            if labels[i, side]:
                y = int(torch.randint(0, 25, (1,), generator=g))
                x = int(torch.randint(0, 9, (1,), generator=g)) + 16 * side
                images[i, :, y:y + 8, x:x + 8] += 1.0
    return images, labels


def test_encoder_learns_image_only_labels_and_nothing_else_moves():
    torch.manual_seed(0)
    model = MedVLForConditionalGeneration(make_config(image_conv_stem=[8, 16]))
    llm_before = {k: v.clone() for k, v in model.language_model.state_dict().items()}
    connector_before = {k: v.clone() for k, v in model.image_connector.state_dict().items()}
    model.vision_tower.requires_grad_(False)  # a frozen tower is trained here and handed back frozen
    train, test = _blob_images(512, 0), _blob_images(128, 1)
    config = EncoderPretrainConfig(steps=400, batch_size=16, lr=2e-3, warmup_steps=10)
    blind = pretrain_encoder(MedVLForConditionalGeneration(make_config(image_conv_stem=[8, 16])),
                             lambda idx: torch.zeros(len(idx), 3, 32, 32), train[1], config=config,
                             eval_items=(lambda idx: torch.zeros(len(idx), 3, 32, 32), test[1]))
    stats = pretrain_encoder(model, lambda idx: train[0][list(idx)], train[1], config=config,
                             eval_items=(lambda idx: test[0][list(idx)], test[1]))
    assert min(stats["eval_accuracy"]) >= 0.9, stats
    assert max(blind["eval_accuracy"]) <= 0.65, blind  # blank images: the prior, nothing more
    assert all(torch.equal(v, model.language_model.state_dict()[k]) for k, v in llm_before.items())
    assert all(torch.equal(v, model.image_connector.state_dict()[k]) for k, v in connector_before.items())
    assert not any(p.requires_grad for p in model.vision_tower.parameters())


def test_bad_kind_missing_encoder_and_bad_labels_are_named():
    model = MedVLForConditionalGeneration(make_config())
    with pytest.raises(ValueError, match="valid choices: image, volume"):
        pretrain_encoder(model, lambda idx: torch.zeros(1), torch.zeros(2, 1), kind="audio")
    with pytest.raises(ValueError, match="no volume encoder"):
        pretrain_encoder(model, lambda idx: torch.zeros(1), torch.zeros(2, 1), kind="volume")
    with pytest.raises(ValueError, match=r"labels must be \(items, labels\)"):
        pretrain_encoder(model, lambda idx: torch.zeros(1), torch.zeros(4))
