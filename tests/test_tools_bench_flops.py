"""Essential FLOPs of the workloads (``medvl.tools.bench.flops``) equal the hand formula on a real model,
with the weights counted from its modules."""

from __future__ import annotations

import pytest
import torch

from medvl.tools.bench.flops import generate_flops, media_forward_flops, train_flops
from medvl.tools.bench.workload_spec import WorkloadSizes, build_workload_model


def _linear_weights(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def test_workload_flops_equal_the_hand_formula():

    sizes = WorkloadSizes.quick()
    model, _ = build_workload_model(sizes, "2d")
    text, vis = model.config.text_config, model.config.vision_config
    layers = model.language_model.model.layers
    per_layer = _linear_weights(layers[0])  # q, k, v, o, gate, up, down, counted from the modules
    head = model.language_model.lm_head.weight.numel()
    d_q = text.num_attention_heads * (text.hidden_size // text.num_attention_heads)
    tokens, supervised = [40, 45], [5, 6]
    llm = sum(3 * len(layers) * (2 * t * per_layer + 2 * t * t * d_q) for t in tokens)
    # CLIP 32 px / patch 16: 4 patches + CLS; feature layer -2 of 3 blocks: 2 blocks run, forward only
    tower_layers = [m for m in model.vision_tower.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == 3][0]
    enc_tokens, h = 5, vis.hidden_size
    conv = [m for m in model.vision_tower.modules() if isinstance(m, torch.nn.Conv2d)][0].weight.numel()
    encoder = 2 * (2 * enc_tokens * _linear_weights(tower_layers[0]) + 4 * enc_tokens**2 * h) + 2 * 4 * conv
    w_conn = _linear_weights(model.image_connector)
    w_first = model.image_connector.mlp[0].weight.numel()
    t = 4 * 2  # 4 image tokens x 2 images
    connector = 2 * w_conn * t + 2 * w_conn * t + 2 * (w_conn - w_first) * t
    got = train_flops(model, tokens, supervised, media_items=2)
    assert got["llm"] == llm and got["lm_head"] == 6 * 11 * head
    assert got["encoder"] == pytest.approx(2 * encoder) and got["connector"] == connector
    assert got["total"] == pytest.approx(llm + 6 * 11 * head + 2 * encoder + connector)

    prompts, n = [30, 33], 3
    gen = generate_flops(model, prompts, n)
    prefill = sum(len(layers) * (2 * p * per_layer + 2 * p * p * d_q) + 2 * head for p in prompts)
    prefill += 2 * (encoder + 2 * w_conn * 4)
    # n - 1 decode steps per prompt; step j attends to p + j positions
    decode = sum(
        2 * per_layer * len(layers) + 4 * (p + j) * d_q * len(layers) + 2 * head for p in prompts for j in (1, 2)
    )
    assert gen["prefill"] == pytest.approx(prefill) and gen["decode"] == decode


def test_volume_media_flops_equal_the_hand_formula_and_other_volume_encoders_are_refused():
    sizes = WorkloadSizes.quick()
    model, _ = build_workload_model(sizes, "3d")
    # Vit3D 8x32x32 / patch 4x16x16: 2x2x2 = 8 patches + CLS; feature layer -1 of 2 blocks: both run
    blocks = model.volume_encoder.encoder.layers
    h, tokens, patches = model.config.volume_encoder_config.hidden_size, 9, 8
    embed = model.volume_encoder.embeddings.patch_proj.weight.numel()  # 1 x 4 x 16 x 16 values -> h
    encoder = len(blocks) * (2 * tokens * _linear_weights(blocks[0]) + 4 * tokens**2 * h) + 2 * patches * embed
    w_conn = _linear_weights(model.volume_connector)
    got = media_forward_flops(model)
    assert got["encoder"] == encoder and got["tokens"] == model.config.num_volume_tokens
    assert got["connector"] == 2 * w_conn * model.config.num_volume_tokens

    from medvl.build import LLMSpec, ModelSpec, TokenizerSpec, VolumeSpec, build_model

    slicewise, _ = build_model(
        ModelSpec(
            llm=LLMSpec(config=dict(sizes.llm)),
            volume=VolumeSpec(encoder="slicewise", config=dict(sizes.vision), num_slices=4),
            tokenizer=TokenizerSpec(source="train", vocab_size=sizes.tokenizer_vocab),
        )
    )
    with pytest.raises(ValueError, match="'slicewise'"):
        media_forward_flops(slicewise)
