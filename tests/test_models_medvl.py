"""MedVLForConditionalGeneration: encoders x connectors x LLMs, merge, count check, loss, packing, generate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medvl.models import MedVLConfig, MedVLForConditionalGeneration

IMG, VOL = 5, 6  # placeholder ids used in these tests
VOCAB = 96

LLMS = {
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, tie_word_embeddings=True),
    "llama": dict(model_type="llama", num_key_value_heads=2),
    "phi3": dict(model_type="phi3", num_key_value_heads=4, pad_token_id=0),
    # families whose LM head output is scaled or soft-capped
    "gemma2": dict(model_type="gemma2", num_key_value_heads=2, head_dim=8, final_logit_softcapping=5.0),
    "granite": dict(model_type="granite", num_key_value_heads=2, logits_scaling=4.0),
    "cohere": dict(
        model_type="cohere", num_key_value_heads=2, logit_scale=0.5, eos_token_id=2, bos_token_id=1, pad_token_id=0
    ),
}
TOWERS = {
    "siglip": dict(model_type="siglip_vision_model"),
    "clip": dict(model_type="clip_vision_model"),
    "dinov2": dict(model_type="dinov2"),
}
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def make_config(llm="qwen2", tower="siglip", image_connector=None, volume=None, volume_connector=None, **kw):
    text = {**SMALL, **LLMS[llm], "vocab_size": VOCAB}
    vision = None if tower is None else {**SMALL, **TOWERS[tower], "image_size": 32, "patch_size": 8}
    volume_config = None
    if volume == "vit3d":
        volume_config = {**SMALL, "model_type": "medvl_vit3d", "image_size": [8, 32, 32], "patch_size": [4, 8, 8]}
    elif volume == "slicewise":
        volume_config = {**SMALL, "model_type": "siglip_vision_model", "image_size": 16, "patch_size": 8}
        kw.setdefault("volume_num_slices", 4)
    return MedVLConfig(
        text_config=text,
        vision_config=vision,
        volume_config=volume_config,
        image_connector=image_connector,
        volume_connector=volume_connector,
        image_token_id=IMG,
        volume_token_id=VOL,
        **kw,
    )


def make_model(config, seed=0):
    torch.manual_seed(seed)
    model = MedVLForConditionalGeneration(config).eval()
    # random init of tiny LLMs is nearly flat; make logits distinguishable for the equality tests
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1)
    return model


def row(text_ids, *media, tail=4):
    """A token row: some text ids, then for every (token id, count) placeholders, then more text."""
    ids = list(text_ids)
    for token, count in media:
        ids += [token] * count + [20 + len(ids) % 50]
    return ids + [30 + i for i in range(tail)]


def volume_shape(config):
    if config.volume_encoder == "vit3d":
        return (1, *config.volume_config.image_size)
    size = config.volume_config.image_size
    return (3, config.volume_num_slices, size, size)


@pytest.mark.parametrize(
    "llm,tower,image_connector,volume,volume_connector",
    [
        ("qwen2", "siglip", {"type": "mlp", "depth": 2}, None, None),
        ("llama", "clip", {"type": "mlp", "depth": 1}, None, None),
        ("phi3", "dinov2", {"type": "spatial_pool", "pool_stride": [1, 2, 2]}, None, None),
        ("qwen2", "clip", {"type": "attn_pool", "num_queries": 3, "num_heads": 4}, None, None),
        ("qwen2", None, None, "vit3d", {"type": "spatial_pool", "pool_stride": [2, 2, 2]}),
        ("llama", None, None, "vit3d", {"type": "mlp", "activation": "relu"}),
        ("qwen2", "siglip", None, "slicewise", {"type": "attn_pool", "num_queries": 5, "num_heads": 4}),
    ],
)
def test_forward_backward_every_combination(llm, tower, image_connector, volume, volume_connector):
    config = make_config(llm, tower, image_connector, volume, volume_connector)
    model = make_model(config).train()
    media, kwargs = [], {}
    if tower is not None:
        media.append((IMG, config.num_image_tokens))
        kwargs["pixel_values"] = torch.randn(1, 3, 32, 32)
    if volume is not None:
        media.append((VOL, config.num_volume_tokens))
        kwargs["volume_values"] = torch.randn(1, *volume_shape(config))
    ids = torch.tensor([row([40, 41, 42], *media)])
    labels = ids.clone()
    labels[:, : ids.shape[1] - 3] = -100
    out = model(input_ids=ids, labels=labels, **kwargs)
    assert out.logits.shape == (1, ids.shape[1], VOCAB)  # the Hugging Face contract
    supervised_only = model(input_ids=ids, labels=labels, return_supervised_logits_only=True, **kwargs)
    assert supervised_only.logits.shape == (3, VOCAB)  # one logit row per supervised label (predicted from p-1)
    torch.testing.assert_close(supervised_only.loss, out.loss)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    connector = model.image_connector if tower is not None else model.volume_connector
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in connector.parameters())


def test_token_counts_follow_encoder_grid_and_connector():
    # siglip 32/8 -> 4x4 = 16 patches (no CLS); clip adds a CLS; spatial pool 2x2 -> 4
    assert make_config(tower="siglip").num_image_tokens == 16
    assert make_config(tower="clip", image_feature_select="all").num_image_tokens == 17
    assert make_config(tower="clip", image_feature_select="cls").num_image_tokens == 1
    assert make_config(tower="dinov2", image_connector={"type": "spatial_pool"}).num_image_tokens == 4
    assert (
        make_config(
            tower="siglip", image_connector={"type": "attn_pool", "num_queries": 7, "num_heads": 4}
        ).num_image_tokens
        == 7
    )
    # vit3d 8x32x32 / 4x8x8 -> 2x4x4 = 32 patches; pooled 2x2x2 -> 4
    cfg = make_config(tower=None, volume="vit3d", volume_connector={"type": "spatial_pool", "pool_stride": [2, 2, 2]})
    assert cfg.num_volume_tokens == 4
    # slicewise: 4 slices x (16/8)^2 = 16 tokens with mlp
    assert make_config(tower=None, volume="slicewise", volume_connector={"type": "mlp"}).num_volume_tokens == 16


def test_invalid_choices_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid choices: 'mlp', 'spatial_pool', 'attn_pool'"):
        make_config(image_connector={"type": "resampler9"})
    with pytest.raises(ValueError, match="valid choices: 'patch', 'cls', 'all'"):
        make_config(image_feature_select="cls_patch")
    with pytest.raises(ValueError, match="valid keys"):
        make_config(image_connector={"type": "mlp", "dept": 2})
    with pytest.raises(ValueError, match="no CLS token"):
        make_config(tower="siglip", image_feature_select="cls")
    with pytest.raises(ValueError, match="valid choices: 'vit3d', 'slicewise'"):
        make_config(tower=None, volume="vit3d", volume_encoder="voxel")


def test_placeholder_count_mismatch_names_the_row():
    config = make_config()
    model = make_model(config)
    n = config.num_image_tokens
    ids = torch.tensor([row([40], (IMG, n)), row([40], (IMG, n - 1), tail=5)])
    with pytest.raises(ValueError, match=r"row 1 has 15 image placeholder tokens"):
        model(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32))
    ids = torch.tensor([row([40], (IMG, n)), row([40], (IMG, n))])
    with pytest.raises(ValueError, match=r"placeholders for 2 image\(s\) \(row 0: 1, row 1: 1\), but 3"):
        model(input_ids=ids, pixel_values=torch.randn(3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"row\(s\) \[0, 1\] contain image placeholders but no image inputs"):
        model(input_ids=ids)


def _right_pad(rows, pad=0):
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def test_mixed_batch_equals_rows_run_alone():
    config = make_config(
        tower="siglip", volume="vit3d", volume_connector={"type": "spatial_pool", "pool_stride": [2, 2, 2]}
    )
    model = make_model(config)
    ni, nv = config.num_image_tokens, config.num_volume_tokens
    images = torch.randn(3, 3, 32, 32)
    volumes = torch.randn(2, 1, 8, 32, 32)
    rows = [
        row([40, 41], tail=6),  # text only
        row([40], (IMG, ni), (IMG, ni)),  # two images
        row([42], (VOL, nv), (IMG, ni)),  # a volume then an image
        row([43], (VOL, nv)),  # a volume
    ]
    per_row_media = [
        {},
        {"pixel_values": images[0:2]},
        {"pixel_values": images[2:3], "volume_values": volumes[0:1]},
        {"volume_values": volumes[1:2]},
    ]
    ids, mask = _right_pad(rows)
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, pixel_values=images, volume_values=volumes).logits
        for i, (r, media) in enumerate(zip(rows, per_row_media)):
            alone = model(input_ids=torch.tensor([r]), **media).logits[0]
            torch.testing.assert_close(batch[i, : len(r)], alone, atol=1e-5, rtol=1e-5)


def test_supervised_only_logits_give_the_full_logits_loss():
    config = make_config()
    model = make_model(config)
    n = config.num_image_tokens
    rows = [row([40, 41], (IMG, n), tail=7), row([44], (IMG, n), tail=3)]
    ids, mask = _right_pad(rows)
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[:, :20] = -100
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels, return_supervised_logits_only=True
        )
        standard = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)
        full = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    reference = F.cross_entropy(full[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, reference, atol=1e-5, rtol=1e-5)
    n_supervised = int((labels[:, 1:] != -100).sum())
    assert out.logits.shape == (n_supervised, VOCAB)
    # the supervised rows are the full logits at the positions that predict a label
    supervised = F.pad(labels[:, 1:], (0, 1), value=-100) != -100
    torch.testing.assert_close(out.logits, full[supervised], atol=1e-5, rtol=1e-5)
    # without the flag: the standard contract, (B, L, vocab) logits with labels too, same loss
    torch.testing.assert_close(standard.logits, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(standard.loss, reference, atol=1e-5, rtol=1e-5)
    # num_items_in_batch (gradient accumulation): sum / given count
    with torch.no_grad():
        out2 = model(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixels,
            labels=labels,
            num_items_in_batch=100,
            return_supervised_logits_only=True,
        )
    torch.testing.assert_close(out2.loss, reference * n_supervised / 100, atol=1e-5, rtol=1e-5)


def test_packed_row_with_position_ids_equals_padded_batch():
    config = make_config()
    model = make_model(config)
    n = config.num_image_tokens
    rows = [row([40, 41], (IMG, n), tail=7), row([44], (IMG, n), tail=3)]
    pixels = torch.randn(2, 3, 32, 32)

    def labels_for(r):
        lab = torch.tensor(r)
        lab[: len(r) - 5] = -100
        return lab

    ids, mask = _right_pad(rows)
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(rows):
        labels[i, : len(r)] = labels_for(r)
    packed_ids = torch.tensor([rows[0] + rows[1]])
    # the first label of every packed sequence is -100, so no position predicts across the boundary
    packed_labels = torch.cat([labels_for(rows[0]), labels_for(rows[1])])[None]
    position_ids = torch.tensor([list(range(len(rows[0]))) + list(range(len(rows[1])))])
    with torch.no_grad():
        padded = model(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels, return_supervised_logits_only=True
        )
        packed = model(
            input_ids=packed_ids,
            position_ids=position_ids,
            pixel_values=pixels,
            labels=packed_labels,
            return_supervised_logits_only=True,
        )
    torch.testing.assert_close(packed.loss, padded.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.logits, padded.logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("volume", [None, "slicewise"])
def test_generate_equals_manual_greedy_loop(volume):
    config = make_config(
        tower="siglip", volume=volume, volume_connector={"type": "attn_pool", "num_queries": 3, "num_heads": 4}
    )
    model = make_model(config)
    media = [(IMG, config.num_image_tokens)] + ([(VOL, config.num_volume_tokens)] if volume else [])
    kwargs = {"pixel_values": torch.randn(1, 3, 32, 32)}
    if volume:
        kwargs["volume_values"] = torch.randn(1, *volume_shape(config))
    ids = torch.tensor([row([40, 41], *media)])
    steps = 6
    with torch.no_grad():
        generated = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            **kwargs,
        )
        manual = ids
        for _ in range(steps):
            logits = model(input_ids=manual, **kwargs).logits  # full recompute, no cache
            manual = torch.cat([manual, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert generated.tolist() == manual.tolist()


def test_tied_word_embeddings_follow_the_text_config():
    tied = make_model(make_config(llm="qwen2"))
    assert tied.config.tie_word_embeddings
    assert tied.get_output_embeddings().weight.data_ptr() == tied.get_input_embeddings().weight.data_ptr()
    untied = make_model(make_config(llm="llama"))
    assert untied.get_output_embeddings().weight.data_ptr() != untied.get_input_embeddings().weight.data_ptr()


def test_cached_encoder_features_give_the_same_logits():
    config = make_config(
        tower="clip", volume="slicewise", volume_connector={"type": "attn_pool", "num_queries": 3, "num_heads": 4}
    )
    model = make_model(config)
    with torch.no_grad():
        model.volume_slice_embedding.normal_()  # exercise the slice embedding (zero at init)
    pixels = torch.randn(2, 3, 32, 32)
    volumes = torch.randn(1, *volume_shape(config))
    ids = torch.tensor(
        [row([40], (IMG, config.num_image_tokens), (VOL, config.num_volume_tokens), (IMG, config.num_image_tokens))]
    )
    with torch.no_grad():
        direct = model(input_ids=ids, pixel_values=pixels, volume_values=volumes).logits
        image_cache, volume_cache = model.encode_images(pixels), model.encode_volumes(volumes)
        cached = model(input_ids=ids, image_encoder_features=image_cache, volume_encoder_features=volume_cache).logits
    assert image_cache.shape == (2, 16, 32)  # CLIP patches without CLS
    assert volume_cache.shape == (1, 4 * 4, 32)  # 4 slices x 2x2 patches, slice-major
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)


def test_config_json_round_trip(tmp_path):
    config = make_config(
        tower="clip",
        volume="slicewise",
        image_feature_layer=[-2, -1],
        volume_connector={"type": "attn_pool", "num_queries": 3, "num_heads": 4},
        slice_position_embedding=False,
    )
    config.volume_config.layer_norm_eps = 1e-5  # equals a Vit3D default: must survive as a SigLIP value
    config.save_pretrained(tmp_path)
    again = MedVLConfig.from_pretrained(tmp_path)
    assert type(again.volume_config).__name__ == "SiglipVisionConfig" and again.volume_encoder == "slicewise"
    for name in ("text_config", "vision_config", "volume_config"):
        assert getattr(again, name).to_dict() == getattr(config, name).to_dict(), name
    assert again.image_connector_config == config.image_connector_config
    assert again.volume_connector_config.num_queries == 3 and again.image_feature_layer == [-2, -1]
    assert (again.num_image_tokens, again.num_volume_tokens, again.slice_position_embedding) == (16, 3, False)
    assert again.image_feature_size() == 64  # two layers concatenated


@pytest.mark.parametrize("llm", ["gemma2", "granite", "cohere"])
def test_supervised_loss_mirrors_scaled_lm_heads(llm):
    config = make_config(llm=llm)
    model = make_model(config)
    ids = torch.tensor([row([40, 41], (IMG, config.num_image_tokens), tail=6)])
    labels = ids.clone()
    labels[:, :-5] = -100
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        loss = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
        full = model(input_ids=ids, pixel_values=pixels).logits  # the LLM's own forward applies its scaling
    torch.testing.assert_close(
        loss, F.cross_entropy(full[0, :-1], labels[0, 1:], ignore_index=-100), atol=1e-5, rtol=1e-5
    )


def test_typed_part_configs_and_connector_dtype():
    cfg = make_config(tower="siglip")
    assert cfg.vision_tower_config is cfg.vision_config
    assert cfg.vision_tower_config.model_type == "siglip_vision_model"
    with pytest.raises(ValueError, match="this model has no volume_config"):
        _ = cfg.volume_encoder_config
    model = make_model(make_config(tower=None, volume="vit3d")).to(torch.bfloat16)
    assert model.volume_connector.input_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="needs volume_values or encoder_features"):
        model.get_volume_features()
