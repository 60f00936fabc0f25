"""Convolutional stems: drop-in patch embeddings for 2D towers and the 3D ViT."""

from __future__ import annotations

import pytest
import torch

from medvl.models import MedVLForConditionalGeneration
from medvl.models.stems import ConvStem, install_conv_stem
from medvl.models.vit3d import Vit3DConfig, Vit3DModel
from tests.test_models_medvl import IMG, VOL, make_config, make_model, row


def test_stem_output_matches_the_patch_embedding_shape_and_strides():
    stem = ConvStem(3, 24, 16, [8, 16, 16, 32])
    assert stem(torch.randn(2, 3, 64, 48)).shape == (2, 24, 4, 3)
    assert stem.weight is stem.proj.weight and stem.proj.kernel_size == (1, 1)
    # a volume patch (4, 16, 16) with 3 layers: depth strides 2, 2, 1; the rest (1, 2, 2) in the projection
    stem3d = ConvStem(1, 24, [4, 16, 16], [8, 8, 8], dims=3)
    assert [m.stride for m in stem3d.layers if isinstance(m, torch.nn.Conv3d)] == [(2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert stem3d.proj.kernel_size == (1, 2, 2)
    assert stem3d(torch.randn(1, 1, 8, 32, 32)).shape == (1, 24, 2, 2, 2)


def test_stem_that_does_not_fit_the_patch_lists_valid_depths():
    with pytest.raises(ValueError, match=r"valid numbers of layers: \[1, 2, 3\]"):
        ConvStem(3, 8, 8, [4, 4, 4, 4])


@pytest.mark.parametrize("tower", ["siglip", "clip", "dinov2"])
def test_install_replaces_the_one_patch_embedding(tower):
    config = make_config(tower=tower, image_conv_stem=[8, 16])
    model = make_model(config).train()
    stems = [m for m in model.vision_tower.modules() if isinstance(m, ConvStem)]
    assert len(stems) == 1
    ids = torch.tensor([row([40, 41], (IMG, config.num_image_tokens))])
    labels = ids.clone()
    labels[:, :-3] = -100
    out = model(input_ids=ids, labels=labels, pixel_values=torch.randn(1, 3, 32, 32))
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stems[0].parameters())
    # a second install finds the stem itself (one patch embedding), never a stem inside a stem
    install_conv_stem(model.vision_tower, 8, [4])
    assert sum(isinstance(m, ConvStem) for m in model.vision_tower.modules()) == 1


def test_stem_checkpoint_round_trip_gives_identical_logits(tmp_path):
    config = make_config(image_conv_stem=[8, 16], volume="vit3d")
    config.volume_config.conv_stem = [8, 8]
    model = MedVLForConditionalGeneration(config).eval()
    assert isinstance(model.volume_encoder.embeddings.stem, ConvStem)
    model.save_pretrained(tmp_path)
    loaded = MedVLForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids = torch.tensor([row([40], (IMG, config.num_image_tokens), (VOL, config.num_volume_tokens))])
    kwargs = dict(pixel_values=torch.randn(1, 3, 32, 32), volume_values=torch.randn(1, 1, 8, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, **kwargs).logits, model(input_ids=ids, **kwargs).logits, rtol=0, atol=0
        )
    assert loaded.config.image_conv_stem == [8, 16] and loaded.config.volume_config.conv_stem == [8, 8]


def test_vit3d_stem_tokens_follow_the_patchify_raster_order():
    config = Vit3DConfig(
        image_size=[8, 16, 16],
        patch_size=[4, 8, 8],
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        use_cls_token=False,
        conv_stem=[4, 4],
    )
    encoder = Vit3DModel(config).eval()
    volumes = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        tokens = encoder.embeddings(volumes) - encoder.embeddings.position_embedding
        grid = encoder.embeddings.stem(volumes)  # (N, hidden, gd, gh, gw)
    gd, gh, gw = config.grid_size
    for d, h, w in [(0, 0, 1), (1, 0, 0), (1, 1, 0)]:
        torch.testing.assert_close(tokens[:, (d * gh + h) * gw + w], grid[:, :, d, h, w])


def test_vit3d_stem_rejects_patch_norm():
    with pytest.raises(ValueError, match="cannot be combined with patch_norm"):
        Vit3DConfig(image_size=[8, 16, 16], patch_size=[4, 8, 8], conv_stem=[4], patch_norm=True)


def test_input_pool_is_a_max_that_takes_its_share_of_the_patch():
    torch.manual_seed(0)
    pooled = ConvStem(1, 8, [4, 16, 16], [4, 4, 4, 4], dims=3, input_pool=[2, 1, 1])
    # the pool takes a factor 2 of the depth patch: the convolutions see a (2, 16, 16) patch
    assert [m.stride for m in pooled.layers if isinstance(m, torch.nn.Conv3d)] == [
        (2, 2, 2),
        (1, 2, 2),
        (1, 2, 2),
        (1, 2, 2),
    ]
    volumes = torch.randn(2, 1, 8, 32, 32)
    out = pooled(volumes)
    assert out.shape == (2, 8, 2, 2, 2)  # the same token grid as without the pool
    # a single bright voxel survives the pool at full value whichever of the two slices holds it
    spike = torch.zeros(1, 1, 8, 32, 32)
    for z in (2, 3):
        one = spike.clone()
        one[0, 0, z, 10, 10] = 5.0
        assert pooled.pool(one).max() == 5.0 and pooled.pool(one)[0, 0, 1, 10, 10] == 5.0
    # the same as an explicit max pool followed by a stem built for the remaining patch
    plain = ConvStem(1, 8, [2, 16, 16], [4, 4, 4, 4], dims=3)
    plain.load_state_dict(pooled.state_dict())
    torch.testing.assert_close(out, plain(torch.nn.functional.max_pool3d(volumes, (2, 1, 1))))


def test_input_pool_and_vit3d_config_errors():
    with pytest.raises(ValueError, match="input_pool"):
        ConvStem(1, 8, [4, 16, 16], [4], dims=3, input_pool=[3, 1, 1])
    with pytest.raises(ValueError, match="conv_stem_pool needs conv_stem"):
        Vit3DConfig(image_size=[8, 16, 16], patch_size=[4, 8, 8], conv_stem_pool=[2, 1, 1])
    with pytest.raises(ValueError, match=r"divide patch_size \[4, 8, 8\]"):
        Vit3DConfig(image_size=[8, 16, 16], patch_size=[4, 8, 8], conv_stem=[4], conv_stem_pool=[8, 1, 1])
    config = Vit3DConfig(
        image_size=[8, 16, 16],
        patch_size=[4, 8, 8],
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_stem=[4, 4],
        conv_stem_pool=[2, 1, 1],
    )
    assert Vit3DModel(config)(torch.randn(1, 1, 8, 16, 16)).last_hidden_state.shape == (1, 1 + 8, 16)
