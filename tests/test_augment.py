"""Tests for medvl.data.augment: laterality-safe augmentation and the flip that swaps left/right in text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvl.data.augment import (
    AugmentConfig,
    Augmenter,
    adjust_intensity,
    flip_blockers,
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
    messages = [
        {"role": "user", "content": "<image>\nWhere is the lesion?"},
        {"role": "assistant", "content": "In the left lung."},
    ]
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
    sample = {
        "messages": [{"role": "assistant", "content": "Left apex."}],
        "images": [Image.fromarray(grey)],
        "volumes": [volume],
        "record": "r1",
    }
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
    sample = {
        "messages": [{"role": "user", "content": "left?"}],
        "images": [Image.fromarray(grey).convert("RGB")],
        "volumes": [],
    }
    augmenter = Augmenter(training=True, seed=5)
    for _ in range(10):
        out = augmenter.augment_sample(sample)
        assert out["messages"] == sample["messages"]
        assert centroid_w(torch.from_numpy(np.array(out["images"][0], dtype=np.float32)).permute(2, 0, 1)) > 10


# Report sentences in the style of chest radiograph / CT reports, with their mirrored text worked out
# by hand. None: the sentence names a structure without a left-right twin, so the sample is not flipped.
REPORT_SENTENCES = [
    ("There is a 6 mm nodule in the left upper lobe.", "There is a 6 mm nodule in the right upper lobe."),
    (
        "Small right pleural effusion with adjacent atelectasis.",
        "Small left pleural effusion with adjacent atelectasis.",
    ),
    (
        "Patchy opacity in the right lower lobe, concerning for pneumonia.",
        "Patchy opacity in the left lower lobe, concerning for pneumonia.",
    ),
    ("The left hemidiaphragm is elevated.", "The right hemidiaphragm is elevated."),
    (
        "Right-sided central venous catheter with its tip in the superior vena cava.",
        "Left-sided central venous catheter with its tip in the superior vena cava.",
    ),
    ("Blunting of the right costophrenic angle.", "Blunting of the left costophrenic angle."),
    ("Left lower lobe collapse; the right lung is clear.", "Right lower lobe collapse; the left lung is clear."),
    ("Healed fracture of the left seventh rib.", "Healed fracture of the right seventh rib."),
    (
        "Right hilar lymphadenopathy and a left apical pneumothorax.",
        "Left hilar lymphadenopathy and a right apical pneumothorax.",
    ),
    ("Leftward deviation of the trachea.", "Rightward deviation of the trachea."),
    ("The left main bronchus is patent.", "The right main bronchus is patent."),
    ("Mild enlargement of the left ventricle.", "Mild enlargement of the left ventricle."),
    (
        "Left atrial enlargement; the right ventricle is normal in size.",
        "Left atrial enlargement; the right ventricle is normal in size.",
    ),
    (
        "Right heart strain with a small left pleural effusion.",
        "Right heart strain with a small right pleural effusion.",
    ),
    (
        "Stent in the left anterior descending artery; calcification of the right coronary artery.",
        "Stent in the left anterior descending artery; calcification of the right coronary artery.",
    ),
    (
        "Findings were discussed with the referring physician right away.",
        "Findings were discussed with the referring physician right away.",
    ),
    ("Consolidation in the right middle lobe.", None),
    ("Linear atelectasis in the lingula.", None),
    ("Thickening of the minor fissure.", None),
    ("An azygos lobe is noted.", None),
    ("左肺上叶见一直径约6毫米结节。", "右肺上叶见一直径约6毫米结节。"),
    ("右侧少量胸腔积液。", "左侧少量胸腔积液。"),
    ("右肺下叶斑片状高密度影，考虑炎症。", "左肺下叶斑片状高密度影，考虑炎症。"),
    ("纵隔居中，气管向左移位。", "纵隔居中，气管向右移位。"),
    ("双肺纹理增多，右侧肋膈角变钝。", "双肺纹理增多，左侧肋膈角变钝。"),
    ("右心膈角区见脂肪密度影。", "左心膈角区见脂肪密度影。"),
    ("左心室增大。", "左心室增大。"),
    ("右心房及右心室未见增大，左侧胸腔积液。", "右心房及右心室未见增大，右侧胸腔积液。"),
    ("左冠状动脉前降支支架置入术后，右侧第5肋骨陈旧性骨折。", "左冠状动脉前降支支架置入术后，左侧第5肋骨陈旧性骨折。"),
    ("病灶大小约3厘米左右，位于左肾。", "病灶大小约3厘米左右，位于右肾。"),
    ("右肺中叶实变。", None),
    ("左肺上叶舌段条索影。", None),
    ("水平裂增厚。", None),
]


@pytest.mark.parametrize("text, expected", REPORT_SENTENCES)
def test_report_sentences_mirror_with_correct_anatomy(text, expected):
    if expected is None:
        assert flip_blockers(text)
        with pytest.raises(ValueError, match="no left-right counterpart"):
            swap_laterality(text)
        return
    assert flip_blockers(text) == []
    assert swap_laterality(text) == expected
    assert swap_laterality(expected) == text  # mirroring twice is the identity


@pytest.mark.parametrize("text, expected", REPORT_SENTENCES)
def test_augmenter_never_flips_a_sample_without_a_twin(text, expected):
    from PIL import Image

    grey = np.zeros((8, 8), np.uint8)
    grey[:, 6:] = 255
    sample = {
        "messages": [
            {"role": "user", "content": "<image>\nDescribe the findings."},
            {"role": "assistant", "content": text},
        ],
        "images": [Image.fromarray(grey)],
        "volumes": [],
    }
    config = AugmentConfig(brightness=0, contrast=0, rotate_degrees=0, scale=0, flip_lr_prob=1.0)
    augmenter = Augmenter(config, training=True)
    out = augmenter.augment_sample(sample)
    image = np.array(out["images"][0])
    if expected is None:  # drawn, refused: text and image both as they were
        assert out["messages"] == sample["messages"] and np.array_equal(image, grey)
        assert augmenter.flips_refused == 1
    else:  # mirrored together
        assert out["messages"][1]["content"] == expected and np.array_equal(image, grey[:, ::-1])
        assert augmenter.flips_refused == 0
    values = torch.from_numpy(np.stack([grey] * 3)[None].astype(np.float32))
    messages, flipped, _ = Augmenter(config, training=True)(sample["messages"], values)
    assert torch.equal(flipped, values if expected is None else values.flip(-1))


class _JitterSet(torch.utils.data.Dataset):
    """The same volume at every index, jittered by one shared augmenter (as a dataset holds it)."""

    def __init__(self, augmenter: Augmenter):
        self.augmenter = augmenter
        self.volume = torch.arange(4 * 8 * 8, dtype=torch.float32).reshape(1, 1, 4, 8, 8) / 100

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.augmenter.augment_volume_values(self.volume)[0]


def test_dataloader_workers_and_epochs_draw_different_augmentations():
    # Each worker holds a copy of the augmenter; without a reseed per worker (and per epoch) the two
    # workers would replay the same draws and every epoch would repeat the first.
    augmenter = Augmenter(
        AugmentConfig(brightness=0.5, contrast=0.5, rotate_degrees=10, scale=0.1), training=True, seed=3
    )
    loader = torch.utils.data.DataLoader(
        _JitterSet(augmenter), batch_size=1, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    epochs = [torch.cat(list(loader)) for _ in range(2)]
    for batch in epochs:
        rows = batch.flatten(1)
        assert len({tuple(r.tolist()) for r in rows}) == len(rows)  # 8 samples, 8 different draws
    assert not torch.allclose(epochs[0], epochs[1])
    # and augmentation stays off where it should: the evaluation augmenter is the identity
    assert torch.equal(
        Augmenter(augmenter.config).augment_volume_values(_JitterSet(augmenter).volume), _JitterSet(augmenter).volume
    )
