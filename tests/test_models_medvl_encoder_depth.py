"""Encoders run only as deep as the feature layer needs, without autograd when frozen
(``modeling_medvl.run_encoder``): the features are bit-identical to those of the full tower, the
skipped blocks never run, and a training encoder still gets gradients."""

from __future__ import annotations

import pytest
import torch

from medvl.build import LLMSpec, ModelSpec, TokenizerSpec, VisionSpec, VolumeSpec, build_model
from medvl.models.modeling_medvl import _layer_list, select_features

LLM = {
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def _model(vision: VisionSpec | None = None, volume: VolumeSpec | None = None):
    spec = ModelSpec(
        llm=LLMSpec(config=LLM), vision=vision, volume=volume, tokenizer=TokenizerSpec(source="train", vocab_size=300)
    )
    return build_model(spec)[0]


def _calls(module: torch.nn.Module) -> list[int]:
    count = [0]
    module.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


@pytest.mark.parametrize(
    "model_type,feature_layer",
    [
        ("clip_vision_model", -2),
        ("siglip_vision_model", 2),
        ("clip_vision_model", [-3, -2]),
    ],
)
def test_2d_features_equal_the_full_towers_and_later_blocks_do_not_run(model_type, feature_layer):
    tower = {
        "model_type": model_type,
        "image_size": 32,
        "patch_size": 16,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
    }
    model = _model(vision=VisionSpec(config=tower, feature_layer=feature_layer))
    parent, attr = _layer_list(model.vision_tower, 4)
    layers = getattr(parent, attr)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model.vision_tower(pixels, output_hidden_states=True).hidden_states
    assert len(full) == 5  # embeddings + 4 blocks
    expected = select_features(full, feature_layer, "patch", 1 if "clip" in model_type else 0)
    last = _calls(layers[3])
    model.vision_tower.requires_grad_(False)  # frozen, as apply_parts leaves it
    got = model.encode_images(pixels)
    assert torch.equal(got, expected)
    assert last[0] == 0  # block 4 is never needed for layers <= 3
    assert getattr(parent, attr) is layers and len(layers) == 4  # the block list is restored
    assert got.grad_fn is None  # frozen tower: no autograd graph


def test_a_training_tower_still_gets_gradients():
    tower = {
        "model_type": "clip_vision_model",
        "image_size": 32,
        "patch_size": 16,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
    }
    model = _model(vision=VisionSpec(config=tower, feature_layer=-2))
    model.train()
    model.vision_tower.requires_grad_(True)
    pixels = torch.randn(2, 3, 32, 32)
    model.encode_images(pixels).sum().backward()
    grads = {n for n, p in model.vision_tower.named_parameters() if p.grad is not None}
    assert any("layers.1." in n for n in grads) and not any("layers.2." in n for n in grads)
    model.vision_tower.requires_grad_(False)
    assert model.encode_images(pixels).grad_fn is None


@pytest.mark.parametrize("final_norm_in_hidden_states", [False, True])
def test_vit3d_features_equal_the_full_encoders(final_norm_in_hidden_states):
    config = {
        "image_size": [8, 32, 32],
        "patch_size": [4, 16, 16],
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "final_norm_in_hidden_states": final_norm_in_hidden_states,
    }
    model = _model(volume=VolumeSpec(config=config, feature_layer=-2))
    volumes = torch.randn(2, 1, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.volume_encoder(volumes, output_hidden_states=True).hidden_states
    expected = select_features(full, -2, "patch", 1)
    last = _calls(model.volume_encoder.encoder.layers[2])
    assert torch.equal(model.encode_volumes(volumes), expected)
    # with M3D semantics (hidden_states[-1] normed) the encoder runs in full; otherwise block 3 is skipped
    assert last[0] == (1 if final_norm_in_hidden_states else 0)


@pytest.mark.parametrize("feature_layer", [0, -2])
def test_a_shortened_first_call_leaves_full_runs_intact(feature_layer):
    """transformers installs its hidden-state hooks at a model's first forward: a first call made
    while shortened must not leave later full runs without the deeper blocks' states."""
    tower = {
        "model_type": "siglip_vision_model",
        "image_size": 32,
        "patch_size": 16,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
    }
    model = _model(vision=VisionSpec(config=tower, feature_layer=feature_layer))
    model.vision_tower.requires_grad_(False)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    got = model.encode_images(pixels)  # the tower's very first forward
    with torch.no_grad():
        full = model.vision_tower(pixels, output_hidden_states=True).hidden_states
    assert len(full) == 5
    assert torch.equal(got, select_features(full, feature_layer, "patch", 0))
