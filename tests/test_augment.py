"""Tests for medvl.data.augment: laterality-safe augmentation and the flip that swaps left/right in text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvl.data.augment import (
    AugmentConfig,
    Augmenter,
    adjust_intensity,
    rotate_scale,
    swap_laterality,
    swap_laterality_in_messages,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Nodule in the left lung.", "Nodule in the right lung."),
        ("Left lower lobe; RIGHT effusion", "Right lower lobe; LEFT effusion"),
        ("right and left kidneys", "left and right kidneys"),
        ("left-sided pneumothorax, shift rightward", "right-sided pneumothorax, shift leftward"),
        ("leftover contrast, rightly so, copyright", "leftover contrast, rightly so, copyright"),
        ("That's right, all right, right away: the left hilum", "That's right, all right, right away: the right hilum"),
        ("左肺上叶结节，右侧胸腔积液", "右肺上叶结节，左侧胸腔积液"),
        ("病灶大小5厘米左右，位于左肾", "病灶大小5厘米左右，位于右肾"),
        ("no laterality here", "no laterality here"),
    ],
)
def test_swap_laterality(text, expected):
    assert swap_laterality(text) == expected
    assert swap_laterality(expected) == text  # an involution


def test_swap_in_messages_copies_and_handles_parts():
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which side, left or right?"}]},
        {"role": "assistant", "content": "The left side."},
    ]
    swapped = swap_laterality_in_messages(messages)
    assert swapped[0]["content"][1]["text"] == "Which side, right or left?"
    assert swapped[0]["content"][0] == {"type": "image"}
    assert swapped[1]["content"] == "The right side."
    assert messages[1]["content"] == "The left side."  # input untouched


def sample_with_left_marker():
    """An image and a volume whose bright marker sits at large W (the patient's left in medvl's layout)."""
    image = torch.zeros(1, 3, 16, 16)
    image[..., 6:10, 12:15] = 1.0
    volume = torch.zeros(1, 1, 4, 16, 16)
    volume[..., 1:3, 6:10, 12:15] = 1.0
    messages = [{"role": "user", "content": "<image>\nWhere is the lesion?"},
                {"role": "assistant", "content": "In the left lung."}]
    return messages, image, volume


def centroid_w(x: torch.Tensor) -> float:
    # Weight by the excess over the background (the median), so a brightness shift does not count.
    weights = (x - x.median()).clamp(min=0).sum(dim=tuple(range(x.dim() - 1)))
    return float((weights * torch.arange(x.shape[-1])).sum() / weights.sum())


def test_evaluation_is_identity():
    messages, image, volume = sample_with_left_marker()
    out = Augmenter(AugmentConfig(flip_lr_prob=1.0, rotate_degrees=30))(messages, image, volume)
    assert out[0] is messages and out[1] is image and out[2] is volume


def test_default_training_never_changes_laterality():
    messages, image, volume = sample_with_left_marker()
    augmenter = Augmenter(training=True, seed=3)
    changed = False
    for _ in range(30):
        msgs, img, vol = augmenter(messages, image, volume)
        assert msgs == messages
        assert centroid_w(img) > 10 and centroid_w(vol) > 10
        changed |= not torch.equal(img, image)
    assert changed  # it did augment


def test_flip_mirrors_media_and_swaps_words_together():
    messages, image, volume = sample_with_left_marker()
    config = AugmentConfig(brightness=0, contrast=0, rotate_degrees=0, scale=0, flip_lr_prob=1.0)
    msgs, img, vol = Augmenter(config, training=True)(messages, image, volume)
    assert torch.equal(img, torch.flip(image, dims=[-1])) and torch.equal(vol, torch.flip(volume, dims=[-1]))
    assert centroid_w(img) < 5 and centroid_w(vol) < 5
    assert msgs[1]["content"] == "In the right lung."
    assert msgs[0]["content"] == messages[0]["content"]


def test_flip_probability_is_respected_and_reproducible():
    messages, image, _ = sample_with_left_marker()
    config = AugmentConfig(brightness=0, contrast=0, rotate_degrees=0, scale=0, flip_lr_prob=0.5)
    runs = []
    for _ in range(2):
        augmenter = Augmenter(config, training=True, seed=11)
        runs.append([augmenter(messages, image)[0][1]["content"] for _ in range(40)])
    assert runs[0] == runs[1]
    assert 8 < runs[0].count("In the right lung.") < 32


def test_rotate_scale_geometry():
    x = torch.arange(16.0).reshape(1, 4, 4)
    assert torch.allclose(rotate_scale(x, 90.0), torch.rot90(x, 1, dims=[-2, -1]), atol=1e-4)  # counter-clockwise
    assert torch.allclose(rotate_scale(x, 0.0, 1.0), x)
    vol = torch.arange(48.0).reshape(1, 3, 4, 4)
    assert torch.allclose(rotate_scale(vol, -90.0), torch.rot90(vol, -1, dims=[-2, -1]), atol=1e-4)
    # Zooming in by 2 on a non-square ramp along W halves its slope around the centre.
    ramp = torch.arange(8.0).repeat(1, 4, 1)  # (1, 4, 8)
    zoomed = rotate_scale(ramp, 0.0, 2.0)
    assert torch.allclose(zoomed[0, 0, 3:5], torch.tensor([3.25, 3.75]), atol=1e-5)


def test_adjust_intensity():
    x = torch.tensor([[0.0, 1.0, 2.0]])
    assert torch.allclose(adjust_intensity(x, 0.5, 2.0), torch.tensor([[-0.5, 1.5, 3.5]]))


def test_config_validation():
    with pytest.raises(ValueError, match="flip_lr_prob"):
        AugmentConfig(flip_lr_prob=1.5)
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=1.0)
    with pytest.raises(ValueError, match="5D"):
        Augmenter(training=True)([], volume_values=torch.zeros(1, 4, 4, 4))


# ---------------------------------------------------------------- sample-level hook (PIL images, Volumes)


def test_rotate_scale_pil_direction():
    from PIL import Image

    from medvl.data.augment import rotate_scale_pil

    image = Image.fromarray((np.arange(16).reshape(4, 4) * 10).astype(np.uint8))
    rotated = np.array(rotate_scale_pil(image, 90.0)).astype(int)
    assert np.abs(rotated - np.array(image.transpose(Image.Transpose.ROTATE_90))).max() <= 1  # counter-clockwise


def test_augment_sample_flip_swaps_text_and_mirrors_image_and_volume():
    from PIL import Image

    from medvl.imaging import Volume
    from medvl.models.volume_processing_medvl import MedVLVolumeProcessor

    grey = np.zeros((8, 8), np.uint8)
    grey[:, 6:] = 255  # bright on the image's right
    # A LAS volume (i runs towards the patient's left): a marker at large i is on the patient's left.
    array = np.full((10, 8, 6), -1000.0, np.float32)
    array[8, 4, 3] = 1000.0
    volume = Volume(array, np.diag([-1.0, 1.0, 1.0, 1.0]), source="las.nii.gz")
    sample = {"messages": [{"role": "assistant", "content": "Left apex."}], "images": [Image.fromarray(grey)],
              "volumes": [volume], "record": "r1"}
    config = AugmentConfig(brightness=0, contrast=0, rotate_degrees=0, scale=0, flip_lr_prob=1.0)

    assert Augmenter(config).augment_sample(sample) is sample  # evaluation: untouched
    out = Augmenter(config, training=True).augment_sample(sample)
    assert out["record"] == "r1" and out["messages"][0]["content"] == "Right apex."
    assert np.array_equal(np.array(out["images"][0]), np.array(sample["images"][0])[:, ::-1])
    assert isinstance(out["volumes"][0], Volume) and np.allclose(out["volumes"][0].affine, volume.affine)
    processor = MedVLVolumeProcessor(crop_foreground=False, target_shape=None, intensity="none")
    before = processor(volume)["volume_values"][0, 0]
    after = processor(out["volumes"][0])["volume_values"][0, 0]
    # i runs towards the patient's left, so in the SPL layout W = i: 8 of 0..9 (left), mirrored 9 - 8 = 1.
    assert np.unravel_index(int(before.argmax()), before.shape)[2] == 8
    assert np.unravel_index(int(after.argmax()), after.shape)[2] == 1


def test_augment_sample_default_keeps_laterality():
    from PIL import Image

    grey = np.zeros((16, 16), np.uint8)
    grey[4:12, 11:15] = 255
    sample = {"messages": [{"role": "user", "content": "left?"}], "images": [Image.fromarray(grey).convert("RGB")],
              "volumes": []}
    augmenter = Augmenter(training=True, seed=5)
    for _ in range(10):
        out = augmenter.augment_sample(sample)
        assert out["messages"] == sample["messages"]
        assert centroid_w(torch.from_numpy(np.array(out["images"][0], dtype=np.float32)).permute(2, 0, 1)) > 10
