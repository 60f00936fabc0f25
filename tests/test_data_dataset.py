"""ConversationDataset: tokenised samples with media tensors, lazy errors, skip policy, mixing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medvl.data.dataset import ConversationDataset, mix_records
from medvl.data.labels import IGNORE_INDEX, OverlongSampleError
from medvl.data.records import Record, load_records
from medvl.errors import MedVLDataError
from medvl.imaging import load_image, load_volume

LOADERS: dict = {}  # medvl.imaging's load_image / load_volume (the defaults)


def make_dataset_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(tmp_path / "b.png")
    vol = np.full((20, 40, 40), -1000, np.int16)
    vol[5:15, 10:30, 10:30] = 40
    np.save(tmp_path / "ct.npy", vol)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    rows = [
        {
            "id": "img",
            "messages": [
                {"role": "user", "content": "<image>\nWhat is shown?"},
                {"role": "assistant", "content": "A chest radiograph."},
            ],
            "images": ["a.png"],
        },
        {
            "id": "vol",
            "messages": [
                {"role": "user", "content": "<volume>\nAny nodule?"},
                {"role": "assistant", "content": "No nodule."},
                {"role": "user", "content": "<image> And here?"},
                {"role": "assistant", "content": "Normal."},
            ],
            "volumes": ["ct.npy"],
            "images": ["b.png"],
        },
        {
            "id": "text",
            "messages": [
                {"role": "user", "content": "Define effusion."},
                {"role": "assistant", "content": "Fluid in the pleural space."},
            ],
        },
        {
            "id": "missing",
            "messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}],
            "images": ["nope.png"],
        },
        {
            "id": "corrupt",
            "messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}],
            "images": ["broken.png"],
        },
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path / "d.jsonl"


def test_items_carry_tokens_labels_and_media(tmp_path, tiny_processor):
    records = load_records(make_dataset_dir(tmp_path))
    ds = ConversationDataset(records[:3], tiny_processor, **LOADERS)
    p = tiny_processor
    img = ds[0]
    assert (img["input_ids"] == p.image_token_id).sum() == p.num_image_tokens
    assert img["pixel_values"].shape == (1, 3, 64, 64) and "volume_values" not in img
    sup = img["labels"] != IGNORE_INDEX
    assert p.tokenizer.decode(img["input_ids"][sup]) == "A chest radiograph.<|im_end|>"
    vol = ds[1]
    assert (vol["input_ids"] == p.volume_token_id).sum() == p.num_volume_tokens
    assert vol["volume_values"].shape == (1, 1, 16, 64, 64) and vol["pixel_values"].shape == (1, 3, 64, 64)
    assert (
        p.tokenizer.decode(vol["input_ids"][vol["labels"] != IGNORE_INDEX]) == "No nodule.<|im_end|>Normal.<|im_end|>"
    )
    text = ds[2]
    assert set(text) == {"input_ids", "labels", "id"}
    assert len(ds.lengths()) == 3 and ds.lengths()[0] == len(img["input_ids"])


def test_prompt_mode_equals_processor_inference_path(tmp_path, tiny_processor):
    """The training/eval dataset and the processor's own inference path give identical tensors."""
    records = load_records(make_dataset_dir(tmp_path))
    ds = ConversationDataset(records[:2], tiny_processor, mode="prompt", **LOADERS)
    for i, rec in enumerate(records[:2]):
        item = ds[i]
        msgs = rec.messages[:-1]
        prompt = tiny_processor.apply_chat_template(msgs, add_generation_prompt=True)
        images = [load_image(x) for x in rec.images]
        volumes = [load_volume(x) for x in rec.volumes]
        ref = tiny_processor(text=prompt, images=images or None, volumes=volumes or None)
        assert item["input_ids"].tolist() == ref["input_ids"][0].tolist()
        assert "labels" not in item
        for key in ("pixel_values", "volume_values"):
            if key in ref:
                torch.testing.assert_close(item[key], ref[key], rtol=0, atol=0)
        # and the training sample starts with exactly this prompt
        train = ConversationDataset([rec], tiny_processor, **LOADERS)[0]["input_ids"].tolist()
        if len(rec.messages) == 2:
            assert train[: len(item["input_ids"])] == item["input_ids"].tolist()


def test_lazy_errors_name_record_and_file_or_skip_and_count(tmp_path, tiny_processor):
    records = load_records(make_dataset_dir(tmp_path))
    strict = ConversationDataset(records, tiny_processor, **LOADERS)
    with pytest.raises(MedVLDataError, match=r"record 'missing'.*nope.png.*image file not found"):
        strict[3]
    with pytest.raises(MedVLDataError, match=r"record 'corrupt'.*broken.png"):
        strict[4]
    lenient = ConversationDataset(records, tiny_processor, on_error="skip", **LOADERS)
    assert lenient[3] is None and lenient[4] is None  # dropped, never replaced by another record
    assert lenient.skipped["error"] == 2


def test_skip_means_skip_every_good_record_once_per_epoch(tmp_path, tiny_processor):
    """data.on_error=skip: an epoch through a DataLoader sees each good record exactly once."""
    from torch.utils.data import DataLoader

    from medvl.data.collator import AdaptivePackingCollator, PackingCollator, PaddedCollator

    records = load_records(make_dataset_dir(tmp_path))
    lenient = ConversationDataset(records, tiny_processor, on_error="skip", **LOADERS)
    good = []
    for i in range(len(records)):
        try:
            ConversationDataset(records, tiny_processor, **LOADERS).build(i)
            good.append(records[i].id)
        except MedVLDataError:
            pass
    assert len(good) == len(records) - 2
    pad = tiny_processor.tokenizer.pad_token_id
    collator = PaddedCollator(pad, return_ids=True)
    # the default training collator (adaptive packing) drops skipped samples the same way
    for coll in (collator, AdaptivePackingCollator(pad, return_ids=True)):
        seen = [i for batch in DataLoader(lenient, batch_size=2, collate_fn=coll) for i in batch["ids"]]
        assert sorted(seen) == sorted(good)
    assert lenient.skipped["error"] == 4  # counted once per pass
    # a batch of skipped samples only comes out with zero rows (the trainer steps over it)
    for coll in (collator, PackingCollator(), AdaptivePackingCollator(pad)):
        empty = coll([None, None])
        assert empty["input_ids"].shape[0] == 0 and empty["labels"].shape[0] == 0


def test_overlong_is_skipped_and_counted_or_raises(tmp_path, tiny_processor):
    records = load_records(make_dataset_dir(tmp_path))[:3]
    probe = ConversationDataset(records, tiny_processor, **LOADERS)
    n_img, n_vol, n_text = probe.lengths()
    limit = n_text  # the text-only sample fits, the media samples (16/8 placeholders each) do not
    assert n_img > limit and n_vol > limit
    ds = ConversationDataset(records, tiny_processor, max_length=limit, **LOADERS)
    items = [ds[i] for i in range(3)]
    assert items[:2] == [None, None] and items[2]["id"] == "text" and ds.skipped["overlong"] == 2
    strict = ConversationDataset(records, tiny_processor, max_length=limit, on_overlong="error", **LOADERS)
    with pytest.raises(OverlongSampleError, match=rf"record 'img'.*{n_img} tokens"):
        strict[0]
    with pytest.raises(ValueError, match="valid choices: skip, error"):
        ConversationDataset(records, tiny_processor, on_overlong="truncate")


def test_mix_records_by_weight():
    a = [Record(f"a{i}", [{"role": "user", "content": "q"}]) for i in range(10)]
    b = [Record(f"b{i}", [{"role": "user", "content": "q"}]) for i in range(4)]
    mixed = mix_records([(a, 0.5), (b, 2.0)], seed=1)
    ids = [r.id for r in mixed]
    assert sum(i.startswith("a") for i in ids) == 5 and len(set(i for i in ids if i.startswith("a"))) == 5
    assert sorted(i for i in ids if i.startswith("b")) == sorted([f"b{i}" for i in range(4)] * 2)
    assert [r.id for r in mix_records([(a, 0.5), (b, 2.0)], seed=1)] == ids  # deterministic
    with pytest.raises(ValueError, match=">= 0"):
        mix_records([(a, -1.0)])


def test_training_template_is_bound_to_the_processor(tmp_path, tiny_processor):
    """A model trained on vicuna prompts is prompted with vicuna after saving/reloading its processor."""
    import copy

    from medvl.data.templates import VICUNA

    proc = copy.copy(tiny_processor)
    records = load_records(make_dataset_dir(tmp_path))[2:3]
    train = ConversationDataset(records, proc, template="vicuna")
    assert proc.chat_template == VICUNA and tiny_processor.chat_template != VICUNA
    prompt = ConversationDataset(records, proc, mode="prompt")[0]["input_ids"].tolist()
    assert train[0]["input_ids"].tolist()[: len(prompt)] == prompt
    text = proc.apply_chat_template(records[0].messages[:1], add_generation_prompt=True)
    assert text.endswith("USER: Define effusion. ASSISTANT:")
    assert proc(text=text)["input_ids"][0].tolist() == prompt


def test_from_registry_source(tmp_path, tiny_processor):
    path = make_dataset_dir(tmp_path)
    (tmp_path / "reg.yaml").write_text(f"datasets:\n  d: {{path: {path.name}, weight: 2}}\n")
    ds = ConversationDataset.from_source(tmp_path / "reg.yaml", tiny_processor, on_error="skip")
    assert len(ds) == 10 and ds[2]["id"] == "text" and ds.records[0].meta["source"] == "d"
