"""End to end on the tiny checkpoint: Auto classes, batched left-padded generation, gradient checkpointing."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import medvl  # noqa: F401  (registers the Auto classes)
from medvl.models import MedVLForConditionalGeneration, MedVLProcessor


def _image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 56, 3), dtype=np.uint8))


def _volume(seed=0):
    return np.random.default_rng(seed).normal(-200, 400, (10, 30, 30)).astype(np.float32)


def _prompt(processor, parts):
    return processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)


def test_auto_classes_resolve_to_medvl_after_import(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    assert type(AutoConfig.from_pretrained(tiny_model_dir)).__name__ == "MedVLConfig"
    assert isinstance(AutoModelForImageTextToText.from_pretrained(tiny_model_dir), MedVLForConditionalGeneration)
    assert isinstance(AutoProcessor.from_pretrained(tiny_model_dir), MedVLProcessor)


def test_left_padded_batch_generation_equals_rows_alone(tiny_model, tiny_processor):
    rows = [
        (
            _prompt(
                tiny_processor, [{"type": "image"}, {"type": "text", "text": "Is there a nodule in the left lung?"}]
            ),
            [_image(1)],
            [],
        ),
        (_prompt(tiny_processor, [{"type": "text", "text": "Hi"}]), [], []),
        (
            _prompt(tiny_processor, [{"type": "volume"}, {"type": "image"}, {"type": "text", "text": "Compare."}]),
            [_image(2)],
            [_volume(3)],
        ),
    ]
    texts = [r[0] for r in rows]
    images = [im for r in rows for im in r[1]]
    volumes = [v for r in rows for v in r[2]]
    batch = tiny_processor(text=texts, images=images, volumes=volumes, padding=True, padding_side="left")
    with torch.no_grad():
        together = tiny_model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    new = together[:, batch["input_ids"].shape[1] :]
    for i, (text, ims, vols) in enumerate(rows):
        alone_inputs = tiny_processor(text=[text], images=ims or None, volumes=vols or None)
        with torch.no_grad():
            alone = tiny_model.generate(**alone_inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        assert new[i].tolist() == alone[0, alone_inputs["input_ids"].shape[1] :].tolist(), i


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, tiny_processor):
    batch = tiny_processor(
        text=[
            _prompt(tiny_processor, [{"type": "image"}, {"type": "volume"}, {"type": "text", "text": "Findings?"}])
            + "Clear.<|im_end|>"
        ],
        images=[_image()],
        volumes=[_volume()],
    )
    labels = batch["input_ids"].clone()
    labels[:, :-4] = -100
    grads = []
    for checkpointing in (False, True):
        model = MedVLForConditionalGeneration.from_pretrained(tiny_model_dir).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        model(**batch, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(k.startswith("volume_encoder.") for k in grads[0]) and any(
        k.startswith("vision_tower.") for k in grads[0]
    )
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)
