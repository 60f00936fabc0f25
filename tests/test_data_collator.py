"""Collators: exact padded layouts, and packed rows whose loss and gradients equal the padded batch."""

from __future__ import annotations

import torch

from medvl.data.collator import PackingCollator, PaddedCollator
from medvl.data.dataset import ConversationDataset
from medvl.data.records import Record

S1 = {
    "input_ids": torch.tensor([5, 6, 7]),
    "labels": torch.tensor([-100, 6, 7]),
    "pixel_values": torch.zeros(1, 3, 2, 2),
}
S2 = {"input_ids": torch.tensor([8, 9]), "labels": torch.tensor([-100, 9]), "pixel_values": torch.ones(2, 3, 2, 2)}
S3 = {"input_ids": torch.tensor([4]), "labels": torch.tensor([4]), "volume_values": torch.full((1, 1, 2, 2, 2), 3.0)}


def test_padded_right_and_left():
    right = PaddedCollator(pad_token_id=0)([S1, S2, S3])
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0], [4, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100], [4, -100, -100]]
    # media concatenated in row order: S1's image, then S2's two images
    assert right["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0]
    assert right["volume_values"].shape == (1, 1, 2, 2, 2)
    left = PaddedCollator(pad_token_id=0, padding_side="left", pad_to_multiple_of=4)([S1, S2])
    assert left["input_ids"].tolist() == [[0, 5, 6, 7], [0, 0, 8, 9]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1]]
    assert left["labels"].tolist() == [[-100, -100, 6, 7], [-100, -100, -100, 9]]
    prompts = PaddedCollator(pad_token_id=1, padding_side="left")([{"input_ids": [3]}, {"input_ids": [4, 5]}])
    assert prompts["input_ids"].tolist() == [[1, 3], [4, 5]] and "labels" not in prompts


def test_packing_layout():
    packed = PackingCollator()([S1, S2, S3])
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 4]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    assert packed["labels"].tolist() == [[-100, 6, 7, -100, 9, -100]]
    assert "attention_mask" not in packed
    assert packed["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0]
    assert S3["labels"].tolist() == [4]  # inputs are not modified


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_loss_and_gradients_equal_padded(tmp_path, tiny_model_dir, tiny_processor):
    import numpy as np
    from PIL import Image

    from medvl.models import MedVLForConditionalGeneration

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    vol = rng.normal(0, 300, (16, 64, 64)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    a, v = str(tmp_path / "a.png"), str(tmp_path / "v.npy")
    records = [
        Record(
            "r0",
            [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A lung."}],
            images=[a],
        ),
        Record(
            "r1",
            [
                {"role": "user", "content": "Define edema."},
                {"role": "assistant", "content": "Excess fluid in tissue, often in the legs."},
                {"role": "user", "content": "<volume> and this?"},
                {"role": "assistant", "content": "No edema."},
            ],
            volumes=[v],
        ),
        Record(
            "r2",
            [{"role": "user", "content": "<image><image> compare"}, {"role": "assistant", "content": "Same."}],
            images=[a, a],
        ),
    ]
    samples = [s for s in ConversationDataset(records, tiny_processor)]
    model = MedVLForConditionalGeneration.from_pretrained(tiny_model_dir, attn_implementation="sdpa").float()
    model.train()
    for m in model.modules():  # dropout off: the comparison is about the batch layout only
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0

    padded = PaddedCollator(tiny_processor.tokenizer.pad_token_id)(samples)
    model.zero_grad()
    loss_pad = model(**padded, use_cache=False).loss
    loss_pad.backward()
    g_pad = _grads(model)

    packed = PackingCollator()(samples)
    model.zero_grad()
    loss_pack = model(**packed, use_cache=False).loss
    loss_pack.backward()
    g_pack = _grads(model)

    assert packed["input_ids"].shape[0] == 1 and packed["input_ids"].shape[1] == sum(
        len(s["input_ids"]) for s in samples
    )
    assert torch.isfinite(loss_pad) and abs(loss_pad.item() - loss_pack.item()) < 1e-5
    assert g_pad.keys() == g_pack.keys() and len(g_pad) > 10
    for name in g_pad:
        torch.testing.assert_close(g_pack[name], g_pad[name], rtol=0, atol=1e-5, msg=name)


# ---------------------------------------------------------------------------- packing only where it pays
def test_pack_bins_first_fit_decreasing():
    from medvl.data.collator import pack_bins

    # budget 384: [384] | 192 + 96 + 64 + 32 = 384 | 48 + 48 + 32 = 128 (worked by hand)
    assert pack_bins([384, 192, 96, 64, 48, 48, 32, 32], 384) == [[0], [1, 2, 3, 6], [4, 5, 7]]
    assert pack_bins([5, 5, 5], 4) == [[0], [1], [2]]  # over-long samples get a bin each


def test_adaptive_collator_pads_alike_lengths_and_packs_skewed_ones():
    from medvl.data.collator import AdaptivePackingCollator

    collate = AdaptivePackingCollator(pad_token_id=0)
    # W2D-like lengths: no two fit in one row of the longest -> padded, causal path, attention_mask
    assert collate.plan([263, 286, 270, 280]) is None
    assert collate.plan([384, 192, 96, 64, 48, 48, 32, 32]) == [[0], [1, 2, 3, 6], [4, 5, 7]]
    assert AdaptivePackingCollator(pad_token_id=0, min_row_saving=0.7).plan([384, 192, 96, 64, 48, 48, 32, 32]) is None
    a = {
        "input_ids": torch.tensor([5, 6, 7, 8]),
        "labels": torch.tensor([-100, 6, 7, 8]),
        "pixel_values": torch.zeros(1, 3, 2, 2),
    }
    b = {"input_ids": torch.tensor([1, 2]), "labels": torch.tensor([1, 2]), "pixel_values": torch.ones(1, 3, 2, 2)}
    c = {
        "input_ids": torch.tensor([3, 4]),
        "labels": torch.tensor([3, 4]),
        "pixel_values": torch.full((1, 3, 2, 2), 2.0),
    }
    packed = collate([b, a, c])  # bins: [a], [b, c]; rows keep data order by their first sample
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert packed["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 2, 3]]
    assert packed["labels"].tolist() == [[-100, 2, -100, 4], [-100, 6, 7, 8]]
    assert "attention_mask" not in packed
    assert packed["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 2.0, 0.0]  # media follow the rows
    # a shorter row ends in a pad segment of its own: positions restart, labels ignored
    d = {"input_ids": torch.tensor([9]), "labels": torch.tensor([9])}
    tail = collate([a, b, d, {"input_ids": torch.tensor([1, 2, 3, 4]), "labels": torch.tensor([1, 2, 3, 4])}])
    assert tail["input_ids"].tolist() == [[5, 6, 7, 8], [1, 2, 9, 0], [1, 2, 3, 4]]
    assert tail["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 0], [0, 1, 2, 3]]
    assert tail["labels"][1].tolist() == [-100, 2, -100, -100]


def test_adaptive_packing_gives_the_padded_loss_and_gradients(tiny_model):
    from medvl.data.collator import AdaptivePackingCollator

    model = tiny_model
    model.train()
    cfg = model.config
    gen = torch.Generator().manual_seed(3)
    samples = []
    for n_text in (90, 30, 20, 14, 40, 10):  # skewed: the longest row holds several short samples
        ids = torch.cat(
            [torch.full((cfg.num_image_tokens,), cfg.image_token_id), torch.randint(10, 200, (n_text,), generator=gen)]
        )
        labels = ids.clone()
        labels[: cfg.num_image_tokens + n_text // 2] = -100
        image = cfg.vision_config.image_size
        samples.append(
            {"input_ids": ids, "labels": labels, "pixel_values": torch.randn(1, 3, image, image, generator=gen)}
        )
    collate = AdaptivePackingCollator(pad_token_id=0)
    packed = collate(samples)
    assert packed["input_ids"].shape[0] < len(samples)  # it did pack
    padded = PaddedCollator(pad_token_id=0)([dict(s, labels=_first_ignored(s["labels"])) for s in samples])
    results = []
    for batch in (padded, packed):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        results.append(
            (out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6)
    model.eval()


def _first_ignored(labels: torch.Tensor) -> torch.Tensor:
    # packed samples never learn their first token (the previous sample's last position would predict it)
    out = labels.clone()
    out[0] = -100
    return out
