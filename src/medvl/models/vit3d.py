"""A plain 3D Vision Transformer for volumes (N, C, D, H, W).

REMOTE-CODE SAFE: imports only torch/transformers (copied into checkpoints).

The switches of ``Vit3DConfig`` let one parameter layout hold the two public 3D CLIP encoders of
the field:

* MedM-VL's MedM-CLIP-CT (``vision_encoder`` of ``MedMCLIP``; vit-pytorch style): LayerNorm on the
  raw patch vector before and after the patch Linear, a CLS token that has a position embedding,
  post-norm ``nn.TransformerEncoderLayer`` blocks with ReLU, no final norm. Settings:
  ``patch_norm=True, cls_position_embedding=True, norm_first=False, hidden_act="relu",
  qkv_bias=True, final_norm=False``.
* M3D's M3D-CLIP (MONAI ``ViT`` with perceptron patch embedding): pre-norm blocks with GELU,
  qkv without bias, CLS token appended after the position embeddings, final LayerNorm. Settings:
  ``patch_norm=False, cls_position_embedding=False, norm_first=True, hidden_act="gelu",
  qkv_bias=False, final_norm=True, final_norm_in_hidden_states=True`` (M3D-LaMed's select_layer -1
  is the normed output).

Weight names (``Vit3DModel``) and how the two layouts map onto them (for converters):

==========================================  ====================================  ==========================================
medvl ``Vit3DModel``                        MedM-CLIP ``vision_encoder.``         M3D-CLIP (MONAI ViT) ``vision_encoder.``
==========================================  ====================================  ==========================================
embeddings.patch_norm_in.{weight,bias}      to_patch_embedding.1.*  (permute*)    (absent)
embeddings.patch_proj.{weight,bias}         to_patch_embedding.2.*  (permute*)    patch_embedding.patch_embeddings.1.* (perm*)
embeddings.patch_norm_out.{weight,bias}     to_patch_embedding.3.*                (absent)
embeddings.cls_token (1, 1, d)              cls_token                             cls_token
embeddings.position_embedding (1, n(+1), d) pos_embedding (n+1 rows)              patch_embedding.position_embeddings (n)
encoder.layers.i.norm1 / norm2              transformer_layers.i.norm1 / norm2    blocks.i.norm1 / norm2
encoder.layers.i.attn.qkv.{weight,bias}     transformer_layers.i.self_attn.       blocks.i.attn.qkv.weight
                                            in_proj_{weight,bias}
encoder.layers.i.attn.proj                  transformer_layers.i.self_attn.       blocks.i.attn.out_proj
                                            out_proj
encoder.layers.i.mlp.fc1 / fc2              transformer_layers.i.linear1 / 2      blocks.i.mlp.linear1 / linear2
norm                                        (absent)                              norm
==========================================  ====================================  ==========================================

(*) medvl flattens a patch in Conv3d order ``(c, pd, ph, pw)`` (so ``patch_proj.weight`` reshapes
to a Conv3d kernel ``(d, c, pd, ph, pw)``). MedM-CLIP flattens ``(ph, pw, pd, c)``; MONAI
flattens the spatial axes in input order then channels: ``(pd, ph, pw, c)``. A converter permutes
the input axis of the patch Linear (and of MedM-CLIP's pre-LayerNorm) accordingly. Tokens are in
(d, h, w) raster order in all three. The packed qkv rows are [q; k; v] with heads contiguous in
all layouts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput

from .key_mapping import Row, rename_keys
from .stems import ConvStem, validate_stem_widths


class Vit3DConfig(PreTrainedConfig):
    r"""Configuration of ``Vit3DModel``.

    Args:
        image_size: input volume size (D, H, W).
        patch_size: patch size (pd, ph, pw); must divide image_size.
        in_channels: input channels (1 for CT in HU).
        hidden_size / num_hidden_layers / num_attention_heads / intermediate_size: transformer size.
        hidden_act: MLP activation (any ``ACT2FN`` key).
        layer_norm_eps: epsilon of every LayerNorm.
        qkv_bias: bias on the packed q/k/v projection.
        norm_first: pre-norm blocks (True) or post-norm (False, torch's TransformerEncoderLayer default).
        use_cls_token: prepend a learned CLS token.
        cls_position_embedding: the CLS token has its own position embedding row (vit-pytorch) or not (MONAI).
        patch_norm: LayerNorm on the raw patch vector and after the patch projection (vit-pytorch).
        conv_stem: widths of a convolutional stem (``stems.ConvStem``, e.g. [16, 32, 64]) that
            replaces the patch projection; None: patchify + Linear.
        conv_stem_pool: (D, H, W) max-pooling factors at the stem's input (e.g. [2, 1, 1], a
            thin-slab MIP); they divide patch_size. Only with conv_stem.
        final_norm: a final LayerNorm (``last_hidden_state`` is normed).
        final_norm_in_hidden_states: ``hidden_states[-1]`` is the normed output (M3D semantics)
            instead of the last block's raw output (transformers semantics).
        initializer_range: std of the normal init.
    """

    model_type = "medvl_vit3d"

    image_size: list[int] | tuple[int, int, int] = (32, 256, 256)
    patch_size: list[int] | tuple[int, int, int] = (4, 16, 16)
    in_channels: int = 1
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    qkv_bias: bool = True
    norm_first: bool = True
    use_cls_token: bool = True
    cls_position_embedding: bool = True
    patch_norm: bool = False
    conv_stem: list[int] | None = None
    conv_stem_pool: list[int] | None = None
    final_norm: bool = True
    final_norm_in_hidden_states: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.image_size = [int(v) for v in self.image_size]
        self.patch_size = [int(v) for v in self.patch_size]
        if len(self.image_size) != 3 or len(self.patch_size) != 3:
            raise ValueError(
                f"Vit3DConfig: image_size and patch_size need 3 values (D, H, W), got "
                f"{self.image_size} and {self.patch_size}"
            )
        for size, patch in zip(self.image_size, self.patch_size):
            if patch < 1 or size % patch:
                raise ValueError(
                    f"Vit3DConfig: patch_size {self.patch_size} does not divide image_size {self.image_size}"
                )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"Vit3DConfig: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        self.conv_stem = validate_stem_widths(self.conv_stem, "Vit3DConfig: conv_stem")
        if self.conv_stem_pool is not None:
            if not self.conv_stem:
                raise ValueError("Vit3DConfig: conv_stem_pool needs conv_stem")
            self.conv_stem_pool = [int(v) for v in self.conv_stem_pool]
            if len(self.conv_stem_pool) != 3 or any(
                q < 1 or p % q for p, q in zip(self.patch_size, self.conv_stem_pool)
            ):
                raise ValueError(
                    f"Vit3DConfig: conv_stem_pool {self.conv_stem_pool} needs 3 positive factors "
                    f"(D, H, W) that divide patch_size {self.patch_size}"
                )
        if self.conv_stem and self.patch_norm:
            raise ValueError(
                "Vit3DConfig: conv_stem replaces the patch projection; it cannot be combined with patch_norm"
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"Vit3DConfig: invalid hidden_act {self.hidden_act!r}; valid choices: {sorted(ACT2FN)}")

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Patch grid (d, h, w)."""
        (d, h, w), (pd, ph, pw) = self.image_size, self.patch_size  # 3 values each (checked in __post_init__)
        return d // pd, h // ph, w // pw

    @property
    def num_patches(self) -> int:
        """Number of patch tokens."""
        d, h, w = self.grid_size
        return d * h * w


class Vit3DEmbeddings(nn.Module):
    """Patchify (Conv3d flattening order), project, add CLS token and position embeddings."""

    def __init__(self, config: Vit3DConfig):
        super().__init__()
        self.config = config
        pd, ph, pw = config.patch_size
        patch_dim = config.in_channels * pd * ph * pw
        self.patch_norm_in = nn.LayerNorm(patch_dim, eps=config.layer_norm_eps) if config.patch_norm else None
        self.stem = None
        if config.conv_stem:
            self.stem = ConvStem(
                config.in_channels,
                config.hidden_size,
                config.patch_size,
                config.conv_stem,
                dims=3,
                input_pool=config.conv_stem_pool,
            )
        else:
            self.patch_proj = nn.Linear(patch_dim, config.hidden_size)
        self.patch_norm_out = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.patch_norm else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_cls_token else None
        num_positions = config.num_patches + int(config.use_cls_token and config.cls_position_embedding)
        self.position_embedding = nn.Parameter(torch.zeros(1, num_positions, config.hidden_size))

    def _check_shape(self, volumes: torch.Tensor) -> None:
        if (
            volumes.ndim != 5
            or list(volumes.shape[2:]) != list(self.config.image_size)
            or volumes.shape[1] != self.config.in_channels
        ):
            raise ValueError(
                f"Vit3D expects volumes of shape (N, {self.config.in_channels}, "
                f"{', '.join(map(str, self.config.image_size))}), got {tuple(volumes.shape)}"
            )

    def patchify(self, volumes: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) -> (N, num_patches, C*pd*ph*pw), tokens in (d, h, w) raster order."""
        self._check_shape(volumes)
        n, c, d, h, w = volumes.shape
        pd, ph, pw = self.config.patch_size
        x = volumes.reshape(n, c, d // pd, pd, h // ph, ph, w // pw, pw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # n, gd, gh, gw, c, pd, ph, pw
        return x.reshape(n, (d // pd) * (h // ph) * (w // pw), c * pd * ph * pw)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            self._check_shape(volumes)
            # (N, hidden, gd, gh, gw) -> (N, tokens, hidden), tokens in (d, h, w) raster order as patchify
            x = self.stem(volumes.to(self.stem.weight.dtype)).flatten(2).transpose(1, 2)
        else:
            x = self.patchify(volumes.to(self.patch_proj.weight.dtype))
            if self.patch_norm_in is not None:
                x = self.patch_norm_in(x)
            x = self.patch_proj(x)
        if self.patch_norm_out is not None:
            x = self.patch_norm_out(x)
        if self.cls_token is None:
            return x + self.position_embedding
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        if self.config.cls_position_embedding:
            return torch.cat([cls, x], dim=1) + self.position_embedding
        return torch.cat([cls, x + self.position_embedding], dim=1)


class Vit3DAttention(nn.Module):
    """Multi-head self-attention with a packed qkv projection ([q; k; v], heads contiguous)."""

    def __init__(self, config: Vit3DConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Vit3DMLP(nn.Module):
    def __init__(self, config: Vit3DConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Vit3DLayer(GradientCheckpointingLayer):
    """One transformer block, pre-norm or post-norm."""

    def __init__(self, config: Vit3DConfig):
        super().__init__()
        self.norm_first = config.norm_first
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Vit3DAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Vit3DMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class Vit3DEncoder(nn.Module):
    def __init__(self, config: Vit3DConfig):
        super().__init__()
        self.layers = nn.ModuleList([Vit3DLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False


class Vit3DPreTrainedModel(PreTrainedModel):
    config: Vit3DConfig
    config_class = Vit3DConfig
    base_model_prefix = "vit3d"
    main_input_name = "volume_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Vit3DLayer"]
    # Attention always runs through torch's fused scaled_dot_product_attention, so any requested
    # implementation ("eager", "sdpa") is served by it; declaring sdpa lets a composite config that
    # asks for sdpa everywhere build this encoder.
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, Vit3DEmbeddings):
            init.trunc_normal_(module.position_embedding, std=std)
            if module.cls_token is not None:
                init.trunc_normal_(module.cls_token, std=std)


class Vit3DModel(Vit3DPreTrainedModel):
    """3D ViT returning ``last_hidden_state`` and (optionally) every layer's hidden states.

    ``hidden_states`` follows transformers: (embeddings, block 1, ..., block L) — so index -1 is
    the last block's output (raw, unless ``final_norm_in_hidden_states``).
    """

    def __init__(self, config: Vit3DConfig):
        super().__init__(config)
        self.embeddings = Vit3DEmbeddings(config)
        self.encoder = Vit3DEncoder(config)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.final_norm else None
        self.post_init()

    def forward(
        self,
        volume_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = True,
        **kwargs: Any,
    ) -> BaseModelOutput:
        """Encode volumes.

        Args:
            volume_values: (N, C, D, H, W) float tensor.
            output_hidden_states: also return every layer's hidden states.
            return_dict: kept for transformers API compatibility (always a ``BaseModelOutput``).
        """
        x = self.embeddings(volume_values)
        hidden_states = [x] if output_hidden_states else None
        for layer in self.encoder.layers:
            x = layer(x)
            if hidden_states is not None:
                hidden_states.append(x)
        last = self.norm(x) if self.norm is not None else x
        if hidden_states is not None and self.config.final_norm_in_hidden_states:
            hidden_states[-1] = last
        return BaseModelOutput(
            last_hidden_state=last, hidden_states=tuple(hidden_states) if hidden_states is not None else None
        )


# ---------------------------------------------------------------------------- weight layouts
_OUR_PATCH_ORDER = ("c", "pd", "ph", "pw")
MEDMCLIP_PATCH_ORDER = ("ph", "pw", "pd", "c")  # vit-pytorch: '(p1 p2 pf c)'
MONAI_PATCH_ORDER = ("pd", "ph", "pw", "c")  # MONAI perceptron: '(p1 p2 p3 c)' over input axes (D, H, W)


def permute_patch_dim(tensor: torch.Tensor, config: Vit3DConfig, source_order: tuple[str, ...]) -> torch.Tensor:
    """Reorder the last (flattened patch) axis from ``source_order`` to medvl's ``(c, pd, ph, pw)``.

    Args:
        tensor: a patch-Linear weight (d, patch_dim) or a patch LayerNorm vector (patch_dim,).
        config: the target config (patch size and channels).
        source_order: how the source flattens a patch, e.g. ``MEDMCLIP_PATCH_ORDER``.
    """
    pd, ph, pw = config.patch_size
    sizes = {"c": config.in_channels, "pd": pd, "ph": ph, "pw": pw}
    lead = tensor.shape[:-1]
    split = tensor.reshape(*lead, *[sizes[k] for k in source_order])
    order = [len(lead) + source_order.index(k) for k in _OUR_PATCH_ORDER]
    return split.permute(*range(len(lead)), *order).reshape(*lead, -1)


# How each released 3D CLIP's vision encoder names its weights -> Vit3DModel's names (rows for
# key_mapping.rename_keys; the module docstring's table in code). None drops a part that is not the encoder.
VIT3D_KEY_TABLES: dict[str, list[Row]] = {
    "medmclip": [  # vit-pytorch ViT with torch.nn.TransformerEncoderLayer blocks
        (r"to_patch_embedding\.1\.(weight|bias)", r"embeddings.patch_norm_in.\1"),
        (r"to_patch_embedding\.2\.(weight|bias)", r"embeddings.patch_proj.\1"),
        (r"to_patch_embedding\.3\.(weight|bias)", r"embeddings.patch_norm_out.\1"),
        (r"pos_embedding", r"embeddings.position_embedding"),
        (r"cls_token", r"embeddings.cls_token"),
        (r"transformer_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)", r"encoder.layers.\1.attn.qkv.\2"),
        (r"transformer_layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"encoder.layers.\1.attn.proj.\2"),
        (r"transformer_layers\.(\d+)\.linear([12])\.(weight|bias)", r"encoder.layers.\1.mlp.fc\2.\3"),
        (r"transformer_layers\.(\d+)\.(norm[12])\.(weight|bias)", r"encoder.layers.\1.\2.\3"),
        (r"mlp_head\..+", None),  # the CLIP projection head, not part of the encoder
    ],
    "m3dclip": [  # MONAI ViT, perceptron patch embedding
        (r"patch_embedding\.patch_embeddings\.1\.(weight|bias)", r"embeddings.patch_proj.\1"),
        (r"patch_embedding\.position_embeddings", r"embeddings.position_embedding"),
        (r"cls_token", r"embeddings.cls_token"),
        (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.attn.qkv.\2"),
        (r"blocks\.(\d+)\.attn\.out_proj\.(weight|bias)", r"encoder.layers.\1.attn.proj.\2"),
        (r"blocks\.(\d+)\.mlp\.linear([12])\.(weight|bias)", r"encoder.layers.\1.mlp.fc\2.\3"),
        (r"blocks\.(\d+)\.(norm[12])\.(weight|bias)", r"encoder.layers.\1.\2.\3"),
        (r"blocks\.\d+\.norm_cross_attn\..+", None),  # newer MONAI builds an unused cross-attention norm
        (r"norm\.(weight|bias)", r"norm.\1"),
        (r"classification_head\..+", None),
    ],
}
# How each flattens a patch (the input axis of the patch Linear and of MedM-CLIP's pre-LayerNorm).
PATCH_ORDERS: dict[str, tuple[str, ...]] = {"medmclip": MEDMCLIP_PATCH_ORDER, "m3dclip": MONAI_PATCH_ORDER}
_PERMUTED_KEYS = ("embeddings.patch_proj.weight", "embeddings.patch_norm_in.weight", "embeddings.patch_norm_in.bias")


def _vit3d_state_dict(state_dict: dict[str, torch.Tensor], config: Vit3DConfig, kind: str) -> dict[str, torch.Tensor]:
    """Rename by ``VIT3D_KEY_TABLES[kind]`` and permute the patch axis into medvl's order."""
    out, unmapped = rename_keys(state_dict, VIT3D_KEY_TABLES[kind])
    if unmapped:
        raise ValueError(
            f"unexpected {kind} vision encoder weights (no row of VIT3D_KEY_TABLES maps them): {unmapped[:5]}"
        )
    for key in _PERMUTED_KEYS:
        if key in out:
            out[key] = permute_patch_dim(out[key], config, PATCH_ORDERS[kind])
    return out


def vit3d_state_dict_from_medmclip(state_dict: dict[str, torch.Tensor], config: Vit3DConfig) -> dict[str, torch.Tensor]:
    """Map MedM-CLIP's ``vision_encoder.*`` weights (prefix already stripped) onto ``Vit3DModel``.

    Args:
        state_dict: keys like ``to_patch_embedding.2.weight``, ``transformer_layers.0.linear1.weight``.
        config: a config with the MedM-CLIP settings (see the module docstring).
    """
    return _vit3d_state_dict(state_dict, config, "medmclip")


def vit3d_state_dict_from_monai(state_dict: dict[str, torch.Tensor], config: Vit3DConfig) -> dict[str, torch.Tensor]:
    """Map a MONAI ``ViT`` (perceptron patch embedding; M3D-CLIP's vision encoder) onto ``Vit3DModel``.

    Args:
        state_dict: keys like ``patch_embedding.patch_embeddings.1.weight``, ``blocks.0.attn.qkv.weight``.
        config: a config with the M3D/MONAI settings (see the module docstring).
    """
    return _vit3d_state_dict(state_dict, config, "m3dclip")


# ---------------------------------------------------------------------------- released 3D CLIP checkpoints
# ``model_type`` in the config.json of the released encoders -> layout name. MedM-VL's MedM-CLIP
# (``MedMCLIPConfig``) and M3D's M3D-CLIP (``M3DCLIPConfig``) save their whole CLIP model (vision
# encoder under ``vision_encoder.``, a BERT text encoder, projections, logit scale) with
# ``save_pretrained``; only the vision encoder is a medvl volume encoder.
CLIP_MODEL_TYPES: dict[str, str] = {"medm-pretrain": "medmclip", "m3d_clip": "m3dclip"}


def clip_kind(config: dict) -> str | None:
    """``"medmclip"`` / ``"m3dclip"`` for the config.json of a released 3D CLIP checkpoint, else None.

    Args:
        config: the parsed config.json.
    """
    return CLIP_MODEL_TYPES.get(str(config.get("model_type", "")))


def vit3d_config_from_clip(config: dict, kind: str) -> dict:
    """``Vit3DConfig`` keyword arguments (with ``model_type``) for a MedM-CLIP or M3D-CLIP config.json.

    The settings reproduce the encoder as MedM-VL runs it (M3D-CLIP: block outputs without the final
    norm, as MedM-VL reads ``hidden_states_out``).

    Args:
        config: the parsed config.json (MedM-CLIP: ``hidden_size, image_size, image_patch_size,
            frame_size, frame_patch_size, image_num_heads, image_mlp_dim, image_num_layers``; M3D-CLIP:
            ``img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads, pos_embed``).
        kind: "medmclip" or "m3dclip".

    Raises:
        ValueError: an unknown kind, a missing MedM-CLIP field, or an unsupported M3D position embedding.
    """
    if kind == "medmclip":

        def last(
            value: int | list[int] | tuple[int, ...],
        ) -> int:  # MedM-VL's loader rewrites the sizes into [frames, H, W] lists
            return int(value[-1]) if isinstance(value, (list, tuple)) else int(value)

        try:
            return {
                "model_type": "medvl_vit3d",
                "image_size": [int(config["frame_size"]), last(config["image_size"]), last(config["image_size"])],
                "patch_size": [
                    int(config["frame_patch_size"]),
                    last(config["image_patch_size"]),
                    last(config["image_patch_size"]),
                ],
                "in_channels": 1,
                "hidden_size": int(config["hidden_size"]),
                "num_hidden_layers": int(config["image_num_layers"]),
                "num_attention_heads": int(config["image_num_heads"]),
                "intermediate_size": int(config["image_mlp_dim"]),
                # vit-pytorch patch embedding + torch.nn.TransformerEncoderLayer defaults (post-norm, ReLU, eps 1e-5)
                "hidden_act": "relu",
                "layer_norm_eps": 1e-5,
                "qkv_bias": True,
                "norm_first": False,
                "use_cls_token": True,
                "cls_position_embedding": True,
                "patch_norm": True,
                "final_norm": False,
                "final_norm_in_hidden_states": False,
            }
        except KeyError as err:
            raise ValueError(f"MedM-CLIP config lacks field {err}") from None
    if kind == "m3dclip":
        if config.get("pos_embed", "perceptron") != "perceptron":
            raise ValueError(
                f"M3D-CLIP pos_embed={config.get('pos_embed')!r} is not supported; valid choices: 'perceptron'"
            )
        return {
            "model_type": "medvl_vit3d",
            "image_size": [int(v) for v in config.get("img_size", (32, 256, 256))],
            "patch_size": [int(v) for v in config.get("patch_size", (4, 16, 16))],
            "in_channels": int(config.get("in_channels", 1)),
            "hidden_size": int(config.get("hidden_size", 768)),
            "num_hidden_layers": int(config.get("num_layers", 12)),
            "num_attention_heads": int(config.get("num_heads", 12)),
            "intermediate_size": int(config.get("mlp_dim", 3072)),
            # MONAI ViT: pre-norm TransformerBlock, exact GELU, qkv without bias, CLS appended after the
            # position embedding, final norm that MedM-VL does NOT apply (it reads hidden_states_out).
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
            "qkv_bias": False,
            "norm_first": True,
            "use_cls_token": True,
            "cls_position_embedding": False,
            "patch_norm": False,
            "final_norm": True,
            "final_norm_in_hidden_states": False,
        }
    raise ValueError(
        f"unknown 3D CLIP layout {kind!r}; valid choices: {', '.join(sorted(set(CLIP_MODEL_TYPES.values())))}"
    )


# MedM-CLIP's own intensity normalisation (MedM-VL's Image3DProcessor): (v - mean) / std, then a crop of
# the voxels above the mean (MONAI CropForeground).
MEDMCLIP_MEAN = 55.6982188356434
MEDMCLIP_STD = 66.1943479570918


def clip_volume_processor_settings(kind: str, shape: list[int]) -> dict[str, Any]:
    """``MedVLVolumeProcessor`` intensity and shape settings of a MedM-CLIP / M3D-CLIP encoder's input.

    * MedM-CLIP: raw values normalised with MedM-CLIP's mean/std, crop of the voxels above the mean,
      resize to the encoder's input size (MedM-VL's ``(v - 55.70) / 66.19`` + ``CropForeground``).
    * M3D-CLIP: M3D's inputs are already preprocessed arrays in 0..1 of the input size; passed through.

    Orientation is left to the caller.

    Args:
        kind: "medmclip" or "m3dclip".
        shape: the encoder's input size (D, H, W).
    """
    common: dict[str, Any] = {"target_shape": list(shape), "antialias": False, "intensity": "none", "channels": 1}
    if kind == "medmclip":
        return {
            **common,
            "crop_foreground": True,
            "foreground_hu": MEDMCLIP_MEAN,
            "image_mean": [MEDMCLIP_MEAN],
            "image_std": [MEDMCLIP_STD],
        }
    if kind == "m3dclip":
        return {**common, "crop_foreground": False}
    raise ValueError(
        f"unknown 3D CLIP layout {kind!r}; valid choices: {', '.join(sorted(set(CLIP_MODEL_TYPES.values())))}"
    )


def vit3d_state_dict_from_clip(
    state_dict: dict[str, torch.Tensor], kind: str, config: Vit3DConfig
) -> dict[str, torch.Tensor]:
    """The ``Vit3DModel`` weights inside a MedM-CLIP / M3D-CLIP state dict.

    Keeps the vision encoder (``vision_encoder.`` prefix optional) and drops the rest (text encoder,
    projections, logit scale, classifier heads); checks that every encoder weight is there.

    Args:
        state_dict: the whole CLIP model's weights, or its vision encoder's with the prefix stripped.
        kind: "medmclip" or "m3dclip".
        config: the target config (patch size and channels for the patch permutation).

    Raises:
        ValueError: an unknown kind, encoder weights missing, or weights no row of the kind's key table maps.
    """
    if kind not in VIT3D_KEY_TABLES:
        raise ValueError(f"unknown 3D CLIP layout {kind!r}; valid choices: {', '.join(VIT3D_KEY_TABLES)}")
    prefix = "vision_encoder."
    if any(k.startswith(prefix) for k in state_dict):  # a whole CLIP: keep its vision encoder
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    out = _vit3d_state_dict(state_dict, config, kind)
    with torch.device("meta"):
        expected = set(Vit3DModel(config).state_dict())
    missing = sorted(expected - set(out))
    if missing:
        raise ValueError(f"{kind} vision encoder weights missing from the checkpoint: {missing[:5]}")
    return out


__all__ = [
    "CLIP_MODEL_TYPES",
    "PATCH_ORDERS",
    "VIT3D_KEY_TABLES",
    "MEDMCLIP_MEAN",
    "MEDMCLIP_STD",
    "Vit3DConfig",
    "Vit3DModel",
    "Vit3DPreTrainedModel",
    "clip_kind",
    "clip_volume_processor_settings",
    "permute_patch_dim",
    "vit3d_config_from_clip",
    "vit3d_state_dict_from_clip",
    "vit3d_state_dict_from_medmclip",
    "vit3d_state_dict_from_monai",
]
