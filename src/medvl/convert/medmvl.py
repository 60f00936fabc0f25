"""Import MedM-VL checkpoints (github.com/MSIIP/MedM-VL) as self-contained medvl checkpoints.

A MedM-VL checkpoint folder holds ``config.json`` with only ``lvlm_*`` fields (no architecture), the
weights of every part (``llm.*``, ``encoder_image.encoder.*`` / ``encoder_image3d.encoder.*``,
``connector_image.*`` / ``connector_image3d.*``) and a tokenizer. MedM-VL rebuilds the LLM and the
encoders from the folders (usually hub ids) named in the config; here the user passes local folders
(``--llm``, ``--vision``, ``--volume``) holding at least their ``config.json`` (+ tokenizer for the LLM,
+ ``preprocessor_config.json`` for a 2D tower). No weights are needed from them: every weight comes
from the checkpoint.

What the importer reproduces (see ``docs/medm-vl.md``):

* the ``qwen2`` conversation format (Vicuna-style text ending in ``" ASSISTANT:"``, answers closed by
  ``<|im_end|>``), tokenised chunk-wise around the media markers (special marker tokens do that);
* the image processor of the tower; for CT through a 2D tower, MedM-VL's HU -> 0..255 map,
  foreground crop, trilinear resize to 32 slices and uint8 truncation (volume processor ``medmvl``);
* feature selection (``hidden_states[select_layer]`` without post-layernorm; ``patch`` drops token 0);
* the connectors: ``mlp`` (``mlpNx_gelu``), ``attn_pooling`` (learned queries, 8 heads, then the MLP),
  ``spatial_pooling`` (2x2x2 average pooling over the 3D patch grid, then the MLP);
* a tied LM head when the checkpoint stores none and the LLM config says ``tie_word_embeddings``;
* greedy generation without the LLM's hub generation config (MedM-VL never applies it after a reload).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

ENCODER_2D_TYPES = ("clip", "siglip")
ENCODER_3D_TYPES = ("medmclip", "m3dclip")
CONNECTOR_TYPES = ("mlp", "attn_pooling", "spatial_pooling")
SELECT_FEATURES = ("patch", "cls_patch")
# MedM-VL's attn_pooling hard-codes its head count (not in any config).
ATTN_POOLING_HEADS = 8
# MedM-VL's spatial_pooling hard-codes a 2x2x2 average pooling.
SPATIAL_POOLING_SIZE = 2
# MedM-VL's CT-through-2D-tower preprocessing resizes every volume to this many slices.
MEDMVL_CT_SLICES = 32
# Why a MedM-VL checkpoint with the CT-CLIP encoder is refused (facts from MedM-VL's code,
# lvlm/model/encoder/ctclip.py and lvlm/model/encoder/__init__.py at github.com/MSIIP/MedM-VL b1b0770).
CTCLIP_REFUSAL = (
    "MedM-VL's 'ctclip' 3D encoder has no well-defined saved layout, so it is not imported: MedM-VL's "
    "encoder factory (lvlm/model/encoder/__init__.py) does not register 'ctclip', so its training and "
    "loading code cannot build such a model; CTCLIPModel.load_pretrained_weights reads an undefined "
    "`config` (the CTViT weights path is never stored); its Image3DProcessor resizes volumes to 32x256x256 "
    "while CTViT asserts a 480x480 in-plane input; and the encoder's config is read with "
    "AutoConfig.from_pretrained from a .pt path. No MedM-VL release uses it. Build the same architecture "
    "natively instead: `medvl build` with `volume: {encoder: ctvit, path: <folder with CT-CLIP's "
    "visual-transformer weights>}` (see configs/ct-rate/ and docs/ctclip.md)."
)


class MedMVLConversionError(ValueError):
    """A MedM-VL checkpoint cannot be converted (missing part folder, unknown layout, bad weights)."""


@dataclass
class EncoderSpec:
    """One MedM-VL encoder + connector pair, as its ``lvlm_*`` config fields describe it.

    Args:
        role: ``"image"`` (the 2D tower) or ``"image3d"`` (the 3D encoder).
        type: MedM-VL encoder type (``clip``, ``siglip``, ``medmclip``, ``m3dclip``).
        name_or_path: the hub id or path MedM-VL's config names.
        select_layer: index into the tower's hidden states.
        select_feature: ``patch`` (drop token 0) or ``cls_patch`` (keep all tokens).
        connector_type: ``mlp``, ``attn_pooling`` or ``spatial_pooling``.
        connector_name: e.g. ``mlp2x_gelu``.
    """

    role: str
    type: str
    name_or_path: str
    select_layer: int
    select_feature: str
    connector_type: str
    connector_name: str

    @property
    def mlp_depth(self) -> int:
        return parse_mlp_name(self.connector_name)[0]

    @property
    def mlp_act(self) -> str:
        return parse_mlp_name(self.connector_name)[1]


@dataclass
class MedMVLLayout:
    """Everything the ``lvlm_*`` fields of a MedM-VL ``config.json`` say about the model."""

    llm_type: str
    llm_name_or_path: str
    llm_max_length: int
    image: EncoderSpec | None = None
    image3d: EncoderSpec | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def volume_through_2d(self) -> bool:
        """MedM-VL routes ``image3d`` inputs slice by slice through the 2D tower when it has no 3D encoder."""
        return self.image is not None and self.image3d is None


@dataclass
class MedMVLParts:
    """Local folders of the parts a MedM-VL checkpoint names."""

    llm: Path
    vision: Path | None = None
    volume: Path | None = None


def parse_mlp_name(name: str) -> tuple[int, str]:
    """Parse MedM-VL's connector name ``mlp<N>x_<act>`` into (depth, activation).

    Args:
        name: e.g. ``"mlp2x_gelu"``.
    """
    m = re.fullmatch(r"mlp(\d+)x_(gelu|relu)", name or "")
    if not m:
        raise MedMVLConversionError(
            f"unknown MedM-VL connector name {name!r}; valid names look like 'mlp2x_gelu' or 'mlp1x_relu' "
            "(mlp<depth>x_<gelu|relu>)"
        )
    return int(m.group(1)), m.group(2)


def _choice(cfg: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = cfg.get(key)
    if value not in choices:
        raise MedMVLConversionError(
            f"config.json field {key}={value!r} is not supported; valid choices: {', '.join(choices)}"
        )
    return value


def read_layout(src: str | Path) -> MedMVLLayout:
    """Read a MedM-VL checkpoint's ``config.json`` into a :class:`MedMVLLayout`.

    Args:
        src: the MedM-VL checkpoint folder.
    """
    path = Path(src) / "config.json"
    if not path.is_file():
        raise MedMVLConversionError(f"{src}: no config.json; is this a MedM-VL checkpoint folder?")
    from medvl.utils.files import read_json

    cfg = read_json(path, "MedM-VL config")
    if "lvlm_llm_name_or_path" not in cfg:
        raise MedMVLConversionError(
            f"{path}: not a MedM-VL config (no lvlm_llm_name_or_path field; model_type={cfg.get('model_type')!r})"
        )
    layout = MedMVLLayout(
        llm_type=str(cfg.get("lvlm_llm_type")),
        llm_name_or_path=cfg["lvlm_llm_name_or_path"],
        llm_max_length=int(cfg.get("lvlm_llm_max_length") or 2048),
        raw=cfg,
    )
    if cfg.get("lvlm_encoder_image3d_type") == "ctclip":
        raise MedMVLConversionError(f"{path}: {CTCLIP_REFUSAL}")
    for role, types in (("image", ENCODER_2D_TYPES), ("image3d", ENCODER_3D_TYPES)):
        if cfg.get(f"lvlm_encoder_{role}_type") is None:
            continue
        spec = EncoderSpec(
            role=role,
            type=_choice(cfg, f"lvlm_encoder_{role}_type", types),
            name_or_path=cfg.get(f"lvlm_encoder_{role}_name_or_path") or "",
            select_layer=int(cfg.get(f"lvlm_encoder_{role}_select_layer", -1)),
            select_feature=_choice(cfg, f"lvlm_encoder_{role}_select_feature", SELECT_FEATURES),
            connector_type=_choice(cfg, f"lvlm_connector_{role}_type", CONNECTOR_TYPES),
            connector_name=cfg.get(f"lvlm_connector_{role}_name") or "",
        )
        parse_mlp_name(spec.connector_name)  # validate early
        setattr(layout, role, spec)
    if layout.image is None and layout.image3d is None:
        raise MedMVLConversionError(f"{path}: neither lvlm_encoder_image_type nor lvlm_encoder_image3d_type is set")
    return layout


def _candidate(src: Path, named: str) -> Path | None:
    """Where MedM-VL's config path field may point locally.

    MedM-VL resolves it against its working directory, usually the folder that holds the checkpoint;
    try the checkpoint folder, its parent, then the current directory (or an absolute path).
    """
    if not named:
        return None
    for p in (src / named, src.parent / named, Path(named)):
        if p.is_dir():
            return p
    return None


def resolve_parts(
    src: str | Path,
    layout: MedMVLLayout,
    llm: str | Path | None = None,
    vision: str | Path | None = None,
    volume: str | Path | None = None,
) -> MedMVLParts:
    """Find the local folders of the parts the checkpoint names; raise one error naming all missing ones.

    Args:
        src: the MedM-VL checkpoint folder (relative part paths are resolved against it, its parent, then the cwd).
        layout: from :func:`read_layout`.
        llm: local folder of the LLM (config.json + tokenizer files; weights not needed).
        vision: local folder of the 2D tower (config.json + preprocessor_config.json).
        volume: local folder of the 3D encoder (config.json).
    """
    src = Path(src)
    wanted: list[tuple[str, str, str, Path | None, tuple[str, ...]]] = [
        ("llm", "--llm", layout.llm_name_or_path, Path(llm) if llm else None, ("config.json",)),
    ]
    if layout.image is not None:
        wanted.append(
            (
                "vision",
                "--vision",
                layout.image.name_or_path,
                Path(vision) if vision else None,
                ("config.json", "preprocessor_config.json"),
            )
        )
    if layout.image3d is not None:
        wanted.append(
            ("volume", "--volume", layout.image3d.name_or_path, Path(volume) if volume else None, ("config.json",))
        )
    found: dict[str, Path] = {}
    problems: list[str] = []
    what = {
        "llm": "the LLM (its config.json and tokenizer files)",
        "vision": "the 2D vision tower (its config.json and preprocessor_config.json)",
        "volume": "the 3D encoder (its config.json)",
    }
    for key, flag, named, given, files in wanted:
        folder = given if given is not None else _candidate(src, named)
        if folder is None:
            problems.append(f"  {flag} DIR: {what[key]} that config.json names {named!r}; not found locally")
            continue
        lacking = [f for f in files if not (folder / f).is_file()]
        if lacking:
            problems.append(f"  {flag} {folder}: lacks {', '.join(lacking)} ({what[key]} named {named!r})")
            continue
        wrong = _wrong_part(key, folder)
        if wrong:
            problems.append(f"  {flag} {folder}: {wrong} ({what[key]} named {named!r})")
            continue
        found[key] = folder
    if problems:
        raise MedMVLConversionError(
            f"cannot convert MedM-VL checkpoint {src}: MedM-VL rebuilds its parts from the folders its config "
            "names, and these are missing. Download them elsewhere (config + tokenizer / preprocessor files are "
            "enough; weights come from the checkpoint) and pass:\n" + "\n".join(problems)
        )
    return MedMVLParts(llm=found["llm"], vision=found.get("vision"), volume=found.get("volume"))


def _wrong_part(key: str, folder: Path) -> str | None:
    """Why a part folder holds the wrong kind of model (e.g. ``--llm`` pointed at a vision tower), or None."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from medvl.utils.files import TOKENIZER_FILES, read_json

    config = read_json(folder / "config.json", "config")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if key == "llm":
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not (config.get("architectures") or [""])[
            0
        ].endswith("ForCausalLM"):
            return (
                f"holds a {model_type!r} model, not a causal language model (config.json model_type); "
                "point --llm at the LLM's folder"
            )
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            return f"has no tokenizer files ({' / '.join(TOKENIZER_FILES)})"
    elif model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "vision_config" not in config:
        return f"holds a causal language model ({model_type!r}), not a vision encoder"
    return None


def load_state_dict(src: str | Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a MedM-VL checkpoint (single or sharded safetensors, or pytorch .bin).

    Args:
        src: the MedM-VL checkpoint folder.
    """
    from safetensors.torch import load_file

    from medvl.utils.files import check_weights

    src = Path(src)
    check_weights(src)  # a truncated file is named here, not reported as "incomplete metadata"
    files: list[Path]
    if (src / "model.safetensors.index.json").is_file():
        index = json.loads((src / "model.safetensors.index.json").read_text())
        files = [src / f for f in sorted(set(index["weight_map"].values()))]
    elif (src / "model.safetensors").is_file():
        files = [src / "model.safetensors"]
    elif (src / "pytorch_model.bin.index.json").is_file():
        index = json.loads((src / "pytorch_model.bin.index.json").read_text())
        files = [src / f for f in sorted(set(index["weight_map"].values()))]
    elif (src / "pytorch_model.bin").is_file():
        files = [src / "pytorch_model.bin"]
    else:
        raise MedMVLConversionError(f"{src}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise MedMVLConversionError(f"{src}: shard {f.name} named in the index is missing")
        part = load_file(f) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True)
        sd.update(part)
    return sd


def split_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split MedM-VL's flat state dict by part, stripping the MedM-VL prefixes.

    Returns keys ``llm`` (Hugging Face causal-LM names), ``vision`` (HF vision-tower names, with
    transformers 4's ``vision_model.`` level kept as saved), ``volume`` (the 3D encoder's vision part,
    ``vision_encoder.`` stripped; MedM-CLIP's text encoder and logit scale are dropped),
    ``connector_image`` and ``connector_image3d``.

    Args:
        sd: the flat state dict from :func:`load_state_dict`.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {
        k: {} for k in ("llm", "vision", "volume", "connector_image", "connector_image3d")
    }
    prefixes = (
        ("llm.", "llm"),
        ("encoder_image.encoder.", "vision"),
        ("encoder_image3d.encoder.", "volume"),
        ("connector_image.", "connector_image"),
        ("connector_image3d.", "connector_image3d"),
    )
    unknown = []
    for key, value in sd.items():
        for prefix, part in prefixes:
            if key.startswith(prefix):
                parts[part][key[len(prefix) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise MedMVLConversionError(
            f"unexpected weights in the MedM-VL checkpoint (not under llm./encoder_image./encoder_image3d./"
            f"connector_image./connector_image3d.): {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
        )
    volume = parts["volume"]
    if volume:
        # Only the vision half of a 3D CLIP is used by MedM-VL.
        parts["volume"] = {k[len("vision_encoder.") :]: v for k, v in volume.items() if k.startswith("vision_encoder.")}
    return parts


# ----------------------------------------------------------------------------- config translation
def _feature_select(spec: EncoderSpec, prefix_tokens: int) -> str:
    """MedM-VL ``select_feature`` -> medvl feature select.

    ``cls_patch`` keeps every token (medvl "all"); ``patch`` drops token 0, which is the CLS token of
    CLIP / MedM-CLIP / M3D-CLIP (medvl "patch"). On SigLIP (no CLS) MedM-VL's ``patch`` would drop a real
    patch, which no medvl model does on purpose.
    """
    if spec.select_feature == "cls_patch":
        return "all"
    if prefix_tokens != 1:
        raise MedMVLConversionError(
            f"lvlm_encoder_{spec.role}_select_feature='patch' on a {spec.type} tower drops its first real patch "
            "token in MedM-VL (the tower has no CLS token); medvl cannot reproduce that layout. "
            "Valid combinations: siglip + cls_patch, clip + patch, clip + cls_patch, medmclip/m3dclip + patch/cls_patch"
        )
    return "patch"


def _connector(spec: EncoderSpec, connector_sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    depth, act = parse_mlp_name(spec.connector_name)
    # MedM-VL's connectors have no LayerNorm anywhere.
    if spec.connector_type == "mlp":
        return {"type": "mlp", "depth": depth, "activation": act, "layer_norm": False}
    if spec.connector_type == "attn_pooling":
        if "query" not in connector_sd:
            raise MedMVLConversionError(f"connector_{spec.role}.query missing from the checkpoint (attn_pooling)")
        return {
            "type": "attn_pool",
            "depth": depth,
            "activation": act,
            "num_queries": int(connector_sd["query"].shape[0]),
            "num_heads": ATTN_POOLING_HEADS,
            "layer_norm": False,
        }
    s = SPATIAL_POOLING_SIZE
    return {"type": "spatial_pool", "depth": depth, "activation": act, "pool_stride": [s, s, s], "layer_norm": False}


def _medmclip_vit3d(cfg: dict[str, Any]) -> dict[str, Any]:
    """MedM-CLIP config (hidden_size, image_size, image_patch_size, frame_size, ...) -> Vit3DConfig kwargs."""
    from medvl.models.vit3d import vit3d_config_from_clip

    try:
        return vit3d_config_from_clip(cfg, "medmclip")
    except ValueError as err:
        raise MedMVLConversionError(str(err)) from None


def _m3dclip_vit3d(cfg: dict[str, Any]) -> dict[str, Any]:
    """M3D-CLIP config (img_size, patch_size, hidden_size, mlp_dim, ...) -> Vit3DConfig kwargs."""
    from medvl.models.vit3d import vit3d_config_from_clip

    try:
        return vit3d_config_from_clip(cfg, "m3dclip")
    except ValueError as err:
        raise MedMVLConversionError(str(err)) from None


def _vision_config(folder: Path) -> Any:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder)
    return getattr(cfg, "vision_config", None) or cfg


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    """Drop where a part config was read from: the checkpoint must not refer to local folders or hub ids."""
    config.pop("_name_or_path", None)
    return config


def _3d_layer(select_layer: int) -> int:
    """MedM-CLIP / M3D-CLIP hidden-state lists have no embedding entry; medvl's (transformers') do."""
    return select_layer if select_layer < 0 else select_layer + 1


TOWER_INPUTS = ("auto", "image", "volume")


def translate_config(
    layout: MedMVLLayout,
    parts: MedMVLParts,
    weights: dict[str, dict[str, torch.Tensor]],
    tower_input: str = "auto",
) -> dict[str, Any]:
    """MedM-VL layout + part configs -> ``MedVLConfig`` keyword arguments (token ids excluded).

    MedM-VL feeds both ``<image>`` and ``<image3d>`` (slice by slice) through a 2D tower; a medvl model
    gets the tower on one side. ``tower_input="auto"``: a 2D tower with an ``attn_pooling`` connector is
    MedM-VL's CT-through-SigLIP design (MedM-VL-CT-Chest) and becomes a *volume* model
    (``volume_encoder="slicewise"``, no slice position embedding, 32 slices); any other 2D tower becomes
    an *image* model. A 3D encoder becomes a ``vit3d`` volume model.

    Args:
        layout: from :func:`read_layout`.
        parts: from :func:`resolve_parts`.
        weights: from :func:`split_state_dict` (the attn_pooling query count is read from it).
        tower_input: "auto", "image" or "volume": what the 2D tower's model takes.
    """
    if tower_input not in TOWER_INPUTS:
        raise ValueError(f"tower_input {tower_input!r}: valid choices: {', '.join(TOWER_INPUTS)}")
    if layout.image is not None and layout.image.connector_type == "spatial_pooling":
        raise MedMVLConversionError(
            "lvlm_connector_image_type='spatial_pooling' on a 2D tower: MedM-VL's spatial pooling needs a 3D patch "
            "grid (MedM-CLIP / M3D-CLIP); valid 2D connectors: mlp, attn_pooling"
        )
    from transformers import AutoConfig

    from medvl.models.configuration_medvl import prefix_token_count

    text_config = _clean(AutoConfig.from_pretrained(parts.llm).to_dict())
    kwargs: dict[str, Any] = {"text_config": text_config}
    if layout.image is not None:
        spec = layout.image
        vcfg = _vision_config(parts.vision)
        select = _feature_select(spec, prefix_token_count(vcfg))
        connector = _connector(spec, weights["connector_image"])
        as_volume = spec.connector_type == "attn_pooling" if tower_input == "auto" else tower_input == "volume"
        if as_volume and spec.type != "siglip":
            raise MedMVLConversionError(
                f"a {spec.type} tower cannot take CT volumes: MedM-VL's slice-by-slice CT preprocessing exists for "
                "SigLIP towers only; convert with tower_input 'image' (--tower-input image)"
            )
        if as_volume:
            kwargs.update(
                volume_config=_clean(vcfg.to_dict()),
                volume_encoder="slicewise",
                volume_connector=connector,
                volume_feature_layer=spec.select_layer,
                volume_feature_select=select,
                volume_num_slices=MEDMVL_CT_SLICES,
                slice_position_embedding=False,
            )
        else:
            kwargs.update(
                vision_config=_clean(vcfg.to_dict()),
                image_connector=connector,
                image_feature_layer=spec.select_layer,
                image_feature_select=select,
            )
    if layout.image3d is not None:
        spec = layout.image3d
        raw = json.loads((parts.volume / "config.json").read_text())
        vit = _medmclip_vit3d(raw) if spec.type == "medmclip" else _m3dclip_vit3d(raw)
        kwargs.update(
            volume_config=vit,
            volume_encoder="vit3d",
            volume_connector=_connector(spec, weights["connector_image3d"]),
            volume_feature_layer=_3d_layer(spec.select_layer),
            volume_feature_select="all" if spec.select_feature == "cls_patch" else "patch",
        )
    return kwargs


# ----------------------------------------------------------------------------- weight mapping
def map_vit3d_weights(sd: dict[str, torch.Tensor], kind: str, vit: dict[str, Any]) -> dict[str, torch.Tensor]:
    """MedM-CLIP (``medmclip``) or M3D-CLIP (``m3dclip``, a MONAI ViT) vision weights -> ``Vit3DModel`` keys.

    The key and patch-layout mapping lives with the model (``medvl.models.vit3d``); here we only keep
    the vision encoder's keys (MedM-CLIP checkpoints also carry a whole BERT text encoder) and
    check that nothing the encoder needs is missing.

    Args:
        sd: the 3D encoder's weights with the ``vision_encoder.`` prefix removed.
        kind: "medmclip" or "m3dclip".
        vit: the ``Vit3DConfig`` fields of the translated config.
    """
    from medvl.models.vit3d import Vit3DConfig, vit3d_state_dict_from_clip

    config = Vit3DConfig(**{k: v for k, v in vit.items() if k != "model_type"})
    try:
        return vit3d_state_dict_from_clip(sd, kind, config)
    except ValueError as err:
        raise MedMVLConversionError(str(err)) from None


def map_connector_weights(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MedM-VL connector weights (``connector.{0,2,..}``, ``query``, ``attn.*``) -> medvl connector names."""
    out = {}
    for key, value in sd.items():
        out["mlp." + key[len("connector.") :] if key.startswith("connector.") else key] = value
    return out


def _fit_prefix(sd: dict[str, torch.Tensor], target_keys: set[str], extra: str) -> dict[str, torch.Tensor]:
    """Add or strip the ``extra`` level (e.g. transformers 4's ``vision_model.``) to match the target module."""
    if not sd or set(sd) & target_keys:
        return sd
    stripped = {k[len(extra) :] if k.startswith(extra) else k: v for k, v in sd.items()}
    if set(stripped) & target_keys:
        return stripped
    return {extra + k: v for k, v in sd.items()}


def medvl_state_dict(
    layout: MedMVLLayout, weights: dict[str, dict[str, torch.Tensor]], kwargs: dict[str, Any], model: Any
) -> dict[str, torch.Tensor]:
    """All MedM-VL weights under medvl's parameter names (``language_model.``, ``vision_tower.``, ...).

    Args:
        layout: from :func:`read_layout`.
        weights: from :func:`split_state_dict`.
        kwargs: from :func:`translate_config`.
        model: the (possibly meta-device) ``MedVLForConditionalGeneration`` the weights are for.
    """
    out = {"language_model." + k: v for k, v in weights["llm"].items()}
    if layout.image is not None:
        tower = "volume_encoder" if kwargs.get("volume_encoder") == "slicewise" else "vision_tower"
        connector = "volume_connector" if tower == "volume_encoder" else "image_connector"
        target = set(getattr(model, tower).state_dict())
        for k, v in _fit_prefix(weights["vision"], target, "vision_model.").items():
            out[f"{tower}.{k}"] = v
        for k, v in map_connector_weights(weights["connector_image"]).items():
            out[f"{connector}.{k}"] = v
    if layout.image3d is not None:
        for k, v in map_vit3d_weights(weights["volume"], layout.image3d.type, kwargs["volume_config"]).items():
            out["volume_encoder." + k] = v
        for k, v in map_connector_weights(weights["connector_image3d"]).items():
            out["volume_connector." + k] = v
    return out


def load_medmvl_weights(model: Any, sd: dict[str, torch.Tensor], tie: bool) -> None:
    """Load the mapped weights into ``model`` (meta or real); tie the LM head when the checkpoint has none.

    Args:
        model: a ``MedVLForConditionalGeneration``.
        sd: from :func:`medvl_state_dict`.
        tie: whether ``lm_head`` shares the input embedding matrix.
    """
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if tie:
        model.tie_weights()
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise MedMVLConversionError(
            "the MedM-VL weights do not fit the translated architecture: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} "
            "(do the part folders passed with --llm/--vision/--volume match the checkpoint?)"
        )


def _decide_tie(llm_sd: dict[str, torch.Tensor], text_config: dict[str, Any]) -> bool:
    """Tie when the LLM config says so and the checkpoint's lm_head is absent or equal to the embeddings."""
    if not text_config.get("tie_word_embeddings", False):
        if "lm_head.weight" not in llm_sd:
            raise MedMVLConversionError("the checkpoint has no llm.lm_head.weight and the LLM config does not tie it")
        return False
    head = llm_sd.get("lm_head.weight")
    if head is None:
        logger.info("checkpoint stores no lm_head; tying it to embed_tokens as the LLM config says")
        return True
    emb = llm_sd["model.embed_tokens.weight"]
    if head.shape == emb.shape and torch.equal(head, emb):
        llm_sd.pop("lm_head.weight")  # identical copy (DeepSpeed saves both): keep one, tied
        return True
    logger.warning("lm_head differs from embed_tokens although the LLM config ties them; keeping both untied")
    text_config["tie_word_embeddings"] = False
    return False


def _empty_model(cls: Any, config: Any, dtype: torch.dtype) -> Any:
    """Instantiate without random initialisation (every weight is loaded next), in the checkpoint dtype."""
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            return cls(config)
    finally:
        torch.set_default_dtype(previous)


def build_medvl_model(
    src: str | Path,
    *,
    llm: str | Path | None = None,
    vision: str | Path | None = None,
    volume: str | Path | None = None,
    token_ids: dict[str, int] | None = None,
    tower_input: str = "auto",
) -> tuple[Any, MedMVLLayout, MedMVLParts]:
    """Build a ``MedVLForConditionalGeneration`` holding a MedM-VL checkpoint's weights (no processor).

    Args:
        src: MedM-VL checkpoint folder.
        llm / vision / volume: local part folders (see :func:`resolve_parts`).
        token_ids: ``{"image_token_id": ..., "volume_token_id": ...}`` of the processor's tokenizer.
        tower_input: see :func:`translate_config`.
    """
    from medvl.models.configuration_medvl import MedVLConfig
    from medvl.models.modeling_medvl import MedVLForConditionalGeneration

    layout = read_layout(src)
    parts = resolve_parts(src, layout, llm=llm, vision=vision, volume=volume)
    weights = split_state_dict(load_state_dict(src))
    kwargs = translate_config(layout, parts, weights, tower_input)
    tie = _decide_tie(weights["llm"], kwargs["text_config"])
    kwargs.update(token_ids or {})
    dtype = next(iter(weights["llm"].values())).dtype
    config = MedVLConfig(**kwargs)
    config.dtype = dtype
    config.text_config.dtype = dtype
    model = _empty_model(MedVLForConditionalGeneration, config, dtype)
    load_medmvl_weights(model, medvl_state_dict(layout, weights, kwargs, model), tie)
    model.eval()
    return model, layout, parts


# ----------------------------------------------------------------------------- processor
# MedM-CLIP's own intensity normalisation (its Image3DProcessor): (v - mean) / std, then crop > 0.
MEDMCLIP_MEAN = 55.6982188356434
MEDMCLIP_STD = 66.1943479570918


def _image_processor(spec: EncoderSpec, folder: Path) -> Any:
    """The tower's image processor, PIL backend (never torchvision), from its preprocessor_config.json."""
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    cls = SiglipImageProcessorPil if spec.type == "siglip" else CLIPImageProcessorPil
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    settings.pop("image_processor_type", None)
    settings.pop("processor_class", None)
    return cls(**settings)


def volume_processor_settings(layout: MedMVLLayout, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """``MedVLVolumeProcessor`` settings that reproduce MedM-VL's CT preprocessing for this layout.

    * 2D tower slice by slice: mode ``medmvl`` (HU clip to +-1000 -> 0..255, foreground crop, trilinear
      resize to (32, S, S), uint8 truncation, SigLIP normalisation, 3 channels).
    * MedM-CLIP: raw values normalised with MedM-CLIP's mean/std, crop of voxels above the mean,
      resize to the encoder's input size (MedM-VL's ``(v - 55.70) / 66.19`` + ``CropForeground``).
    * M3D-CLIP: M3D's inputs are already preprocessed (32, 256, 256) arrays in 0..1; passed through.

    No reorientation (``axcodes=None``): MedM-VL reads its ``.npy`` arrays as stored.

    Args:
        layout: from :func:`read_layout`.
        kwargs: from :func:`translate_config`.
    """
    if kwargs.get("volume_encoder") == "slicewise":
        size = kwargs["volume_config"]["image_size"]
        return {"mode": "medmvl", "axcodes": None, "target_shape": [MEDMVL_CT_SLICES, size, size]}
    if layout.image3d is None:
        return None
    return {
        "axcodes": None,
        **clip_volume_processor_settings(layout.image3d.type, list(kwargs["volume_config"]["image_size"])),
    }


def clip_volume_processor_settings(kind: str, shape: list[int]) -> dict[str, Any]:
    """``MedVLVolumeProcessor`` intensity and shape settings of a MedM-CLIP / M3D-CLIP encoder's input
    (see :func:`volume_processor_settings`); orientation is left to the caller.

    Args:
        kind: "medmclip" or "m3dclip".
        shape: the encoder's input size (D, H, W).
    """
    common = {"target_shape": list(shape), "antialias": False, "intensity": "none", "channels": 1}
    if kind == "medmclip":
        return {
            **common,
            "crop_foreground": True,
            "foreground_hu": MEDMCLIP_MEAN,
            "image_mean": [MEDMCLIP_MEAN],
            "image_std": [MEDMCLIP_STD],
        }
    return {**common, "crop_foreground": False}


def _tokenizer(parts: MedMVLParts, src: Path) -> Any:
    """The LLM's tokenizer (MedM-VL reloads it from the LLM folder), with the medvl media markers added."""
    from transformers import AutoTokenizer

    from medvl.models.processing_medvl import IMAGE_TOKEN, VOLUME_TOKEN

    try:
        tok = AutoTokenizer.from_pretrained(parts.llm)
    except (OSError, ValueError) as err:
        logger.warning("no usable tokenizer in %s (%s); using the one saved in the checkpoint", parts.llm, err)
        tok = AutoTokenizer.from_pretrained(src)
    tok.add_special_tokens(
        {"additional_special_tokens": [IMAGE_TOKEN, VOLUME_TOKEN]}, replace_extra_special_tokens=False
    )
    tok.padding_side = "left"
    return tok


def convert_medmvl(
    src: str | Path,
    out: str | Path,
    *,
    llm: str | Path | None = None,
    vision: str | Path | None = None,
    volume: str | Path | None = None,
    dtype: str | None = None,
    tower_input: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Convert a MedM-VL checkpoint folder into a self-contained medvl checkpoint.

    Args:
        src: MedM-VL checkpoint folder (config.json with ``lvlm_*`` fields, weights, tokenizer).
        out: output folder (created).
        llm: local folder of the LLM named by ``lvlm_llm_name_or_path`` (config + tokenizer).
        vision: local folder of the 2D tower named by ``lvlm_encoder_image_name_or_path``.
        volume: local folder of the 3D encoder named by ``lvlm_encoder_image3d_name_or_path``.
        dtype: "float32" / "bfloat16" / "float16" to cast the weights; None keeps the checkpoint's.
        tower_input: what a 2D tower's model takes: "auto" (attn_pooling -> CT volumes slice by slice,
            else 2D images), "image" or "volume".
        overwrite: replace a non-empty ``out`` (never one of the folders read).

    Returns:
        The output folder.
    """
    from medvl.utils.paths import fresh_output_dir

    src, out = Path(src), Path(out)
    # checked before any weight is read; the folder appears only once complete
    with fresh_output_dir(out, overwrite=overwrite, reads=[src, llm, vision, volume], flag="OUT") as staging:
        _convert_into(src, staging, llm=llm, vision=vision, volume=volume, dtype=dtype, tower_input=tower_input)
    logger.info("converted MedM-VL checkpoint %s -> %s", src, out)
    return out


def _convert_into(
    src: Path,
    out: Path,
    *,
    llm: str | Path | None,
    vision: str | Path | None,
    volume: str | Path | None,
    dtype: str | None,
    tower_input: str,
) -> None:
    from transformers import GenerationConfig

    from medvl.build import transformers_default_image_processor
    from medvl.data.templates import resolve_template
    from medvl.models import MedVLProcessor

    layout = read_layout(src)
    parts = resolve_parts(src, layout, llm=llm, vision=vision, volume=volume)
    tok = _tokenizer(parts, src)
    ids = {
        "image_token_id": tok.convert_tokens_to_ids("<image>"),
        "volume_token_id": tok.convert_tokens_to_ids("<volume>"),
    }
    model, layout, parts = build_medvl_model(
        src, llm=parts.llm, vision=parts.vision, volume=parts.volume, token_ids=ids, tower_input=tower_input
    )
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        logger.warning(
            "tokenizer has %d entries but the embedding %d rows; adding rows for the media markers", len(tok), rows
        )
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    if dtype is not None:
        valid = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in valid:
            raise ValueError(f"dtype {dtype!r}: valid choices: {', '.join(valid)}")
        model.to(valid[dtype])
    # MedM-VL never applies the LLM's hub generation_config after a reload: greedy, no penalties.
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.text_config.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    kwargs = {"volume_config": model.config.volume_config.to_dict()} if model.config.volume_config else {}
    kwargs["volume_encoder"] = model.config.volume_encoder
    template, _ = resolve_template("medmvl", tok)
    processor = MedVLProcessor(
        # a model without a 2D tower still fills the processor's (unused) image processor slot
        image_processor=(
            _image_processor(layout.image, parts.vision)
            if layout.image is not None
            else transformers_default_image_processor()
        ),
        tokenizer=tok,
        chat_template=template,
        volume_processor_config=volume_processor_settings(layout, kwargs),
        num_image_tokens=model.config.num_image_tokens,
        num_volume_tokens=model.config.num_volume_tokens,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    from medvl.model_card import write_model_card

    write_model_card(
        out,
        step=f"converted from the MedM-VL checkpoint `{src.name}` with `medvl convert` (same "
        "outputs as MedM-VL's code); its training data, licences and evaluation are those "
        "of the original release and its model card",
    )
    (out / "medmvl_source.json").write_text(
        json.dumps(
            {
                "source": str(src.resolve()),
                "lvlm_config": layout.raw,
                "parts": {k: str(v) for k, v in vars(parts).items() if v is not None},
            },
            indent=1,
        )
    )
