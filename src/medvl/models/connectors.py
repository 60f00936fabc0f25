"""Connectors: encoder features (N, T, d_enc) -> LLM embeddings (N, T', d_llm).

REMOTE-CODE SAFE: imports only torch/transformers and siblings (copied into checkpoints).

Every connector is a small ``nn.Module`` whose output token count is known in advance
(``ConnectorConfig.num_output_tokens``), so the processor can emit exactly that many placeholders.
Weight names: ``mlp.0`` / ``mlp.2`` / ... are the Linear layers of the MLP (odd indices are the
activation), as in LLaVA's / MedM-VL's ``mlp2x_gelu`` Sequential; attn_pool adds ``query``
(n_q, d_enc) and ``attn`` (``torch.nn.MultiheadAttention``: ``in_proj_weight`` rows [q; k; v],
``out_proj``), as MedM-VL's ``attn_pooling``.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .configuration_medvl import ConnectorConfig


def _mlp(config: ConnectorConfig, in_dim: int, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(1, config.depth):
        layers += [ACT2FN[config.activation], nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class Connector(nn.Module):
    """What every connector has: an MLP ``mlp`` whose first Linear layer sets the input dtype."""

    mlp: nn.Sequential

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype the features must have on entry (that of the connector's weights)."""
        return cast(nn.Linear, self.mlp[0]).weight.dtype


class MLPConnector(Connector):
    """Token-wise MLP (LLaVA-1.5's projector)."""

    def __init__(self, config: ConnectorConfig, in_dim: int, out_dim: int, grid: tuple[int, int, int] | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim) if config.layer_norm else None
        self.mlp = _mlp(config, in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            features = self.norm(features)
        return self.mlp(features)


class SpatialPoolConnector(Connector):
    """Average- (MedM-VL spatial_pooling) or max-pool the (d, h, w) patch grid with ``pool_stride``, then an MLP."""

    def __init__(self, config: ConnectorConfig, in_dim: int, out_dim: int, grid: tuple[int, int, int] | None = None):
        super().__init__()
        if grid is None:
            raise ValueError("spatial_pool connector needs a patch grid (feature select 'patch')")
        self.grid = tuple(grid)
        self.stride = tuple(config.pool_stride)
        self.pool = F.avg_pool3d if config.pool == "avg" else F.max_pool3d
        self.norm = nn.LayerNorm(in_dim) if config.layer_norm else None
        self.mlp = _mlp(config, in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, t, dim = features.shape
        d, h, w = self.grid
        if t != d * h * w:
            raise ValueError(f"spatial_pool expected {d}x{h}x{w}={d * h * w} tokens per item, got {t}")
        cube = features.transpose(1, 2).reshape(n, dim, d, h, w)
        pooled = self.pool(cube, kernel_size=self.stride, stride=self.stride)
        pooled = pooled.flatten(2).transpose(1, 2)  # (n, d'h'w', dim), raster order
        if self.norm is not None:
            pooled = self.norm(pooled)
        return self.mlp(pooled)


class AttnPoolConnector(Connector):
    """``num_queries`` learned queries cross-attend to all tokens, then an MLP (MedM-VL attn_pooling).

    With ``layer_norm`` the keys/values and the queries are LayerNorm-ed first (pre-norm), which
    keeps the attention logits in range whatever the encoder's feature scale.
    """

    def __init__(self, config: ConnectorConfig, in_dim: int, out_dim: int, grid: tuple[int, int, int] | None = None):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(config.num_queries, in_dim))
        self.norm_kv = nn.LayerNorm(in_dim) if config.layer_norm else None
        self.norm_q = nn.LayerNorm(in_dim) if config.layer_norm else None
        self.attn = nn.MultiheadAttention(embed_dim=in_dim, num_heads=config.num_heads, batch_first=True)
        self.mlp = _mlp(config, in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        query = self.query.unsqueeze(0).expand(features.shape[0], -1, -1)
        if self.norm_kv is not None and self.norm_q is not None:  # both or neither (config.layer_norm)
            features = self.norm_kv(features)
            query = self.norm_q(query)
        pooled, _ = self.attn(query, features, features, need_weights=False)
        return self.mlp(pooled)


CONNECTOR_CLASSES: dict[str, type[Connector]] = {
    "mlp": MLPConnector,
    "spatial_pool": SpatialPoolConnector,
    "attn_pool": AttnPoolConnector,
}


def build_connector(
    config: ConnectorConfig, in_dim: int, out_dim: int, grid: tuple[int, int, int] | None = None
) -> Connector:
    """Instantiate the connector named by ``config.type``.

    Args:
        config: the connector settings.
        in_dim: encoder feature width (hidden size x number of feature layers).
        out_dim: LLM hidden size.
        grid: (d, h, w) patch grid of the incoming tokens (needed by spatial_pool).
    """
    try:
        cls = CONNECTOR_CLASSES[config.type]
    except KeyError:
        raise ValueError(
            f"invalid connector type {config.type!r}; valid choices: {', '.join(map(repr, CONNECTOR_CLASSES))}"
        ) from None
    return cls(config, in_dim, out_dim, grid)


__all__ = [
    "Connector",
    "MLPConnector",
    "SpatialPoolConnector",
    "AttnPoolConnector",
    "build_connector",
    "CONNECTOR_CLASSES",
]
