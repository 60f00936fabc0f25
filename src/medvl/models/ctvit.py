"""CTViT, the 3D vision encoder of CT-CLIP (Hamamci et al.), re-implemented natively.

REMOTE-CODE SAFE: imports only torch/transformers (copied into checkpoints).

CT-CLIP (github.com/ibrahimethemhamamci/CT-CLIP, package ``transformer_maskgit``, class ``CTViT``)
encodes a chest CT as a (t, h, w) grid of tokens with factorised attention: a spatial transformer
over the h*w patches of every slab, then a temporal transformer over the t slabs of every patch
position, then a cosine-similarity VQ codebook. This module reproduces its encoder path
(``forward(video, return_encoded_tokens=True)``) to float32 rounding, without einops,
vector-quantize-pytorch or the CUDA device names hard-coded in the original, and keeps its
state-dict keys one for one, so the released ``visual_transformer`` weights load unchanged
(``CTViTModel.load_state_dict(ctclip_state_dict)``; a full CT-CLIP checkpoint first goes through
``ctvit_state_dict_from_ctclip`` to drop the ``visual_transformer.`` prefix and the text tower).

What the original does, quirks included (all reproduced; the test fixture checks each one):

1. The whole volume (N, C, T, H, W) is patched at once into (pt, p, p) blocks flattened in the order
   (c, pt, p1, p2); the first-frame path of the class is commented out in its forward, so
   ``to_patch_emb_first_frame`` (and the decoder's ``to_pixels*``) are loaded but unused.
2. Embedding: LayerNorm -> Linear -> LayerNorm.
3. Transformer layers: ``x = PEG(x) + x; x = Attn(x) + x; x = FF(x) + x`` then a LayerNorm with a
   fixed zero-bias buffer (``norm_out.gamma`` / ``norm_out.beta``).
   * PEG: depthwise Conv3d (3x3x3) over the (t, h, w) grid, padded by 1 on h and w and causally on
     t (2 zero slabs before, none after). The temporal transformer hands it the (N*h*w, t, d) tensor
     reshaped to (N, t, h, w, d) *without a permute*, i.e. on a scrambled grid; kept as is.
   * Attention: q from the LayerNormed input, but k and v from the *un-normalised* input (the
     original takes the key/value input before it normalises x); q and k L2-normalised per head and
     multiplied by the learned ``q_scale`` / ``k_scale``; logits scaled by a fixed 8; the spatial
     stage adds a continuous relative-position bias (an MLP on sign(d)*log(|d|+1) of the 2-D offsets).
     ``context_norm`` and the empty ``null_kv`` exist only as weights.
   * Feed-forward: LayerNorm -> Linear(d, 2*inner) -> x * GELU(gate) -> Linear(inner, d), with
     inner = int(4 * 2/3 * d) (1365 for d = 512), no biases.
4. VQ: for every token the codebook row with the highest cosine similarity is chosen and the
   *stored, un-normalised* row is the output token. The codebook is a buffer (the original's VQ
   moves it by EMA in training mode, never through gradients); here it stays frozen. When
   gradients flow, the output carries a straight-through gradient to the pre-quantisation tokens.

Weight names (identical to CT-CLIP's ``CTViT.state_dict()``)::

    spatial_rel_pos_bias.net.{0.0,1.0,2}.{weight,bias}       position-bias MLP
    to_patch_emb.{1,3}.{weight,bias}  (LayerNorm)  to_patch_emb.2.{weight,bias}  (Linear)
    to_patch_emb_first_frame.{1,2,3}.*                         unused
    enc_{spatial,temporal}_transformer.layers.i.0.dsconv.{weight,bias}          PEG
    enc_{spatial,temporal}_transformer.layers.i.1.{to_q,to_kv,to_out}.weight   attention
        ...layers.i.1.{q_scale,k_scale,null_kv,norm.gamma,norm.beta,context_norm.gamma,context_norm.beta}
    enc_{spatial,temporal}_transformer.layers.i.3.{0.weight,0.bias,1.weight,4.weight}   feed-forward
    enc_{spatial,temporal}_transformer.norm_out.{gamma,beta}
    vq._codebook.{embed,cluster_size,initted}                 (embed: (1, codebook_size, dim))
    to_pixels.0.*, to_pixels_first_frame.0.*                   decoder heads, unused
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

# CTViT constructor arguments of the released CT-CLIP (scripts/run_train.py and run_zero_shot.py of
# CT-CLIP at commit a2a155c), used when a weights folder has no config.json.
CTCLIP_RELEASED_KWARGS: dict[str, int] = {
    "dim": 512,
    "codebook_size": 8192,
    "image_size": 480,
    "patch_size": 20,
    "temporal_patch_size": 10,
    "spatial_depth": 4,
    "temporal_depth": 4,
    "dim_head": 32,
    "heads": 8,
}
# CTViT constructor arguments that only concern the autoencoder's GAN training (discriminator,
# VGG loss): accepted in a config.json and ignored, since the encoder has no such parts.
CTCLIP_TRAINING_ONLY_KWARGS = ("discr_base_dim", "use_vgg_and_gan", "vgg", "discr_attn_res_layers", "use_hinge_loss")
# CTViT's required constructor arguments (keyword-only without a default).
CTCLIP_REQUIRED_KWARGS = (
    "dim",
    "codebook_size",
    "image_size",
    "patch_size",
    "temporal_patch_size",
    "spatial_depth",
    "temporal_depth",
)
# The default depth of a CT-RATE volume after CT-CLIP's preprocessing (480 x 480 x 240).
CTCLIP_NUM_FRAMES = 240


def _pair(value: int | list[int] | tuple[int, int], name: str) -> list[int]:
    values = [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"CTViTConfig: {name} must be a positive int or (height, width), got {value!r}")
    return values


class CTViTConfig(PreTrainedConfig):
    r"""Configuration of ``CTViTModel``; the field names are CTViT's constructor arguments.

    Args:
        dim: token width (512 in CT-CLIP).
        codebook_size: rows of the VQ codebook.
        image_size: in-plane size H = W of the input (int or (H, W)).
        patch_size: in-plane patch size (int or (ph, pw)).
        temporal_patch_size: slices per patch along the slice ("time") axis.
        spatial_depth / temporal_depth: layers of the spatial / temporal transformer.
        dim_head / heads: attention head width and count (CTViT's class defaults: 64 and 8).
        channels: input channels (1 for CT).
        attn_dropout / ff_dropout: dropout in attention / feed-forward (0 in CT-CLIP).
        num_frames: slices T of every input volume (240 for CT-CLIP's 480x480x240 volumes); CTViT
            itself accepts any multiple of temporal_patch_size, but a LLaVA model's token count
            derives from this value.
        initializer_range: std of the random init (only used for models trained from scratch).
    """

    model_type = "medvl_ctvit"
    attribute_map = {"hidden_size": "dim", "num_attention_heads": "heads"}

    dim: int = 512
    codebook_size: int = 8192
    image_size: int | list[int] = 480
    patch_size: int | list[int] = 20
    temporal_patch_size: int = 10
    spatial_depth: int = 4
    temporal_depth: int = 4
    dim_head: int = 32
    heads: int = 8
    channels: int = 1
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    num_frames: int = CTCLIP_NUM_FRAMES
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.image_size = _pair(self.image_size, "image_size")
        self.patch_size = _pair(self.patch_size, "patch_size")
        for size, patch in zip(self.image_size, self.patch_size):
            if size % patch:
                raise ValueError(
                    f"CTViTConfig: patch_size {self.patch_size} does not divide image_size {self.image_size}"
                )
        if self.temporal_patch_size < 1 or self.num_frames % self.temporal_patch_size:
            raise ValueError(
                f"CTViTConfig: temporal_patch_size {self.temporal_patch_size} does not divide "
                f"num_frames {self.num_frames}"
            )
        for name in ("dim", "codebook_size", "spatial_depth", "temporal_depth", "dim_head", "heads", "channels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CTViTConfig: {name} must be >= 1, got {getattr(self, name)!r}")

    @classmethod
    def from_ctclip_kwargs(cls, kwargs: dict, num_frames: int = CTCLIP_NUM_FRAMES) -> CTViTConfig:
        """Build from CTViT's constructor arguments (CT-CLIP's names, e.g. a ``config.json`` beside the weights).

        Missing optional arguments take CTViT's class defaults (``dim_head=64``, ``heads=8``, ...), as
        the original constructor would; the GAN-only arguments are ignored.

        Args:
            kwargs: the constructor arguments.
            num_frames: input slices T (not a CTViT argument; 240 for CT-CLIP's volumes).

        Raises:
            ValueError: a required argument is missing, or an argument is unknown (the message lists the valid ones).
        """
        kwargs = {k: v for k, v in kwargs.items() if k not in CTCLIP_TRAINING_ONLY_KWARGS}
        missing = [k for k in CTCLIP_REQUIRED_KWARGS if k not in kwargs]
        if missing:
            raise ValueError(
                f"CTViT constructor arguments lack {missing} (required: {', '.join(CTCLIP_REQUIRED_KWARGS)})"
            )
        valid = (*CTCLIP_REQUIRED_KWARGS, "dim_head", "heads", "channels", "attn_dropout", "ff_dropout", "num_frames")
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown CTViT constructor argument(s) {unknown}; valid: {', '.join(valid)} "
                f"(ignored: {', '.join(CTCLIP_TRAINING_ONLY_KWARGS)})"
            )
        settings = {"dim_head": 64, "heads": 8, "channels": 1, "num_frames": num_frames, **kwargs}
        return cls(**settings)

    # image_size / patch_size are stored as [h, w] lists (config.json); an int is accepted on input.
    @property
    def image_hw(self) -> tuple[int, int]:
        """In-plane input size (H, W)."""
        height, width = _pair(self.image_size, "image_size")
        return height, width

    @property
    def patch_hw(self) -> tuple[int, int]:
        """In-plane patch size (ph, pw)."""
        height, width = _pair(self.patch_size, "patch_size")
        return height, width

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Token grid (t, h, w) of one volume."""
        (height, width), (patch_h, patch_w) = self.image_hw, self.patch_hw
        return (self.num_frames // self.temporal_patch_size, height // patch_h, width // patch_w)

    @property
    def num_patches(self) -> int:
        """Tokens of one volume: t * h * w."""
        t, h, w = self.grid_size
        return t * h * w

    @property
    def ff_inner_dim(self) -> int:
        """Feed-forward width, CT-CLIP's int(4 * 2/3 * dim)."""
        return int(4 * (2 / 3) * self.dim)


def ctvit_state_dict_from_ctclip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The CTViT part of a CT-CLIP state dict, with CTViT's own keys.

    A bare ``CTViT.state_dict()`` comes back unchanged; a full ``CTCLIP`` state dict keeps only the
    ``visual_transformer.*`` keys, without that prefix (the text tower and projections are dropped).

    Args:
        state_dict: a CTViT or CTCLIP state dict.
    """
    prefix = "visual_transformer."
    if any(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    return dict(state_dict)


# ---------------------------------------------------------------------------- building blocks
class CTViTLayerNorm(nn.Module):
    """LayerNorm with a learned scale ``gamma`` and a fixed (buffer) bias ``beta``, as CT-CLIP's."""

    beta: torch.Tensor

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class CTViTPatchify(nn.Module):
    """(N, C, T, H, W) -> (N, t, h, w, C*pt*p1*p2), each patch flattened in (c, pt, p1, p2) order."""

    def __init__(self, config: CTViTConfig):
        super().__init__()
        self.pt = config.temporal_patch_size
        self.ph, self.pw = config.patch_hw

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        n, c, frames, height, width = video.shape
        x = video.reshape(n, c, frames // self.pt, self.pt, height // self.ph, self.ph, width // self.pw, self.pw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # n, t, h, w, c, pt, p1, p2
        return x.reshape(n, frames // self.pt, height // self.ph, width // self.pw, -1)


class CTViTPEG(nn.Module):
    """Position-generating depthwise Conv3d over the (t, h, w) grid, causal along t."""

    def __init__(self, dim: int):
        super().__init__()
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, grid_shape: tuple[int, int, int, int]) -> torch.Tensor:
        """Args:
        x: (batch-like, tokens, d), reshaped to ``grid_shape`` + (d,) by a plain reshape (this is
            where the temporal stage's unpermuted layout enters, as in the original).
        grid_shape: (N, t, h, w).
        """
        orig_shape = x.shape
        grid = x.reshape(*grid_shape, -1).permute(0, 4, 1, 2, 3)  # N, d, t, h, w
        grid = F.pad(grid, (1, 1, 1, 1, 2, 0))  # w, h: 1 each side; t: 2 before (causal)
        out = self.dsconv(grid).permute(0, 2, 3, 4, 1)
        return out.reshape(orig_shape)


class CTViTAttention(nn.Module):
    """CT-CLIP's attention: L2-normalised q/k with learned scales, fixed logit scale 8, optional bias."""

    def __init__(self, config: CTViTConfig):
        super().__init__()
        inner = config.dim_head * config.heads
        self.heads = config.heads
        self.scale = 8.0
        self.dropout = float(config.attn_dropout)
        self.norm = CTViTLayerNorm(config.dim)
        self.context_norm = CTViTLayerNorm(config.dim)  # cross-attention only: unused by the encoder
        self.null_kv = nn.Parameter(torch.zeros(config.heads, 0, config.dim_head))  # no null key/values
        self.to_q = nn.Linear(config.dim, inner, bias=False)
        self.to_kv = nn.Linear(config.dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(config.dim_head))
        self.k_scale = nn.Parameter(torch.ones(config.dim_head))
        self.to_out = nn.Linear(inner, config.dim, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return x.reshape(n, length, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        # The original computes k and v from the input *before* its LayerNorm (only q is normalised).
        q = self._split_heads(self.to_q(self.norm(x)))
        k, v = (self._split_heads(t) for t in self.to_kv(x).chunk(2, dim=-1))
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        bias = None if attn_bias is None else attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, scale=self.scale, dropout_p=self.dropout if self.training else 0.0
        )
        n, _, length, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(n, length, -1))


class CTViTGEGLU(nn.Module):
    """x * GELU(gate) on the two halves of the last axis (exact erf GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def _feed_forward(config: CTViTConfig) -> nn.Sequential:
    inner = config.ff_inner_dim
    return nn.Sequential(  # indices 0, 1, 4 hold weights, as in CT-CLIP's state dict
        nn.LayerNorm(config.dim),
        nn.Linear(config.dim, inner * 2, bias=False),
        CTViTGEGLU(),
        nn.Dropout(config.ff_dropout),
        nn.Linear(inner, config.dim, bias=False),
    )


class CTViTBlock(nn.ModuleList):
    """One layer: [PEG, self-attention, (no cross-attention), feed-forward] at CT-CLIP's indices 0, 1, 2, 3."""

    def __init__(self, config: CTViTConfig):
        # ModuleList accepts None entries (the unused cross-attention slot); its stubs say Module only
        super().__init__([CTViTPEG(config.dim), CTViTAttention(config), None, _feed_forward(config)])  # type: ignore[list-item]

    def forward(
        self, x: torch.Tensor, grid_shape: tuple[int, int, int, int], attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        peg, attn, _, ff = self
        x = peg(x, grid_shape) + x
        x = attn(x, attn_bias) + x
        return ff(x) + x


class CTViTTransformer(nn.Module):
    """A stack of ``CTViTBlock`` and the final ``norm_out``.

    With ``gradient_checkpointing`` (set by ``PreTrainedModel.gradient_checkpointing_enable``) each
    block's activations are recomputed in the backward pass while it trains.
    """

    _gradient_checkpointing_func: Callable[..., torch.Tensor]  # set by gradient_checkpointing_enable

    def __init__(self, config: CTViTConfig, depth: int):
        super().__init__()
        self.layers = nn.ModuleList([CTViTBlock(config) for _ in range(depth)])
        self.norm_out = CTViTLayerNorm(config.dim)
        self.gradient_checkpointing = False

    def forward(
        self, x: torch.Tensor, grid_shape: tuple[int, int, int, int], attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(layer.__call__, x, grid_shape, attn_bias)
            else:
                x = layer(x, grid_shape, attn_bias)
        return self.norm_out(x)


class CTViTPositionBias(nn.Module):
    """Continuous relative-position bias (Swin v2 style) over the h*w positions of a slab."""

    def __init__(self, config: CTViTConfig, layers: int = 2):
        super().__init__()
        net: list[nn.Module] = [nn.Sequential(nn.Linear(2, config.dim), nn.LeakyReLU(0.1))]
        for _ in range(layers - 1):
            net.append(nn.Sequential(nn.Linear(config.dim, config.dim), nn.LeakyReLU(0.1)))
        net.append(nn.Linear(config.dim, config.heads))
        self.net = nn.ModuleList(net)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """(heads, h*w, h*w) bias, positions in row-major (y, x) order, [query, key]."""
        weight = cast(nn.Linear, self.net[-1]).weight  # the head built above
        ys, xs = torch.meshgrid(
            torch.arange(height, device=weight.device), torch.arange(width, device=weight.device), indexing="ij"
        )
        grid = torch.stack((ys.flatten(), xs.flatten()), dim=-1)
        rel = (grid[:, None, :] - grid[None, :, :]).to(torch.float32)
        rel = torch.sign(rel) * torch.log(rel.abs() + 1)
        rel = rel.to(weight.dtype)
        for layer in self.net:
            rel = layer(rel)
        return rel.permute(2, 0, 1)


class CTViTCodebook(nn.Module):
    """The VQ codebook's buffers under vector-quantize-pytorch's names (only ``embed`` is used)."""

    initted: torch.Tensor
    cluster_size: torch.Tensor
    embed: torch.Tensor

    def __init__(self, config: CTViTConfig):
        super().__init__()
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, config.codebook_size))
        self.register_buffer("embed", torch.zeros(1, config.codebook_size, config.dim))


class CTViTVectorQuantizer(nn.Module):
    """Cosine-similarity codebook lookup: the stored row whose direction best matches each token."""

    def __init__(self, config: CTViTConfig):
        super().__init__()
        self._codebook = CTViTCodebook(config)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            tokens: (N, L, d) pre-quantisation tokens.

        Returns:
            (quantised (N, L, d), indices (N, L)). The quantised values are exactly codebook rows; when
            ``tokens`` requires grad they carry a straight-through gradient (identity to ``tokens``).
        """
        embed = self._codebook.embed[0]
        unit_codes = F.normalize(embed.float(), dim=-1)
        # one sample at a time: the (L, codebook_size) similarity of a released-size volume is
        # 13824 x 8192; float32 keeps the choice of code independent of the model's dtype
        indices = (
            torch.stack(
                [(F.normalize(sample.detach().float(), dim=-1) @ unit_codes.T).argmax(dim=-1) for sample in tokens]
            )
            if tokens.shape[0]
            else torch.zeros(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        )
        quantised = embed[indices].to(tokens.dtype)
        if tokens.requires_grad:
            quantised = quantised + (tokens - tokens.detach())  # adds exact zeros: values stay codebook rows
        return quantised, indices


# ---------------------------------------------------------------------------- model
@dataclass
class CTViTOutput(ModelOutput):
    """``CTViTModel`` outputs, tokens in (t, h, w) raster order.

    Args:
        last_hidden_state: (N, t*h*w, dim) quantised tokens (codebook rows): CT-CLIP's encoded tokens.
        pre_quantization: (N, t*h*w, dim) the temporal transformer's output (the VQ input).
        codebook_indices: (N, t*h*w) chosen codebook rows.
    """

    last_hidden_state: torch.Tensor | None = None
    pre_quantization: torch.Tensor | None = None
    codebook_indices: torch.Tensor | None = None


class CTViTPreTrainedModel(PreTrainedModel):
    config: CTViTConfig
    config_class = CTViTConfig
    base_model_prefix = "ctvit"
    main_input_name = "volume_values"
    supports_gradient_checkpointing = True
    # Attention always runs through torch's scaled_dot_product_attention, whatever is requested.
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
        elif isinstance(module, nn.Conv3d):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, CTViTLayerNorm):
            init.ones_(module.gamma)
            init.zeros_(module.beta)
        elif isinstance(module, CTViTAttention):
            init.ones_(module.q_scale)
            init.ones_(module.k_scale)
        elif isinstance(module, CTViTCodebook):
            # vector-quantize-pytorch's cosine codebook starts from L2-normalised random rows
            init.copy_(module.embed, F.normalize(torch.randn_like(module.embed), dim=-1))
            init.zeros_(module.cluster_size)
            init.ones_(module.initted)


class CTViTModel(CTViTPreTrainedModel):
    """CT-CLIP's CTViT encoder: volumes (N, C, T, H, W) -> quantised tokens (N, t*h*w, dim)."""

    def __init__(self, config: CTViTConfig):
        super().__init__(config)
        c, pt = config.channels, config.temporal_patch_size
        ph, pw = config.patch_hw
        self.spatial_rel_pos_bias = CTViTPositionBias(config)
        # index 0 is the (parameter-free) patch rearrangement, as in the original Sequential
        self.to_patch_emb_first_frame = nn.Sequential(  # unused by the original forward; weights kept
            nn.Identity(), nn.LayerNorm(c * ph * pw), nn.Linear(c * ph * pw, config.dim), nn.LayerNorm(config.dim)
        )
        self.to_patch_emb = nn.Sequential(
            CTViTPatchify(config),
            nn.LayerNorm(c * pt * ph * pw),
            nn.Linear(c * pt * ph * pw, config.dim),
            nn.LayerNorm(config.dim),
        )
        self.enc_spatial_transformer = CTViTTransformer(config, config.spatial_depth)
        self.enc_temporal_transformer = CTViTTransformer(config, config.temporal_depth)
        self.vq = CTViTVectorQuantizer(config)
        # the autoencoder's decoder heads: unused by the encoder, kept so the state dict loads strictly
        self.to_pixels_first_frame = nn.Sequential(nn.Linear(config.dim, c * ph * pw))
        self.to_pixels = nn.Sequential(nn.Linear(config.dim, c * pt * ph * pw))
        self.post_init()

    def _check_shape(self, volumes: torch.Tensor) -> None:
        cfg = self.config
        if (
            volumes.ndim != 5
            or volumes.shape[1] != cfg.channels
            or tuple(volumes.shape[3:]) != cfg.image_hw
            or volumes.shape[2] % cfg.temporal_patch_size
            or volumes.shape[2] == 0
        ):
            raise ValueError(
                f"CTViT expects volumes (N, {cfg.channels}, T, {cfg.image_hw[0]}, {cfg.image_hw[1]}) with T a "
                f"multiple of {cfg.temporal_patch_size}, got {tuple(volumes.shape)}"
            )

    def encode(self, volume_values: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation tokens (N, t, h, w, dim): patch embedding, spatial then temporal transformer.

        Args:
            volume_values: (N, C, T, H, W).
        """
        self._check_shape(volume_values)
        weight = cast(nn.Linear, self.to_patch_emb[2]).weight  # the patch projection built in __init__
        tokens = self.to_patch_emb(volume_values.to(weight.dtype))
        n, t, h, w, d = tokens.shape
        grid_shape = (n, t, h, w)
        spatial = self.enc_spatial_transformer(
            tokens.reshape(n * t, h * w, d), grid_shape, attn_bias=self.spatial_rel_pos_bias(h, w)
        )
        temporal_in = spatial.reshape(n, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(n * h * w, t, d)
        temporal = self.enc_temporal_transformer(temporal_in, grid_shape)
        return temporal.reshape(n, h, w, t, d).permute(0, 3, 1, 2, 4)

    def forward(self, volume_values: torch.Tensor, **kwargs: Any) -> CTViTOutput:
        """Encode volumes.

        Args:
            volume_values: (N, C, T, H, W) float, H = W = image_size, T a multiple of temporal_patch_size.

        Returns:
            ``CTViTOutput`` with quantised tokens, pre-quantisation tokens and codebook indices.
        """
        grid = self.encode(volume_values)
        n, t, h, w, d = grid.shape
        pre_vq = grid.reshape(n, t * h * w, d)
        quantised, indices = self.vq(pre_vq)
        return CTViTOutput(last_hidden_state=quantised, pre_quantization=pre_vq, codebook_indices=indices)


__all__ = [
    "CTCLIP_RELEASED_KWARGS",
    "CTViTConfig",
    "CTViTModel",
    "CTViTOutput",
    "CTViTPreTrainedModel",
    "ctvit_state_dict_from_ctclip",
]
