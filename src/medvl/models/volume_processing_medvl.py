"""Deterministic 3D preprocessing for medvl: CT/MR volume -> `volume_values` tensor.

This file is copied into every checkpoint (``trust_remote_code``), so it imports only numpy, scipy,
torch, transformers and MONAI, and its sibling ``windows.py`` (the HU window presets) relatively.

Pipeline of the ``"standard"`` mode (every step is a constructor setting and can be switched off):

1. **Orientation** to ``axcodes`` (default ``"SPL"``) with MONAI ``Orientationd`` on a ``MetaTensor``
   that carries the voxel -> RAS affine. ``"SPL"`` gives a (D, H, W) array whose D index runs
   inferior -> superior, H anterior -> posterior (top of an axial slice = anterior) and W from the
   patient's right to the patient's left: shown as an axial image, the patient's left is on the right
   of the image (radiological convention). Orientation only permutes and flips axes (no resampling).
2. **Resampling** to ``target_spacing`` (mm, in output axis order D, H, W) with MONAI ``Spacingd``
   (trilinear, border padding). When an axis is downsampled and ``antialias`` is on, the volume is
   first smoothed with a Gaussian of sigma ``max(0, (target/current - 1) / 2)`` voxels on that axis,
   the rule of ``skimage.transform.resize`` that MONAI's ``Resize(anti_aliasing=True)`` also uses
   (integrated-Gaussian kernel as MONAI's ``GaussianSmooth``, edge mode ``nearest``; the resize of
   step 4 does the same).
3. **Foreground crop** (MONAI ``CropForegroundd``) to the bounding box of voxels above
   ``foreground_hu`` (HU). An all-background volume is left uncropped (with a warning).
4. **Shape**: ``shape_mode="resize"`` trilinear resize to ``target_shape`` (anti-aliased when
   shrinking), ``"pad_crop"`` centre pad (with ``pad_hu``) or crop to ``target_shape`` keeping the
   spacing, ``"fit"`` resize keeping the aspect ratio so that the volume fits, then pad.
   Steps 1-4 work in HU (see :meth:`MedVLVolumeProcessor.spatial`), so caches can store them.
5. **Intensity** (see :meth:`MedVLVolumeProcessor.intensity`): ``intensity="window"`` clips to an HU
   window (a preset name of ``windows.HU_WINDOWS`` or ``(center, width)``) and maps it linearly and *fixedly* onto
   ``output_range`` ((0, 1) or (-1, 1)); ``"minmax"`` maps each volume's own min..max instead (only
   when asked: it makes the same HU value mean different things in different volumes).
   ``"unit"`` is for volumes a release ships already scaled to 0..1 (M3D-Data's ``.npy``): no HU
   window, values clipped to 0..1 and mapped onto ``output_range``; the HU-based foreground crop is
   skipped and padding uses 0. A volume whose ``intensity`` attribute (or dict key) is ``"unit"``
   gets this mode whatever the processor's setting, because an HU window would turn it flat grey;
   the ``"medmvl"`` mode then starts from ``v * 255`` instead of its HU window.
6. **Channels**: 1, or 3 for slice-wise 2D encoders: the same window x3, or three windows
   (``channel_windows``) stacked as RGB; then optional per-channel ``image_mean`` / ``image_std``
   normalisation, like a 2D image processor.

The ``"medmvl"`` mode reproduces MedM-VL's CT-through-SigLIP preprocessing bit for bit (clip HU to
[-1000, 1000], ``(v + 1000) / 2000 * 255`` in float64, MONAI ``CropForeground`` of voxels > 0,
MONAI trilinear ``Resize`` to ``target_shape`` in float32, uint8 truncation, three identical channels,
``(x / 255 - 0.5) / 0.5``). It only applies the orientation step before that (a no-op for bare arrays).

The ``"ct_clip"`` mode reproduces CT-CLIP's preprocessing of CT-RATE volumes (the CTViT encoder's
input; ``scripts/data_inference_nii.py`` of github.com/ibrahimethemhamamci/CT-CLIP at commit a2a155c,
see ``docs/ctclip.md``): the array is used in its stored axis order, no reorientation ((i, j, k) ->
(D, H, W) = (k, i, j)); HU clipped to [-1000, 1000] in float64; trilinear resampling
(``torch.nn.functional.interpolate``, ``align_corners=False``) to ``target_spacing`` (default 1.5 mm
along D, 0.75 mm in-plane), new size ``int(n * current / target)`` per axis; division by 1000; float32;
centre crop / pad with -1 (the extra voxel of an odd difference at the end) to ``target_shape``
(default 240 x 480 x 480); one channel. ``"ct_clip_train"`` is the same with the order of CT-CLIP's
training loader (``scripts/data.py``): resample first, then clip. Spacing comes from the affine's
column lengths; CT-CLIP took it (and the rescale slope/intercept that turns stored values into HU)
from CT-RATE's metadata CSV, so a CT-RATE volume must reach this processor in HU with an affine that
carries the CSV spacing (the CT-RATE task adapter's job). Bare arrays are (D, H, W) at 1 mm.

Input volumes: objects with ``array`` and ``affine`` attributes (medvl's ``Volume``), dicts with those
keys, or bare 3D arrays, which are taken as already oriented with 1 mm voxels.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

import numpy as np
import torch
from transformers import BatchFeature

from .windows import resolve_window, window_bounds

if TYPE_CHECKING:
    from monai.data import MetaTensor

logger = logging.getLogger(__name__)

VOLUME_PROCESSOR_CONFIG_NAME = "volume_processor_config.json"

MODES = ("standard", "medmvl", "ct_clip", "ct_clip_train")
CT_CLIP_MODES = ("ct_clip", "ct_clip_train")
# the constructor's default shape; a ct_clip processor left at it takes CT-CLIP's shape instead
DEFAULT_TARGET_SHAPE = (32, 256, 256)
# CT-CLIP's preprocessing constants (scripts/data_inference_nii.py, CT-CLIP commit a2a155c)
CT_CLIP_SPACING = (1.5, 0.75, 0.75)  # mm, (D, H, W)
CT_CLIP_SHAPE = (240, 480, 480)  # (D, H, W)
CT_CLIP_HU_RANGE = (-1000.0, 1000.0)
CT_CLIP_PAD_VALUE = -1.0  # after the division by 1000
SHAPE_MODES = ("resize", "pad_crop", "fit", "none")
INTENSITY_MODES = ("window", "minmax", "none", "unit")


def axcodes_affine(spacing: Sequence[float] = (1.0, 1.0, 1.0), axcodes: str = "SPL") -> np.ndarray:
    """A voxel -> RAS affine whose axes point along ``axcodes`` with the given spacing (mm).

    Used for arrays stored already oriented (bare ndarrays, ``.npy`` files), so that orienting them to
    the same axcodes is a no-op.

    Args:
        spacing: voxel size per array axis, in mm.
        axcodes: three letters out of L/R, A/P, S/I (nibabel convention: the direction each index grows).
    """
    directions = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    codes = axcodes.upper()
    if len(codes) != 3 or any(c not in directions for c in codes) or len({directions[c][0] for c in codes}) != 3:
        raise ValueError(f"axcodes must name each of the axes L/R, A/P, S/I once, got {axcodes!r}")
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for col, (code, step) in enumerate(zip(codes, spacing)):
        row, sign = directions[code]
        affine[row, col] = sign * float(step)
    return affine


class VolumeLike(Protocol):
    """A loaded volume as the processor reads it (``medvl.imaging.volume3d.Volume`` is one).

    ``affine`` (4x4 voxel -> RAS), ``source`` and ``intensity`` are read when present.
    """

    @property
    def array(self) -> np.ndarray: ...


# What the processor accepts per volume: a Volume-like object, a dict with "array" (+ "affine",
# "source", "intensity"), or a bare 3D array / tensor taken as oriented with 1 mm voxels.
VolumeInput: TypeAlias = "VolumeLike | dict[str, Any] | np.ndarray | torch.Tensor"


def _as_triple(value: Sequence[float] | float | None, name: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (D, H, W), got {value!r}")
    return values[0], values[1], values[2]


def _as_int_triple(value: Sequence[int] | int | None, name: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    values = [int(value)] * 3 if isinstance(value, (int, float)) else [int(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (D, H, W), got {value!r}")
    return values[0], values[1], values[2]


class MedVLVolumeProcessor:
    """Turns 3D volumes into the ``volume_values`` tensor (N, C, D, H, W) of a medvl model.

    Args:
        mode: ``"standard"`` (the configurable pipeline), ``"medmvl"`` (MedM-VL's CT preprocessing,
            bit for bit; uses ``target_shape`` and ``axcodes`` only) or ``"ct_clip"`` /
            ``"ct_clip_train"`` (CT-CLIP's CT-RATE preprocessing of its evaluation / training loader;
            uses ``target_spacing`` (default (1.5, 0.75, 0.75)) and ``target_shape`` (default
            (240, 480, 480)) only, never reorients).
        axcodes: orientation of the output axes (nibabel codes); None keeps the input layout.
        target_spacing: voxel size (mm) of the output axes (D, H, W) before the shape step; None keeps it.
        antialias: Gaussian pre-filter when an axis is downsampled (spacing and resize steps).
        crop_foreground: crop to the bounding box of voxels above ``foreground_hu``.
        foreground_hu: HU threshold of the foreground crop (-500 keeps the body and table, drops air).
        target_shape: output (D, H, W); None keeps the shape (only valid for batches of equal shapes).
        shape_mode: ``"resize"``, ``"pad_crop"``, ``"fit"`` or ``"none"``.
        pad_hu: HU value used for padding (air).
        intensity: ``"window"`` (fixed mapping of an HU window), ``"minmax"`` (per volume) or ``"none"``
            (raw HU, float).
        window: HU window of the single channel (name, ``"custom:C,W"`` or (center, width)).
        output_range: the window's low..high are mapped onto this range, e.g. (0, 1) or (-1, 1).
        channels: 1 or 3.
        channel_windows: with ``channels=3``, one window per channel (e.g. lung, mediastinum, bone);
            None repeats the single-channel image three times.
        image_mean: per-channel mean subtracted after the intensity mapping (None: no normalisation).
        image_std: per-channel std divided after subtracting the mean.
        min_shape: smallest accepted input shape (D, H, W) after orientation, e.g. the patch size;
            smaller volumes raise an error naming the file.
    """

    model_input_names = ["volume_values"]

    def __init__(
        self,
        mode: str = "standard",
        axcodes: str | None = "SPL",
        target_spacing: Sequence[float] | float | None = None,
        antialias: bool = True,
        crop_foreground: bool = True,
        foreground_hu: float = -500.0,
        target_shape: Sequence[int] | None = DEFAULT_TARGET_SHAPE,
        shape_mode: str = "resize",
        pad_hu: float = -1024.0,
        intensity: str = "window",
        window: str | Sequence[float] = "wide",
        output_range: Sequence[float] = (0.0, 1.0),
        channels: int = 1,
        channel_windows: Sequence[str | Sequence[float]] | None = None,
        image_mean: Sequence[float] | float | None = None,
        image_std: Sequence[float] | float | None = None,
        min_shape: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        # Saved configs carry bookkeeping keys; anything else is a typo that must not pass silently.
        unknown = set(kwargs) - {"processor_class", "volume_processor_type"}
        if unknown:
            raise ValueError(
                f"unknown MedVLVolumeProcessor setting(s) {sorted(unknown)}; valid: {sorted(self._setting_names())}"
            )
        if mode not in MODES:
            raise ValueError(f"unknown volume processor mode {mode!r}; valid: {', '.join(MODES)}")
        if shape_mode not in SHAPE_MODES:
            raise ValueError(f"unknown shape_mode {shape_mode!r}; valid: {', '.join(SHAPE_MODES)}")
        if intensity not in INTENSITY_MODES:
            raise ValueError(f"unknown intensity {intensity!r}; valid: {', '.join(INTENSITY_MODES)}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if axcodes is not None:
            axcodes_affine((1, 1, 1), axcodes)  # validates the letters
        self.mode = mode
        self.axcodes = axcodes.upper() if axcodes is not None else None
        self.target_spacing = _as_triple(target_spacing, "target_spacing")
        self.antialias = bool(antialias)
        self.crop_foreground = bool(crop_foreground)
        self.foreground_hu = float(foreground_hu)
        self.target_shape = _as_int_triple(target_shape, "target_shape")
        self.shape_mode = shape_mode
        self.pad_hu = float(pad_hu)
        self.intensity = intensity
        resolve_window(window)
        self.window = list(window) if not isinstance(window, str) else window
        self.output_range = tuple(float(v) for v in output_range)
        if len(self.output_range) != 2 or self.output_range[0] == self.output_range[1]:
            raise ValueError(f"output_range must be two different numbers, got {output_range!r}")
        self.channels = int(channels)
        if channel_windows is not None:
            if self.channels != 3 or len(channel_windows) != 3:
                raise ValueError("channel_windows needs channels=3 and exactly three windows")
            for w in channel_windows:
                resolve_window(w)
            channel_windows = [w if isinstance(w, str) else list(w) for w in channel_windows]
        self.channel_windows = channel_windows
        self.image_mean = self._per_channel(image_mean, "image_mean")
        self.image_std = self._per_channel(image_std, "image_std")
        if (self.image_mean is None) != (self.image_std is None):
            raise ValueError("image_mean and image_std must be given together")
        if self.image_std is not None and any(s <= 0 for s in self.image_std):
            raise ValueError(f"image_std must be positive, got {self.image_std}")
        self.min_shape = _as_int_triple(min_shape, "min_shape")
        if self.mode == "medmvl":
            if self.target_shape is None:
                raise ValueError("mode='medmvl' needs target_shape = (slices, size, size)")
            self.channels = 3
        if self.mode in CT_CLIP_MODES:
            # CT-CLIP feeds the stored array axes; its constants are the defaults of a ct_clip processor
            self.axcodes = None
            self.channels = 1
            if self.target_spacing is None:
                self.target_spacing = CT_CLIP_SPACING
            if self.target_shape is None or target_shape is DEFAULT_TARGET_SHAPE:
                self.target_shape = CT_CLIP_SHAPE
        if self.target_shape is None and self.shape_mode != "none":
            self.shape_mode = "none"

    # ------------------------------------------------------------------ settings

    @classmethod
    def _setting_names(cls) -> list[str]:
        import inspect

        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]

    def _per_channel(self, value: Sequence[float] | float | None, name: str) -> list[float] | None:
        if value is None:
            return None
        values = [float(value)] * self.channels if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(values) != self.channels:
            raise ValueError(f"{name} needs {self.channels} value(s) (one per channel), got {value!r}")
        return values

    def to_dict(self) -> dict[str, Any]:
        """All settings as a JSON-serialisable dict (round-trips through :meth:`from_dict`)."""
        out: dict[str, Any] = {"volume_processor_type": type(self).__name__}
        for name in self._setting_names():
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> MedVLVolumeProcessor:
        """Rebuild a processor from :meth:`to_dict` output.

        Args:
            config: the settings; unknown keys raise ``ValueError`` listing the valid ones.
        """
        return cls(**dict(config))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``volume_processor_config.json`` into a directory.

        Args:
            save_directory: target directory (created if missing).
        """
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, VOLUME_PROCESSOR_CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json_string())
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> MedVLVolumeProcessor:
        """Load from a directory written by :meth:`save_pretrained`.

        Args:
            directory: local directory holding ``volume_processor_config.json``.
        """
        with open(os.path.join(directory, VOLUME_PROCESSOR_CONFIG_NAME), encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MedVLVolumeProcessor) and self.to_dict() == other.to_dict()

    @property
    def output_shape(self) -> tuple[int, int, int, int] | None:
        """(C, D, H, W) of every processed volume, or None when ``target_shape`` is None."""
        if self.target_shape is None:
            return None
        return (self.channels, *self.target_shape)

    # ------------------------------------------------------------------ entry points

    def __call__(
        self,
        volumes: VolumeInput | Sequence[VolumeInput],
        return_tensors: str | None = "pt",
        **_: Any,
    ) -> BatchFeature:
        """Preprocess one volume or a list of volumes.

        Args:
            volumes: a volume or a list of volumes (``Volume``-like objects, dicts with ``array`` and
                ``affine``, or 3D ndarrays/tensors taken as oriented with 1 mm voxels).
            return_tensors: ``"pt"`` (default) or ``"np"``.

        Returns:
            ``BatchFeature`` with ``volume_values`` of shape (N, C, D, H, W), float32.
        """
        # one volume, or a list / tuple of them (arrays, tensors, dicts and Volumes are not Sequences)
        items: list[VolumeInput] = list(volumes) if isinstance(volumes, Sequence) else [volumes]
        arrays = [self.preprocess(v) for v in items]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"processed volumes have different shapes {sorted(shapes)}; set target_shape to batch them"
            )
        if arrays:
            stacked = np.stack(arrays).astype(np.float32, copy=False)
        else:
            d, h, w = self.target_shape or (0, 0, 0)
            stacked = np.zeros((0, self.channels, d, h, w), dtype=np.float32)
        values: torch.Tensor | np.ndarray = (
            torch.from_numpy(np.ascontiguousarray(stacked)) if return_tensors == "pt" else stacked
        )
        return BatchFeature({"volume_values": values})

    def preprocess(self, volume: VolumeInput) -> np.ndarray:
        """One volume -> float32 array (C, D, H, W).

        Args:
            volume: see :meth:`__call__`.
        """
        unit = self.intensity == "unit" or _volume_intensity(volume) == "unit"
        if self.mode == "medmvl":
            array, _, source = self._oriented(volume)
            return self._medmvl(array, source, unit=unit)
        if self.mode in CT_CLIP_MODES:
            if unit:  # CT-CLIP's steps are defined on HU; 0..1 data would come out as a flat volume
                raise ValueError(
                    f"mode {self.mode!r} needs a volume in HU, got one already scaled to 0..1 (intensity 'unit')"
                )
            return self._ct_clip(volume)
        if unit and self.intensity != "unit":
            return self.as_unit().preprocess(volume)
        hu, _ = self.spatial(volume)
        return self.intensity_map(hu)

    def as_unit(self) -> MedVLVolumeProcessor:
        """A copy for volumes already in 0..1: ``intensity="unit"``, no HU foreground crop, 0 padding."""
        settings = self.to_dict()
        settings.update(intensity="unit", crop_foreground=False, pad_hu=0.0)
        return type(self).from_dict(settings)

    # ------------------------------------------------------------------ steps

    @staticmethod
    def _unpack(volume: VolumeInput) -> tuple[np.ndarray, np.ndarray | None, str]:
        if isinstance(volume, dict):
            array, affine, source = volume.get("array"), volume.get("affine"), volume.get("source")
        elif hasattr(volume, "array"):
            array, affine, source = volume.array, getattr(volume, "affine", None), getattr(volume, "source", None)
        else:
            array, affine, source = volume, None, None
        if array is None:
            raise ValueError(f"volume {volume!r} has no 'array'")
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        array = np.asarray(array)
        return array, None if affine is None else np.asarray(affine, dtype=np.float64), str(source or "<array>")

    def _oriented(self, volume: VolumeInput) -> tuple[np.ndarray, np.ndarray, str]:
        """Validate and orient; returns (array float32-or-int, affine, source)."""
        array, affine, source = self._unpack(volume)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]  # (1, D, H, W), a single-channel volume stored channel-first (M3D-Data)
        if array.ndim != 3:
            raise ValueError(f"{source}: a volume must be 3D (i, j, k), got shape {tuple(array.shape)}")
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise ValueError(f"{source}: volume has non-numeric dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise ValueError(f"{source}: volume has {bad} NaN or infinite voxel(s)")
        if min(array.shape) == 0:
            raise ValueError(f"{source}: volume is empty, shape {tuple(array.shape)}")
        if affine is None:
            # Bare arrays are taken as already in the output orientation with 1 mm voxels.
            affine = axcodes_affine((1.0, 1.0, 1.0), self.axcodes or "SPL")
        elif affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError(f"{source}: affine must be a finite, invertible 4x4 matrix, got {affine!r}")
        if self.axcodes is not None:
            array, affine = self._orient(array, affine)
        if self.min_shape is not None and any(s < m for s, m in zip(array.shape, self.min_shape)):
            raise ValueError(
                f"{source}: volume shape {tuple(array.shape)} (D, H, W after orientation) is smaller than the "
                f"minimum {self.min_shape}"
            )
        return array, affine, source

    def _orient(self, array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from monai.data import MetaTensor
        from monai.transforms import Orientationd

        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], affine=torch.from_numpy(affine))
        # MONAI's dict transforms are annotated as returning plain tensors; they return MetaTensors
        out = cast(
            "MetaTensor", Orientationd(keys="image", axcodes=self.axcodes, labels=None)({"image": image})["image"]
        )
        return out.as_tensor()[0].numpy(), out.affine.numpy().astype(np.float64)

    def spatial(self, volume: VolumeInput) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1-4 (orientation, spacing, foreground crop, shape), all in HU.

        Args:
            volume: see :meth:`__call__`.

        Returns:
            (float32 HU array (D, H, W), its voxel -> RAS affine after orientation and resampling;
            the crop/resize of step 3-4 is not reflected in the affine).
        """
        from monai.data import MetaTensor

        if self.mode in CT_CLIP_MODES:
            raise ValueError(
                f"volume processor mode {self.mode!r} has no separate HU stage (it resamples after "
                "clipping): cache its final float32 output instead of int16 HU"
            )
        array, affine, source = self._oriented(volume)
        image = MetaTensor(torch.from_numpy(array.astype(np.float32))[None], affine=torch.from_numpy(affine))
        if self.target_spacing is not None:
            image = self._resample(image, self.target_spacing)
            affine = image.affine.numpy().astype(np.float64)
        if self.crop_foreground:
            image = self._crop(image, source)
        image = self._shape(image)
        return image.as_tensor()[0].numpy().astype(np.float32, copy=False), affine

    def _resample(self, image: MetaTensor, target_spacing: tuple[float, float, float]) -> MetaTensor:
        from monai.transforms import Spacingd

        current = np.sqrt((image.affine.numpy()[:3, :3] ** 2).sum(axis=0))
        image = self._antialias(image, np.asarray(target_spacing) / current)
        spacing = Spacingd(
            keys="image", pixdim=target_spacing, mode="bilinear", padding_mode="border", dtype=np.float32
        )
        return cast("MetaTensor", spacing({"image": image})["image"])

    def _antialias(self, image: MetaTensor, factors: np.ndarray) -> MetaTensor:
        """Gaussian pre-filter before downsampling by ``factors`` (> 1 = fewer voxels) per axis.

        sigma = max(0, (factor - 1) / 2) voxels, the rule of ``skimage.transform.resize`` and of MONAI's
        ``Resize(anti_aliasing=True)``. The kernel is the integrated (erf) Gaussian that MONAI's
        ``GaussianSmooth`` uses (a sampled Gaussian of sigma 0.5 barely attenuates the Nyquist
        frequency), truncated at 4 sigma, applied per axis with ``scipy.ndimage.correlate1d`` (edge mode
        ``nearest``): several times faster than MONAI's convolution on CT-sized volumes.
        """
        from monai.data import MetaTensor
        from scipy.ndimage import correlate1d
        from scipy.special import erf

        if not self.antialias or not (np.asarray(factors) > 1).any():
            return image
        data = image.as_tensor().numpy()[0].astype(np.float32, copy=True)
        for axis, factor in enumerate(factors):
            sigma = max(0.0, (float(factor) - 1.0) / 2.0)
            if sigma <= 0:
                continue
            radius = int(math.ceil(4.0 * sigma))
            x = np.arange(-radius, radius + 1, dtype=np.float64)
            scale = 1.0 / (sigma * math.sqrt(2.0))
            kernel = 0.5 * (erf((x + 0.5) * scale) - erf((x - 0.5) * scale))
            kernel /= kernel.sum()
            data = correlate1d(data, kernel.astype(np.float32), axis=axis, mode="nearest")
        out = MetaTensor(torch.from_numpy(np.ascontiguousarray(data))[None])
        return out.copy_meta_from(image)

    def _crop(self, image: MetaTensor, source: str) -> MetaTensor:
        from monai.transforms import CropForegroundd

        threshold = self.foreground_hu
        if not bool((image > threshold).any()):
            logger.warning("%s: no voxel above %s HU; foreground crop skipped", source, threshold)
            return image
        crop = CropForegroundd(
            keys="image", source_key="image", select_fn=lambda x: x > threshold, margin=0, allow_smaller=True
        )
        return cast("MetaTensor", crop({"image": image})["image"])

    def _shape(self, image: MetaTensor) -> MetaTensor:
        from monai.transforms import Resized, ResizeWithPadOrCropd

        if self.shape_mode == "none" or self.target_shape is None:  # __init__ sets "none" without a shape
            return image
        target = list(self.target_shape)
        if self.shape_mode == "resize":
            image = self._antialias(image, np.asarray(image.shape[1:]) / np.asarray(target))
            return cast(
                "MetaTensor", Resized(keys="image", spatial_size=target, mode="trilinear")({"image": image})["image"]
            )
        if self.shape_mode == "fit":
            shape = image.shape[1:]
            scale = min(t / s for t, s in zip(target, shape))
            fitted = [max(1, min(t, int(math.floor(s * scale + 0.5)))) for t, s in zip(target, shape)]
            image = self._antialias(image, np.asarray(shape) / np.asarray(fitted))
            image = cast(
                "MetaTensor", Resized(keys="image", spatial_size=fitted, mode="trilinear")({"image": image})["image"]
            )
        pad = ResizeWithPadOrCropd(keys="image", spatial_size=target, mode="constant", value=self.pad_hu)
        return cast("MetaTensor", pad({"image": image})["image"])

    def intensity_map(self, hu: np.ndarray) -> np.ndarray:
        """Step 5-6: HU (D, H, W) -> float32 (C, D, H, W) in ``output_range``, then mean/std.

        Args:
            hu: HU array, e.g. the first output of :meth:`spatial` (or a cached copy of it).
        """
        hu = np.asarray(hu, dtype=np.float32)
        if self.channels == 3 and self.channel_windows is not None:
            planes = [self._map(hu, w) for w in self.channel_windows]
        else:
            planes = [self._map(hu, self.window)] * self.channels
        out = np.stack(planes).astype(np.float32, copy=False)
        if self.image_mean is not None:
            mean = np.asarray(self.image_mean, dtype=np.float32).reshape(-1, 1, 1, 1)
            std = np.asarray(self.image_std, dtype=np.float32).reshape(-1, 1, 1, 1)
            out = (out - mean) / std
        return out

    def _map(self, hu: np.ndarray, window: str | Sequence[float]) -> np.ndarray:
        low_out, high_out = self.output_range
        if self.intensity == "none":
            return hu.copy()
        if self.intensity == "unit":
            unit = np.clip(hu, 0.0, 1.0).astype(np.float32)
            return (np.float32(low_out) + unit * np.float32(high_out - low_out)).astype(np.float32)
        if self.intensity == "minmax":
            low, high = float(hu.min()), float(hu.max())
            if high <= low:
                return np.full_like(hu, low_out)
        else:
            low, high = window_bounds(window)
        unit = (np.clip(hu, low, high) - np.float32(low)) / np.float32(high - low)
        return (np.float32(low_out) + unit * np.float32(high_out - low_out)).astype(np.float32)

    def _ct_clip(self, volume: VolumeInput) -> np.ndarray:
        """CT-CLIP's CT-RATE preprocessing (``scripts/data_inference_nii.py`` / ``data.py``) -> (1, D, H, W)."""
        target_spacing, target_shape = self.target_spacing, self.target_shape
        if target_spacing is None or target_shape is None:  # __init__ sets both in the ct_clip modes
            raise ValueError(f"mode {self.mode!r} needs target_spacing and target_shape")
        bare = self._unpack(volume)[1] is None
        array, affine, _ = self._oriented(volume)  # validation only: axcodes is None in these modes
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        if not bare:  # a NIfTI-like (i, j, k) array: CT-CLIP's transpose(2, 0, 1) makes it (D, H, W)
            array, spacing = array.transpose(2, 0, 1), spacing[[2, 0, 1]]
        low, high = CT_CLIP_HU_RANGE
        hu = array.astype(np.float64)  # nibabel's get_fdata: CT-CLIP works in float64 up to the division
        if self.mode == "ct_clip":
            hu = np.clip(hu, low, high)
        # CT-CLIP's resize_array: scaling factor current / target, new size int(n * factor)
        size = [int(n * (float(cur) / float(tgt))) for n, cur, tgt in zip(hu.shape, spacing, target_spacing)]
        if min(size) < 1:
            raise ValueError(f"volume of shape {hu.shape} and spacing {tuple(spacing)} shrinks to {size} voxels")
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(hu))[None, None], size=size, mode="trilinear", align_corners=False
        )[0, 0].numpy()
        if self.mode == "ct_clip_train":
            resized = np.clip(resized, low, high)
        scaled = (resized / 1000).astype(np.float32)
        # centre crop, then pad with -1 (CT-CLIP: start (n - t) // 2; pad t - n split with the odd voxel after)
        slices, pads = [], []
        for n, target in zip(scaled.shape, target_shape):
            start = max((n - target) // 2, 0)
            end = min(start + target, n)
            slices.append(slice(start, end))
            before = (target - (end - start)) // 2
            pads.append((before, target - (end - start) - before))
        out = np.pad(scaled[tuple(slices)], pads, mode="constant", constant_values=np.float32(CT_CLIP_PAD_VALUE))
        return out[None].astype(np.float32, copy=False)

    def _medmvl(self, array: np.ndarray, source: str, unit: bool = False) -> np.ndarray:
        """MedM-VL's CT preprocessing (its dataset + SigLIP processor), bit for bit.

        ``unit``: the volume is already in 0..1, so ``v * 255`` replaces the HU window.
        """
        from monai.transforms import CropForeground, Resize

        if self.target_shape is None:  # __init__ refuses mode "medmvl" without one
            raise ValueError("mode='medmvl' needs target_shape = (slices, size, size)")
        if unit:
            scaled = np.clip(array.astype(np.float64), 0, 1) * 255
        else:
            scaled = (np.clip(array.astype(np.float64), -1000, 1000) + 1000) / 2000 * 255
        if not (scaled > 0).any():
            raise ValueError(f"{source}: volume is all air (<= -1000 HU); MedM-VL's foreground crop would be empty")
        # MONAI takes ndarrays here (NdarrayOrTensor) though its annotation says Tensor; the ndarray
        # path is MedM-VL's, kept bit for bit
        cropped = CropForeground()(scaled[None])  # type: ignore[arg-type]
        resized = Resize(spatial_size=list(self.target_shape), mode="trilinear")(cropped)
        u8 = torch.as_tensor(resized).as_subclass(torch.Tensor).to(torch.uint8).numpy()  # truncation, as MedM-VL
        # SigLIP's image processor: rescale in float64, cast to float32, normalise in float32.
        rescaled = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)
        normed = (rescaled - np.float32(0.5)) / np.float32(0.5)
        return np.repeat(normed, 3, axis=0)


def _volume_intensity(volume: VolumeInput) -> str:
    """The ``intensity`` a volume declares (``"hu"`` when it says nothing)."""
    if isinstance(volume, dict):
        return str(volume.get("intensity") or "hu")
    return str(getattr(volume, "intensity", None) or "hu")


__all__ = [
    "CT_CLIP_SHAPE",
    "CT_CLIP_SPACING",
    "MedVLVolumeProcessor",
    "VolumeInput",
    "VolumeLike",
    "axcodes_affine",
]
