"""MedVLProcessor: marker expansion, media batching, chat template with content parts, padding, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medvl.models import MedVLProcessor


def _image(seed=0, size=(50, 40)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def _volume(seed=0):
    return np.random.default_rng(seed).normal(-300, 300, (12, 40, 36)).astype(np.float32)


def test_each_marker_becomes_exactly_n_placeholders(tiny_processor):
    p = tiny_processor
    batch = p(
        text=["<image>\nA <image> B", "no media", "<volume> and <image>"],
        images=[_image(0), _image(1), _image(2)],
        volumes=[_volume()],
        padding=True,
    )
    ids = batch["input_ids"]
    assert (ids == p.image_token_id).sum(-1).tolist() == [2 * p.num_image_tokens, 0, p.num_image_tokens]
    assert (ids == p.volume_token_id).sum(-1).tolist() == [0, 0, p.num_volume_tokens]
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    assert batch["volume_values"].shape == (1, 1, 16, 64, 64)
    # placeholders are contiguous runs, followed by the text that came after the marker
    row0 = ids[0][batch["attention_mask"][0].bool()].tolist()
    first = row0.index(p.image_token_id)
    assert row0[first : first + p.num_image_tokens] == [p.image_token_id] * p.num_image_tokens
    assert p.decode(row0[first + p.num_image_tokens :]).startswith("\nA ")


def test_images_per_row_or_flat_give_the_same_tensors(tiny_processor):
    flat = tiny_processor(text=["<image><image>", "<image>"], images=[_image(0), _image(1), _image(2)], padding=True)
    nested = tiny_processor(
        text=["<image><image>", "<image>"], images=[[_image(0), _image(1)], [_image(2)]], padding=True
    )
    assert torch.equal(flat["pixel_values"], nested["pixel_values"])


def test_marker_and_media_count_mismatch_is_reported(tiny_processor):
    with pytest.raises(
        ValueError, match=r"1 image\(s\) given but the text has 2 <image> marker\(s\) \(row 0: 0, row 1: 2\)"
    ):
        tiny_processor(text=["none", "<image><image>"], images=[_image()], padding=True)
    with pytest.raises(ValueError, match=r"1 volume\(s\) given but the text has 0"):
        tiny_processor(text="plain", volumes=[_volume()])


def test_padding_side_left_for_generation(tiny_processor):
    batch = tiny_processor(text=["short", "a much longer prompt with many words"], padding=True, padding_side="left")
    mask = batch["attention_mask"]
    assert mask[0, -1] == 1 and mask[0, 0] == 0
    assert (batch["input_ids"][0][mask[0] == 0] == tiny_processor.tokenizer.pad_token_id).all()


def test_chat_template_content_parts_equal_string_markers(tiny_processor):
    parts = [
        {"role": "system", "content": "You are a radiologist."},
        {"role": "user", "content": [{"type": "image"}, {"type": "volume"}, {"type": "text", "text": "Compare."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Stable."}]},
    ]
    strings = [
        {"role": "system", "content": "You are a radiologist."},
        {"role": "user", "content": "<image>\n<volume>\nCompare."},
        {"role": "assistant", "content": "Stable."},
    ]
    expected = (
        "<|im_start|>system\nYou are a radiologist.<|im_end|>\n<|im_start|>user\n<image>\n<volume>\nCompare."
        "<|im_end|>\n<|im_start|>assistant\nStable.<|im_end|>\n"
    )
    assert tiny_processor.apply_chat_template(parts) == expected
    assert tiny_processor.apply_chat_template(strings) == expected
    prompt = tiny_processor.apply_chat_template(parts[:2], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    batch = tiny_processor.apply_chat_template(
        [parts[:2], strings[:2]],
        add_generation_prompt=True,
        tokenize=True,
        images=[_image(), _image()],
        volumes=[_volume(), _volume()],
        padding=True,
    )
    assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])


def test_save_and_reload_keeps_settings(tiny_processor, tmp_path):
    tiny_processor.save_pretrained(tmp_path)
    again = MedVLProcessor.from_pretrained(tmp_path)
    assert type(again.image_processor).__name__.endswith("Pil")
    assert again.volume_processor.to_dict() == tiny_processor.volume_processor.to_dict()
    assert (again.num_image_tokens, again.num_volume_tokens) == (
        tiny_processor.num_image_tokens,
        tiny_processor.num_volume_tokens,
    )
    assert again.chat_template == tiny_processor.chat_template
    a = again(text=["<image> x <volume>"], images=[_image()], volumes=[_volume()])
    b = tiny_processor(text=["<image> x <volume>"], images=[_image()], volumes=[_volume()])
    for key in ("input_ids", "pixel_values", "volume_values"):
        assert torch.equal(a[key], b[key]), key


def test_truncation_through_media_tokens_is_an_error(tiny_processor):
    text = "a b c d e f g <image> tail"
    ok = tiny_processor(text=[text], images=[_image()], truncation=True, max_length=64)
    assert (ok["input_ids"] == tiny_processor.image_token_id).sum() == tiny_processor.num_image_tokens
    with pytest.raises(
        ValueError, match=r"text row 0: \d+ image placeholder tokens after tokenisation, expected 1 x 16"
    ):
        tiny_processor(text=[text], images=[_image()], truncation=True, max_length=10)
