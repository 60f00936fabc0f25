"""Convolutional stems for ViT towers ("Early Convolutions Help Transformers See Better", Xiao et
al., NeurIPS 2021).

REMOTE-CODE SAFE: imports only torch (copied into checkpoints).

A plain ViT embeds each p x p patch with one linear map (a Conv with kernel = stride = p). A
finding smaller than a patch, such as a 5-15 mm lung nodule at radiograph resolution, then has
to be picked out of the patch's anatomy by that single linear map, wherever inside the patch it
sits: small from-scratch ViTs do not learn it in minutes. A stem of a few 3x3 stride-2
convolutions gives the tower a translation-invariant local detector instead, at a small cost.

:class:`ConvStem` is a drop-in replacement of the patch-embedding convolution: same input, same
output shape (N, hidden, H/p, W/p[, D/p]) and a ``weight`` attribute (towers read the patch
embedding's dtype from it), so position embeddings, token layout and connectors are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn


def _conv(
    dims: int, in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int], padding: int = 0
) -> nn.Conv2d | nn.Conv3d:
    """A 2D or 3D convolution with one kernel / stride entry per spatial axis."""
    if dims == 2:
        return nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=(kernel[0], kernel[1]),
            stride=(stride[0], stride[1]),
            padding=padding,
        )
    return nn.Conv3d(
        in_channels,
        out_channels,
        kernel_size=(kernel[0], kernel[1], kernel[2]),
        stride=(stride[0], stride[1], stride[2]),
        padding=padding,
    )


def validate_stem_widths(widths: object, name: str) -> list[int] | None:
    """A config's stem widths as a list of positive ints (None: no stem).

    Args:
        widths: the configured value.
        name: the config field, for the error message.
    """
    if widths is None:
        return None
    if not isinstance(widths, (list, tuple)) or not widths or not all(isinstance(c, int) and c > 0 for c in widths):
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {widths!r}")
    return [int(c) for c in widths]


class ConvStem(nn.Module):
    """3x3 stride-2 convolutions, each followed by GroupNorm and GELU, then a convolution to the
    tower's hidden size with kernel = stride = the rest of the patch size.

    An axis whose patch size runs out of factors of two keeps stride 1 in the later layers (a
    (4, 16, 16) volume patch with four layers: depth strides 2, 2, 1, 1, in-plane 2, 2, 2, 2).

    ``input_pool`` starts the stem with a max pooling (kernel = stride) that takes its share of the
    patch: for CT, (2, 1, 1) is a thin-slab maximum intensity projection, the way radiologists read
    lung nodules. A small nodule, bright in dark lung, keeps its full contrast through a max (a
    strided convolution would average it with lung), and every later layer has half the slices to
    process. Measured on the quickstart's CT phantoms (benchmarks/README.md): the stage-0 nodule
    detector started learning earlier with it in both paired seeds, and each step was cheaper.

    Args:
        in_channels: image channels.
        hidden_size: the tower's embedding width.
        patch_size: the tower's patch size, one int or one per spatial axis.
        channels: output channels of the stride-2 convolutions, e.g. (16, 32, 64, 128).
        dims: 2 (images) or 3 (volumes).
        input_pool: optional max-pooling factor per spatial axis applied first (divides the patch).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_size: int,
        patch_size: int | list[int] | tuple[int, ...],
        channels: list[int] | tuple[int, ...],
        dims: int = 2,
        input_pool: list[int] | tuple[int, ...] | None = None,
    ):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"ConvStem dims must be 2 or 3, got {dims}")
        patch = [int(patch_size)] * dims if isinstance(patch_size, int) else [int(p) for p in patch_size]
        if len(patch) != dims:
            raise ValueError(f"ConvStem: patch_size {patch_size} needs {dims} values")
        if not channels:
            raise ValueError("ConvStem: channels must list at least one width")
        pool = [1] * dims if input_pool is None else [int(p) for p in input_pool]
        if len(pool) != dims or any(q < 1 or p % q for p, q in zip(patch, pool)):
            raise ValueError(
                f"ConvStem: input_pool {input_pool} needs {dims} positive factors that divide patch_size {patch_size}"
            )
        patch = [p // q for p, q in zip(patch, pool)]
        largest = max(patch)
        if 2 ** len(channels) > largest or largest % 2 ** len(channels):
            valid = [k for k in range(1, 8) if largest % 2**k == 0]
            raise ValueError(
                f"a conv stem of {len(channels)} stride-2 layers does not fit patch size {patch_size}; "
                f"valid numbers of layers: {valid}"
            )
        layers: list[nn.Module] = []
        self.pool: nn.Module | None = None
        if any(q > 1 for q in pool):
            self.pool = (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(kernel_size=tuple(pool), stride=tuple(pool))
        previous, remaining = in_channels, list(patch)
        for width in channels:
            stride = [2 if r % 2 == 0 else 1 for r in remaining]
            remaining = [r // s for r, s in zip(remaining, stride)]
            # Normalisation is what makes the stem learn fast (from scratch, a small phantom nodule
            # detector trained in ~500 steps with it, not in 1000 without). GroupNorm rather than
            # the paper's BatchNorm: no batch dependence, so frozen towers, eval mode, gradient
            # accumulation and DDP all see the same function.
            layers += [
                _conv(dims, previous, width, [3] * dims, stride, padding=1),
                nn.GroupNorm(math.gcd(8, width), width),
                nn.GELU(),
            ]
            previous = width
        self.layers = nn.Sequential(*layers)
        self.proj = _conv(dims, previous, hidden_size, remaining, remaining)

    @property
    def weight(self) -> torch.Tensor:
        """The projection's weight (HF towers read ``patch_embedding.weight.dtype``)."""
        return self.proj.weight

    @property
    def in_channels(self) -> int:
        return cast(nn.Conv2d | nn.Conv3d, self.layers[0]).in_channels  # the first stride-2 convolution

    @property
    def out_channels(self) -> int:
        return self.proj.out_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            pixel_values = self.pool(pixel_values)
        return self.proj(self.layers(pixel_values))


def patch_embedding_path(tower: nn.Module, patch_size: int) -> str:
    """The dotted name of a tower's patch-embedding convolution (kernel = stride = patch size).

    Args:
        tower: an HF vision model (SigLIP, CLIP, DINOv2, ViT, ...).
        patch_size: the tower's patch size.

    Raises:
        ValueError: when there is not exactly one such convolution.
    """
    patch = (patch_size, patch_size)
    found = [
        name
        for name, module in tower.named_modules()
        if isinstance(module, ConvStem)
        or (isinstance(module, nn.Conv2d) and module.kernel_size == module.stride == patch)
    ]
    if len(found) != 1:
        raise ValueError(
            f"cannot place a conv stem: expected one patch-embedding convolution with kernel = stride = "
            f"{patch_size} in {type(tower).__name__}, found {found or 'none'}"
        )
    return found[0]


def install_conv_stem(tower: nn.Module, patch_size: int, channels: list[int] | tuple[int, ...]) -> ConvStem:
    """Replace a 2D tower's patch-embedding convolution by a :class:`ConvStem` (in place).

    Args:
        tower: an HF vision model.
        patch_size: its patch size.
        channels: stem widths (see :class:`ConvStem`).

    Returns:
        the installed stem.
    """
    path = patch_embedding_path(tower, patch_size)
    parent_name, _, attr = path.rpartition(".")
    parent = tower.get_submodule(parent_name) if parent_name else tower
    old = getattr(parent, attr)
    stem = ConvStem(old.in_channels, old.out_channels, patch_size, channels, dims=2)
    setattr(parent, attr, stem)
    return stem
