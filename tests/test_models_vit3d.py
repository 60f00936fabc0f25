"""Vit3D: shapes and hidden states, and that its layout holds MedM-CLIP's and M3D/MONAI's 3D ViT weights."""

from __future__ import annotations

import pytest
import torch
from einops.layers.torch import Rearrange
from torch import nn

from medvl.models.vit3d import (
    Vit3DConfig,
    Vit3DModel,
    vit3d_state_dict_from_medmclip,
    vit3d_state_dict_from_monai,
)

SMALL = dict(
    image_size=[8, 16, 24],
    patch_size=[4, 8, 8],
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
)


def _randomise(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_shapes_hidden_states_and_config_checks():
    config = Vit3DConfig(**SMALL)
    assert config.grid_size == (2, 2, 3) and config.num_patches == 12
    model = Vit3DModel(config).eval()
    out = model(torch.randn(2, 1, 8, 16, 24), output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 13, 32)  # CLS + 12 patches
    assert len(out.hidden_states) == 3  # embeddings + 2 blocks
    torch.testing.assert_close(model.norm(out.hidden_states[-1]), out.last_hidden_state)
    with pytest.raises(ValueError, match=r"expects volumes of shape \(N, 1, 8, 16, 24\)"):
        model(torch.randn(1, 1, 8, 16, 16))
    with pytest.raises(ValueError, match="does not divide"):
        Vit3DConfig(image_size=[8, 16, 20], patch_size=[4, 8, 8])
    with pytest.raises(ValueError, match="valid choices"):
        Vit3DConfig(hidden_act="swish9")


def test_patch_order_matches_a_conv3d():
    """medvl flattens a patch in Conv3d order, so the patch Linear is a Conv3d with stride = kernel."""
    config = Vit3DConfig(**{**SMALL, "in_channels": 2}, use_cls_token=False)
    model = Vit3DModel(config).eval()
    conv = nn.Conv3d(2, 32, kernel_size=(4, 8, 8), stride=(4, 8, 8))
    with torch.no_grad():
        conv.weight.copy_(model.embeddings.patch_proj.weight.reshape(32, 2, 4, 8, 8))
        conv.bias.copy_(model.embeddings.patch_proj.bias)
    x = torch.randn(1, 2, 8, 16, 24)
    expected = conv(x).flatten(2).transpose(1, 2)  # (1, 12, 32), (d, h, w) raster order
    got = model.embeddings.patch_proj(model.embeddings.patchify(x))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


class MedMCLIPStyleViT(nn.Module):
    """The vision encoder layout of MedM-VL's MedM-CLIP (vit-pytorch style), written from its description."""

    def __init__(self, frames, image, fp, pp, dim, depth, heads, mlp_dim):
        super().__init__()
        patch_dim = fp * pp * pp
        n = (frames // fp) * (image[0] // pp) * (image[1] // pp)
        self.to_patch_embedding = nn.Sequential(
            Rearrange("b c (f pf) (h p1) (w p2) -> b (f h w) (p1 p2 pf c)", p1=pp, p2=pp, pf=fp),
            nn.LayerNorm(patch_dim),
            nn.Linear(patch_dim, dim),
            nn.LayerNorm(dim),
        )
        self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer_layers = nn.ModuleList(
            [nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, batch_first=True) for _ in range(depth)]
        )
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def forward(self, x):
        x = self.to_patch_embedding(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        hidden = []
        for layer in self.transformer_layers:
            x = layer(x)
            hidden.append(x)
        return hidden


def test_holds_medmclip_weights():
    config = Vit3DConfig(
        **SMALL,
        patch_norm=True,
        cls_position_embedding=True,
        norm_first=False,
        hidden_act="relu",
        qkv_bias=True,
        final_norm=False,
    )
    reference = MedMCLIPStyleViT(8, (16, 24), 4, 8, 32, 2, 4, 48).eval()
    _randomise(reference, 0)
    model = Vit3DModel(config).eval()
    missing, unexpected = model.load_state_dict(
        vit3d_state_dict_from_medmclip(reference.state_dict(), config), strict=True
    )
    x = torch.randn(2, 1, 8, 16, 24)
    with torch.no_grad():
        expected = reference(x)
        got = model(x, output_hidden_states=True).hidden_states[1:]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_holds_m3d_monai_vit_weights():
    from monai.networks.nets import ViT

    reference = ViT(
        in_channels=1,
        img_size=(8, 16, 24),
        patch_size=(4, 8, 8),
        hidden_size=32,
        mlp_dim=48,
        num_layers=2,
        num_heads=4,
        proj_type="perceptron",
        classification=True,
        dropout_rate=0.0,
        spatial_dims=3,
        qkv_bias=False,
    ).eval()
    _randomise(reference, 1)
    config = Vit3DConfig(
        **SMALL,
        patch_norm=False,
        cls_position_embedding=False,
        norm_first=True,
        hidden_act="gelu",
        qkv_bias=False,
        final_norm=True,
        final_norm_in_hidden_states=True,
    )
    model = Vit3DModel(config).eval()
    model.load_state_dict(vit3d_state_dict_from_monai(reference.state_dict(), config), strict=True)
    x = torch.randn(2, 1, 8, 16, 24)
    with torch.no_grad():
        _, expected_hidden = reference(x)
        expected_last = reference.norm(expected_hidden[-1])
        out = model(x, output_hidden_states=True)
    for e, g in zip(expected_hidden[:-1], out.hidden_states[1:-1]):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
    # M3D semantics: the last entry (select_layer -1) is the normed output
    torch.testing.assert_close(out.hidden_states[-1], expected_last, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.last_hidden_state, expected_last, atol=1e-4, rtol=1e-4)


def test_a_weight_outside_the_key_table_is_named():
    from medvl.models.vit3d import vit3d_config_from_clip, vit3d_state_dict_from_clip

    config = Vit3DConfig(
        **{k: v for k, v in vit3d_config_from_clip(_MEDMCLIP_TINY, "medmclip").items() if k != "model_type"}
    )
    with torch.device("meta"):
        ours = Vit3DModel(config).state_dict()
    medmclip = {
        "vision_encoder.pos_embedding": ours["embeddings.position_embedding"],
        "vision_encoder.dropout.p": torch.zeros(1),
    }
    with pytest.raises(ValueError, match=r"no row of VIT3D_KEY_TABLES maps them\): \['dropout.p'\]"):
        vit3d_state_dict_from_clip(medmclip, "medmclip", config)
    with pytest.raises(ValueError, match="valid choices: medmclip, m3dclip"):
        vit3d_state_dict_from_clip(medmclip, "ctclip", config)


_MEDMCLIP_TINY = {
    "hidden_size": 32,
    "image_size": 16,
    "image_patch_size": 8,
    "frame_size": 8,
    "frame_patch_size": 4,
    "image_num_heads": 4,
    "image_mlp_dim": 48,
    "image_num_layers": 1,
}
