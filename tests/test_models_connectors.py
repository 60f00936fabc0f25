"""Connectors: output token counts and the pooling / attention semantics against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medvl.models import ConnectorConfig, build_connector


def test_spatial_pool_averages_grid_blocks_in_raster_order():
    config = ConnectorConfig(type="spatial_pool", depth=1, pool_stride=(1, 2, 2))
    grid = (2, 4, 6)
    connector = build_connector(config, 3, 3, grid)
    with torch.no_grad():  # identity projection, to look at the pooling alone
        connector.mlp[0].weight.copy_(torch.eye(3))
        connector.mlp[0].bias.zero_()
    features = torch.randn(1, 2 * 4 * 6, 3)
    out = connector(features)
    assert out.shape == (1, config.num_output_tokens(48, grid), 3) == (1, 12, 3)
    cube = features.reshape(2, 4, 6, 3)
    expected = [
        cube[d, 2 * h : 2 * h + 2, 2 * w : 2 * w + 2].mean((0, 1)) for d in range(2) for h in range(2) for w in range(3)
    ]
    torch.testing.assert_close(out[0], torch.stack(expected), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="does not divide"):
        ConnectorConfig(type="spatial_pool", pool_stride=(2, 2, 2)).num_output_tokens(48, (3, 4, 6))


def test_spatial_max_pool_keeps_each_blocks_maximum():
    config = ConnectorConfig(type="spatial_pool", depth=1, pool_stride=(1, 2, 2), pool="max")
    grid = (1, 4, 4)
    connector = build_connector(config, 3, 3, grid)
    with torch.no_grad():
        connector.mlp[0].weight.copy_(torch.eye(3))
        connector.mlp[0].bias.zero_()
    features = torch.randn(2, 16, 3)
    cube = features.reshape(2, 4, 4, 3)
    expected = torch.stack(
        [cube[:, 2 * h : 2 * h + 2, 2 * w : 2 * w + 2].amax((1, 2)) for h in range(2) for w in range(2)], 1
    )
    torch.testing.assert_close(connector(features), expected)
    with pytest.raises(ValueError, match="valid choices: 'avg', 'max'|valid choices: avg, max"):
        ConnectorConfig(type="spatial_pool", pool="median")


def test_attn_pool_is_learned_queries_cross_attention_then_mlp():
    config = ConnectorConfig(type="attn_pool", num_queries=5, num_heads=2, depth=2, layer_norm=False)
    connector = build_connector(config, 8, 6)
    nn.init.normal_(connector.query)
    features = torch.randn(3, 11, 8)
    reference = nn.MultiheadAttention(8, 2, batch_first=True)
    reference.load_state_dict(connector.attn.state_dict())
    pooled, _ = reference(connector.query.expand(3, -1, -1), features, features)
    expected = connector.mlp[2](nn.functional.gelu(connector.mlp[0](pooled)))
    torch.testing.assert_close(connector(features), expected, atol=1e-6, rtol=1e-6)
    assert ConnectorConfig(type="attn_pool").layer_norm is True  # normalised by default
    assert ConnectorConfig(type="mlp").layer_norm is False


def test_mlp_depth_and_activation_are_fields():
    connector = build_connector(ConnectorConfig(type="mlp", depth=3, activation="relu"), 4, 7)
    kinds = [type(m).__name__ for m in connector.mlp]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert connector(torch.randn(2, 9, 4)).shape == (2, 9, 7)
    with pytest.raises(ValueError, match="connector activation: invalid choice 'gelu2'; valid choices"):
        ConnectorConfig(activation="gelu2")
    with pytest.raises(ValueError, match="depth must be >= 1"):
        ConnectorConfig(depth=0)
