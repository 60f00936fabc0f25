"""Essential FLOPs of the MedM-VL workloads: the work they need, whatever the implementation does.

No padding, the LM head only at supervised positions (training) or the last position (prefill), no
backward through the frozen encoder, the encoder only up to its feature layer. Formulas (h: width,
i: MLP width, T: tokens of a sample, d_q / d_kv: query / key-value widths, L: layers, V: vocabulary,
S: supervised positions)::

    encoder layer (forward)   2 T (4 h^2 + 2 h i) + 4 T^2 h       (q, k, v, o, MLP; QK^T and AV)
    patch embedding           2 P (patch_dim h)                   (P patches, conv/linear)
    connector                 forward 2 W t, backward 2 W t for weights + 2 W' t for inputs
                              (W: its linear weights, W': all but the first layer's, t: media tokens)
    LLM layer (train)         3 [2 T (2 h d_q + 2 h d_kv + 3 h i) + 2 T^2 d_q]   (causal attention:
                              half of 4 T^2 d_q)
    LM head (train)           6 S h V
    decode step (context c)   2 (2 h d_q + 2 h d_kv + 3 h i) L + 4 c d_q L + 2 h V
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

    from medvl.models import MedVLForConditionalGeneration
    from medvl.models.connectors import Connector


def llm_dims(text_config: PreTrainedConfig) -> dict[str, int]:
    """Widths of a Qwen2/Llama-style LLM: h, i, d_q, d_kv, layers, vocab.

    Args:
        text_config: the LLM's config.
    """
    h = text_config.hidden_size
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or h // heads
    kv = getattr(text_config, "num_key_value_heads", None) or heads
    return {
        "h": h,
        "i": text_config.intermediate_size,
        "d_q": heads * head_dim,
        "d_kv": kv * head_dim,
        "layers": text_config.num_hidden_layers,
        "vocab": text_config.vocab_size,
    }


def llm_layer_weights(dims: dict[str, int]) -> int:
    """Matmul weights of one decoder layer (q, k, v, o, gate, up, down).

    Args:
        dims: :func:`llm_dims`' widths.
    """
    h = dims["h"]
    return 2 * h * dims["d_q"] + 2 * h * dims["d_kv"] + 3 * h * dims["i"]


def encoder_forward_flops(
    config: PreTrainedConfig, layers_used: int, tokens: int, patches: int, patch_dim: int
) -> float:
    """Forward FLOPs of a ViT-style encoder on one item, up to ``layers_used`` layers (see module doc).

    Args:
        config: the encoder's config (``hidden_size``, ``intermediate_size``).
        layers_used: blocks run up to the feature layer.
        tokens: sequence length in the blocks (patches + CLS).
        patches: patches embedded.
        patch_dim: values per patch (channels x patch volume).
    """
    h, i = config.hidden_size, config.intermediate_size
    per_layer = 2 * tokens * (4 * h * h + 2 * h * i) + 4 * tokens * tokens * h
    return float(layers_used * per_layer + 2 * patches * patch_dim * h)


def _layers_used(n_layers: int, feature_layer: int | list[int]) -> int:
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    return max(index % (n_layers + 1) for index in layers)


def media_forward_flops(model: MedVLForConditionalGeneration) -> dict[str, float]:
    """Essential forward FLOPs per media item of the model's 2D tower, else its volume encoder.

    Args:
        model: a ``MedVLForConditionalGeneration``.

    Returns:
        ``encoder`` (up to the feature layer), ``connector``, ``connector_weights`` (all its linear
        weights) and ``connector_input_weights`` (its first layer), ``tokens`` (LLM tokens per item).
    """
    from medvl.models.configuration_medvl import prefix_token_count  # loaded with the model already

    cfg = model.config
    connector: Connector | None
    if cfg.vision_config is not None:
        v = cfg.vision_tower_config
        patches = (v.image_size // v.patch_size) ** 2
        tokens = patches + prefix_token_count(v)  # CLS (CLIP), registers (DINOv2); SigLIP has none
        enc = encoder_forward_flops(
            v, _layers_used(v.num_hidden_layers, cfg.image_feature_layer), tokens, patches, 3 * v.patch_size**2
        )
        connector, media_tokens = model.image_connector, cfg.num_image_tokens
    else:
        if cfg.volume_encoder != "vit3d":
            # the formula below reads Vit3D's 3D image/patch sizes; CTViT and slicewise towers lay out differently
            raise ValueError(f"media FLOPs cover a 2D tower or volume_encoder 'vit3d', got {cfg.volume_encoder!r}")
        v = cfg.volume_encoder_config
        grid = [s // p for s, p in zip(v.image_size, v.patch_size)]
        patches = int(np.prod(grid))
        tokens = patches + int(v.use_cls_token)
        enc = encoder_forward_flops(
            v,
            _layers_used(v.num_hidden_layers, cfg.volume_feature_layer),
            tokens,
            patches,
            v.in_channels * int(np.prod(v.patch_size)),
        )
        connector, media_tokens = model.volume_connector, cfg.num_volume_tokens
    if connector is None:  # MedVLForConditionalGeneration builds a connector with each encoder
        raise ValueError("the model has a media encoder but no connector")
    linears = [m for m in connector.modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(m.weight.numel() for m in linears)
    return {
        "encoder": enc,
        "connector": 2.0 * weights * media_tokens,
        "connector_weights": float(weights),
        "connector_input_weights": float(linears[0].weight.numel()),
        "tokens": float(media_tokens),
    }


def train_flops(
    model: MedVLForConditionalGeneration, tokens: Sequence[int], supervised: Sequence[int], media_items: int
) -> dict[str, float]:
    """Essential FLOPs of one training pass over samples of ``tokens`` lengths (see module doc).

    The encoder is frozen (forward only, up to its feature layer); the connector and the LLM train.

    Args:
        model: a ``MedVLForConditionalGeneration``.
        tokens: sample lengths (media placeholders included), no padding.
        supervised: supervised positions per sample.
        media_items: images or volumes of the samples.
    """
    dims = llm_dims(model.config.get_text_config())
    body = llm_layer_weights(dims)
    llm = sum(3 * dims["layers"] * (2 * t * body + 2 * t * t * dims["d_q"]) for t in tokens)
    head = 6.0 * sum(supervised) * dims["h"] * dims["vocab"]
    media = media_forward_flops(model)
    t = media["tokens"] * media_items
    connector = (
        2 * media["connector_weights"] * t * 2 + 2 * (media["connector_weights"] - media["connector_input_weights"]) * t
    )
    out = {"encoder": media["encoder"] * media_items, "connector": connector, "llm": float(llm), "lm_head": head}
    out["total"] = sum(out.values())
    return out


def generate_flops(
    model: MedVLForConditionalGeneration, prompt_lengths: Sequence[int], new_tokens: int
) -> dict[str, float]:
    """Essential FLOPs of greedy decoding: prefill (head at the last position only) + decode steps.

    Args:
        model: a ``MedVLForConditionalGeneration``.
        prompt_lengths: prompt tokens of each prompt (no padding), one media item each.
        new_tokens: tokens generated per prompt (the first comes from the prefill).
    """
    dims = llm_dims(model.config.get_text_config())
    body, layers, d_q = llm_layer_weights(dims), dims["layers"], dims["d_q"]
    head = 2.0 * dims["h"] * dims["vocab"]
    media = media_forward_flops(model)
    prefill = sum(layers * (2 * p * body + 2 * p * p * d_q) + head for p in prompt_lengths)
    prefill += len(prompt_lengths) * (media["encoder"] + media["connector"])
    decode = sum(
        2 * body * layers + 4 * (p + j) * d_q * layers + head for p in prompt_lengths for j in range(1, new_tokens)
    )
    return {"prefill": float(prefill), "decode": float(decode), "total": float(prefill + decode)}


def decode_weight_bytes(model: MedVLForConditionalGeneration) -> float:
    """Bytes of LLM weights (fp32) one decode step reads: every decoder layer's matmul weights and the head.

    Args:
        model: a ``MedVLForConditionalGeneration``.
    """
    text = model.config.get_text_config()
    return 4.0 * (llm_layer_weights(llm_dims(text)) * text.num_hidden_layers + text.hidden_size * text.vocab_size)
