"""Training augmentations for processed media tensors, laterality-safe by default.

A left-right flip changes the meaning of "left lung", so medvl never flips an image alone: the only
flip (``flip_lr_prob``, 0 by default) mirrors every image and volume of the sample AND swaps
left/right words in every message of its conversation (English ``left``/``right`` with
``-ward(s)``, case-preserving, whole words only, so "leftover" stays; Chinese 左/右, except the
compound 左右 which means "about" or "left and right" and is symmetric anyway). Idioms where
"right" is not a side ("all right", "right away", "right now", "that's right", "right angle") are
kept. Abbreviations such as "L"/"R" or "sinistral" are NOT swapped: datasets that use them should
keep the flip off.

Anatomical names are not all sides (the rules, decided here and tested on report sentences):

* Names of cardiac chambers and vessels keep their side: "right ventricle", "left atrial
  enlargement", "right heart strain", "left anterior descending", "left bundle branch block"; 左心室,
  右心房, 左室, 右心, 左冠状动脉, 左前降支... A mirrored heart is still made of the same chambers.
* Structures with no mirror twin make a sample unflippable: the right middle lobe (the left lung
  has none), the lingula (left only), the minor / horizontal fissure and the azygos vein and lobe
  (right only); 中叶, 舌段, 水平裂, 奇静脉. Swapping "right middle lobe" into "left middle lobe" would
  name a structure that does not exist, and keeping it would contradict the mirrored image, so such
  a sample is never flipped (the augmenter draws the flip and skips it; its other augmentations
  still apply) and :func:`swap_laterality` refuses the text (:func:`flip_blockers` names them).
* Mirroring any chest image also gives a situs-inversus picture (heart and aortic arch on the
  other side); text that does not name a side cannot say so. This is why the flip is off by default.

The geometric augmentations (small in-plane rotation and scale) and the intensity jitter
(brightness shift and contrast factor around the sample mean) keep laterality.

Layout assumptions: 2D ``pixel_values`` are (N, C, H, W) with the image's left-right on W;
``volume_values`` are (N, C, D, H, W) in medvl's SPL layout, whose W axis is the patient's
right -> left. Both flip along their last axis; rotations are in the (H, W) plane (axial slices).

Two entry points with the same randomness and rules:

* ``Augmenter(...)(messages, pixel_values, volume_values)`` on processed tensors;
* ``Augmenter(...).augment_sample(sample)`` on a dataset sample ``{"messages", "images" (PIL),
  "volumes" (Volume / dict / ndarray), ...}`` before processing, the hook of
  ``medvl.data.dataset`` (``augment=Augmenter(cfg, training=True).augment_sample``). There images
  get flip + rotation/scale + brightness/contrast, volumes only the flip (mirrored along the array
  axis closest to the patient's left-right, affine kept, so the anatomy is mirrored in world space);
  the volume rotation/scale and intensity jitter runs on ``volume_values`` after the volume
  processor (``Augmenter.augment_volume_values``; the dataset calls both hooks when given an
  ``Augmenter``, which is what ``data.augment`` of ``medvl train`` does).

Evaluation never augments: ``Augmenter(config, training=False)`` (the default) is the identity.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

if TYPE_CHECKING:
    from medvl.imaging import Volume

# what a volume may be before processing: medvl's Volume, a dict with its fields, or a bare SPL array
VolumeLike: TypeAlias = "Volume | dict[str, Any] | np.ndarray"

# Idioms where "right" does not name a side; matched case-insensitively and left untouched.
_RIGHT_IDIOMS = (
    r"all right",
    r"right away",
    r"right now",
    r"that'?s right",
    r"that is right",
    r"right[- ]angled?",
    r"right angles",
)
_EN_PAIRS = {
    "left": "right",
    "right": "left",
    "leftward": "rightward",
    "rightward": "leftward",
    "leftwards": "rightwards",
    "rightwards": "leftwards",
}
_EN_WORD = re.compile(r"\b(?:left|right)(?:wards?)?\b", re.IGNORECASE)
_IDIOM = re.compile(r"\b(?:" + "|".join(_RIGHT_IDIOMS) + r")\b", re.IGNORECASE)
_ZH = re.compile(r"左右|左|右")
# Cardiac chambers, heart sides and coronary / conduction names: a name, not a side; never swapped.
_EN_CARDIAC = re.compile(
    r"\b(?:left|right)(?:[- ]sided)?[- ](?:ventricles?|ventricular|atri(?:um|a|al)|heart|coronary|main coronary|"
    r"anterior descending|circumflex|atrial appendage|bundle branch)\b",
    re.IGNORECASE,
)
# (右心膈角, the right cardiophrenic angle, is a side of the chest and swaps)
_ZH_CARDIAC = re.compile(r"[左右](?:心室|心房|室|房|心(?!膈)|冠状动脉|冠脉|前降支|回旋支|主干|束支)")
# Structures without a left-right twin: a sample naming one is not flipped.
_EN_UNPAIRED = re.compile(
    r"\b(?:middle lobe|lingula(?:r)?|(?:minor|horizontal) fissure|azygo(?:s|esophageal))\b", re.IGNORECASE
)
_ZH_UNPAIRED = re.compile(r"中叶|舌段|舌叶|水平裂|奇静脉|奇叶")


def flip_blockers(text: str) -> list[str]:
    """The phrases of ``text`` that name a structure with no left-right twin (flipping is then wrong).

    Args:
        text: any text.

    Returns:
        The matched phrases in order ("right middle lobe" gives "middle lobe"), empty when a flip is safe.
    """
    return [m.group(0) for m in _EN_UNPAIRED.finditer(text)] + [m.group(0) for m in _ZH_UNPAIRED.finditer(text)]


def _message_texts(messages: list[dict[str, Any]]) -> list[str]:
    texts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return texts


def messages_flip_blockers(messages: list[dict[str, Any]]) -> list[str]:
    """:func:`flip_blockers` over every text of a conversation.

    Args:
        messages: ``[{"role": ..., "content": str | list of parts}]``.
    """
    return [phrase for text in _message_texts(messages) for phrase in flip_blockers(text)]


def _match_case(template: str, word: str) -> str:
    if template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def swap_laterality(text: str) -> str:
    """Swap left and right in a text (English words and Chinese 左/右), preserving case.

    Args:
        text: any text.

    Returns:
        The text with "left" <-> "right" (and -ward/-wards forms, whole words only) and 左 <-> 右 swapped;
        "leftover", 左右, idioms such as "all right" and cardiac names ("right ventricle", 左心房) are
        unchanged. Applying it twice gives the input back.

    Raises:
        ValueError: the text names a structure without a left-right twin (see :func:`flip_blockers`).
    """
    blockers = flip_blockers(text)
    if blockers:
        raise ValueError(
            f"cannot mirror a text naming {', '.join(repr(b) for b in blockers)} (no left-right "
            f"counterpart); such a sample must not be flipped: {text!r}"
        )
    protected = [(m.start(), m.end()) for pattern in (_IDIOM, _EN_CARDIAC) for m in pattern.finditer(text)]
    zh_protected = [(m.start(), m.end()) for m in _ZH_CARDIAC.finditer(text)]

    def english(match: re.Match[str]) -> str:
        if any(start <= match.start() < end for start, end in protected):
            return match.group(0)
        word = match.group(0)
        return _match_case(word, _EN_PAIRS[word.lower()])

    def chinese(match: re.Match[str]) -> str:
        token = match.group(0)
        if len(token) == 2:  # 左右: "about" (5厘米左右) or "both sides", symmetric
            return token
        if any(start <= match.start() < end for start, end in zh_protected):
            return token
        return "右" if token == "左" else "左"

    # The protected spans are positions in the input: the Chinese pass (one character for one)
    # keeps them valid for the English pass, whose words change length ("left" -> "right").
    return _EN_WORD.sub(english, _ZH.sub(chinese, text))


def swap_laterality_in_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy of a message list with :func:`swap_laterality` applied to all text content.

    Args:
        messages: ``[{"role": ..., "content": str | list of parts}]``; parts with ``"text"`` are swapped.
    """
    out = []
    for message in messages:
        message = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = swap_laterality(content)
        elif isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part = {**part, "text": swap_laterality(part["text"])}
                parts.append(part)
            message["content"] = parts
        out.append(message)
    return out


def flip_volume_lr(volume: VolumeLike) -> VolumeLike:
    """Mirror a volume left-right in world space (the array flips, the affine stays).

    Args:
        volume: an object with ``array``/``affine`` (e.g. medvl's ``Volume``), a dict with those keys, or a
            bare array in medvl's SPL layout (W, the last axis, is the patient's right -> left).

    Returns:
        A new volume of the same kind.
    """
    if isinstance(volume, dict) or hasattr(volume, "array"):
        array = volume["array"] if isinstance(volume, dict) else volume.array
        affine = volume.get("affine") if isinstance(volume, dict) else getattr(volume, "affine", None)
        # The array axis whose direction has the largest RAS x component is the left-right axis.
        axis = 2 if affine is None else int(np.argmax(np.abs(np.asarray(affine)[0, :3])))
        flipped = np.ascontiguousarray(np.flip(np.asarray(array), axis=axis))
        if isinstance(volume, dict):
            return {**volume, "array": flipped}
        if dataclasses.is_dataclass(volume) and not isinstance(volume, type):
            return dataclasses.replace(volume, array=flipped)
        raise TypeError(f"cannot rebuild a flipped {type(volume).__name__}; pass a dataclass or dict")
    return np.ascontiguousarray(np.flip(np.asarray(volume), axis=-1))


def adjust_intensity(x: torch.Tensor, brightness: float = 0.0, contrast: float = 1.0) -> torch.Tensor:
    """``(x - mean) * contrast + mean + brightness`` with the mean over the whole sample.

    Args:
        x: one sample's tensor (C, ...) in the processor's output units.
        brightness: additive shift (same units as x).
        contrast: multiplicative factor around the mean.
    """
    mean = x.mean()
    return (x - mean) * contrast + mean + brightness


def rotate_scale(x: torch.Tensor, degrees: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Rotate by ``degrees`` (counter-clockwise as displayed) and zoom by ``scale`` in the (H, W) plane.

    Bilinear, border padding, aspect-correct for non-square images; D (for volumes) is untouched.

    Args:
        x: one sample, (C, H, W) or (C, D, H, W).
        degrees: rotation angle.
        scale: > 1 zooms in, < 1 zooms out.
    """
    if degrees == 0.0 and scale == 1.0:
        return x
    h, w = x.shape[-2], x.shape[-1]
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # affine_grid maps output -> input in normalised coords (x along W, y along H, y pointing down).
    # Rotate in pixel units, then convert: n_in = D^-1 R D n_out / scale, D = diag(W/2, H/2).
    rot = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    d = torch.diag(torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64))
    lin = (torch.linalg.inv(d) @ rot @ d / scale).to(torch.float32)
    if x.dim() == 3:
        theta = torch.zeros(1, 2, 3)
        theta[0, :, :2] = lin
    elif x.dim() == 4:
        theta = torch.zeros(1, 3, 4)
        theta[0, :2, :2] = lin
        theta[0, 2, 2] = 1.0  # z (D) unchanged
    else:
        raise ValueError(f"rotate_scale expects (C, H, W) or (C, D, H, W), got {tuple(x.shape)}")
    batch = x.unsqueeze(0).float()
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].to(x.dtype)


def rotate_scale_pil(image: Image.Image, degrees: float = 0.0, scale: float = 1.0) -> Image.Image:
    """:func:`rotate_scale` for a PIL image (counter-clockwise as displayed, about the centre, bilinear).

    Args:
        image: the image.
        degrees: rotation angle.
        scale: > 1 zooms in.
    """
    if degrees == 0.0 and scale == 1.0:
        return image
    # PIL's AFFINE data maps output pixel (x, y) to the input pixel; x right, y down.
    w, h = image.size
    cx, cy = w / 2.0, h / 2.0
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    data = (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)
    return image.transform(image.size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)


@dataclass
class AugmentConfig:
    """Training augmentation settings (all laterality-safe except the opt-in flip).

    Args:
        brightness: max absolute additive shift, in output units (uniform in [-b, b]).
        contrast: contrast factor drawn from [1 - c, 1 + c].
        rotate_degrees: max in-plane rotation (uniform in [-r, r]).
        scale: zoom factor drawn from [1 - s, 1 + s].
        flip_lr_prob: probability of a left-right flip of all media of a sample WITH left/right swapped
            in its text; 0 keeps laterality untouched.
        prob: probability that a sample is augmented at all.
    """

    brightness: float = 0.05
    contrast: float = 0.1
    rotate_degrees: float = 5.0
    scale: float = 0.05
    flip_lr_prob: float = 0.0
    prob: float = 1.0

    def __post_init__(self) -> None:
        for name in ("flip_lr_prob", "prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name in ("brightness", "contrast", "rotate_degrees", "scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.contrast >= 1 or self.scale >= 1:
            raise ValueError("contrast and scale must be < 1 (factors are drawn from [1 - x, 1 + x])")


class Augmenter:
    """Applies :class:`AugmentConfig` to one sample: its media tensors and its messages.

    Args:
        config: the settings (default: small laterality-safe jitter, no flip).
        training: False (the default) makes the augmenter the identity, as in evaluation.
        seed: seed of the augmenter's own random generator (reproducible runs).
    """

    def __init__(self, config: AugmentConfig | None = None, training: bool = False, seed: int = 0) -> None:
        self.config = config or AugmentConfig()
        self.training = training
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._worker_seed: int | None = None
        # flips drawn but not done because the sample names a structure without a twin
        self.flips_refused = 0

    def train(self, mode: bool = True) -> Augmenter:
        self.training = mode
        return self

    def eval(self) -> Augmenter:
        return self.train(False)

    def _uniform(self, low: float, high: float) -> float:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.seed != self._worker_seed:
            # A DataLoader worker holds a copy of this augmenter made when the epoch's workers start:
            # without a reseed every worker (and every epoch) would replay the same draws. The
            # worker's seed differs per worker and per epoch and follows the run's seed.
            self._worker_seed = worker.seed
            self.generator.manual_seed((self.seed * 1_000_003 + worker.seed) % (2**63))
        return float(low + (high - low) * torch.rand((), generator=self.generator))

    def _draw_flip(self, messages: list[dict[str, Any]]) -> bool:
        """Whether this sample is mirrored: drawn with ``flip_lr_prob``, refused when its text names a
        structure without a left-right twin (the draw is made either way, so the random stream does
        not depend on the text)."""
        cfg = self.config
        if cfg.flip_lr_prob <= 0 or self._uniform(0, 1) >= cfg.flip_lr_prob:
            return False
        if messages_flip_blockers(messages):
            self.flips_refused += 1
            return False
        return True

    def __call__(
        self,
        messages: list[dict[str, Any]],
        pixel_values: torch.Tensor | None = None,
        volume_values: torch.Tensor | None = None,
    ) -> tuple[list[dict[str, Any]], torch.Tensor | None, torch.Tensor | None]:
        """Augment one sample.

        Args:
            messages: the sample's conversation.
            pixel_values: its images, (N, C, H, W), or None.
            volume_values: its volumes, (N, C, D, H, W), or None.

        Returns:
            (messages, pixel_values, volume_values); unchanged objects when not training.
        """
        cfg = self.config
        if not self.training or self._uniform(0, 1) >= cfg.prob:
            return messages, pixel_values, volume_values
        if self._draw_flip(messages):
            # Mirror every medium of the sample and the words together, never one without the other.
            messages = swap_laterality_in_messages(messages)
            pixel_values = None if pixel_values is None else torch.flip(pixel_values, dims=[-1])
            volume_values = None if volume_values is None else torch.flip(volume_values, dims=[-1])
        pixel_values = None if pixel_values is None else self._jitter(pixel_values, expected_dim=4)
        volume_values = None if volume_values is None else self._jitter(volume_values, expected_dim=5)
        return messages, pixel_values, volume_values

    def augment_sample(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Augment a dataset sample before processing (``medvl.data.dataset``'s ``augment`` hook).

        Args:
            sample: ``{"messages": [...], "images": [PIL.Image], "volumes": [Volume-like], ...}``.

        Returns:
            A new dict with augmented ``messages``, ``images`` and ``volumes`` (other keys kept); the
            same dict when not training.
        """
        cfg = self.config
        if not self.training or self._uniform(0, 1) >= cfg.prob:
            return sample
        messages = sample.get("messages", [])
        images = list(sample.get("images") or [])
        volumes = list(sample.get("volumes") or [])
        if self._draw_flip(messages):
            messages = swap_laterality_in_messages(messages)
            images = [ImageOps.mirror(im) for im in images]
            volumes = [flip_volume_lr(v) for v in volumes]
        images = [self._jitter_pil(im) for im in images]
        return {**sample, "messages": messages, "images": images, "volumes": volumes}

    def augment_volume_values(self, volume_values: torch.Tensor) -> torch.Tensor:
        """Small in-plane rotation / scale and intensity jitter of processed volumes (the second hook of
        ``medvl.data.dataset``, after the volume processor; the flip is done by :meth:`augment_sample`).

        Args:
            volume_values: one sample's volumes, (N, C, D, H, W), in the processor's output units.

        Returns:
            The jittered tensor; the same tensor when not training or not drawn (``prob``).
        """
        if not self.training or self._uniform(0, 1) >= self.config.prob:
            return volume_values
        return self._jitter(volume_values, expected_dim=5)

    def _jitter_pil(self, image: Image.Image) -> Image.Image:
        cfg = self.config
        degrees = self._uniform(-cfg.rotate_degrees, cfg.rotate_degrees)
        zoom = self._uniform(1 - cfg.scale, 1 + cfg.scale)
        image = rotate_scale_pil(image, degrees, zoom)
        contrast = self._uniform(1 - cfg.contrast, 1 + cfg.contrast)
        brightness = self._uniform(-cfg.brightness, cfg.brightness)
        image = ImageEnhance.Contrast(image).enhance(contrast)
        return ImageEnhance.Brightness(image).enhance(1.0 + brightness)

    def _jitter(self, values: torch.Tensor, expected_dim: int) -> torch.Tensor:
        if values.dim() != expected_dim:
            raise ValueError(f"expected a {expected_dim}D media tensor, got shape {tuple(values.shape)}")
        cfg = self.config
        out = []
        for sample in values:
            degrees = self._uniform(-cfg.rotate_degrees, cfg.rotate_degrees)
            zoom = self._uniform(1 - cfg.scale, 1 + cfg.scale)
            sample = rotate_scale(sample, degrees, zoom)
            brightness = self._uniform(-cfg.brightness, cfg.brightness)
            contrast = self._uniform(1 - cfg.contrast, 1 + cfg.contrast)
            out.append(adjust_intensity(sample, brightness, contrast))
        return torch.stack(out)


__all__ = [
    "AugmentConfig",
    "Augmenter",
    "adjust_intensity",
    "flip_blockers",
    "flip_volume_lr",
    "messages_flip_blockers",
    "rotate_scale",
    "rotate_scale_pil",
    "swap_laterality",
    "swap_laterality_in_messages",
]
