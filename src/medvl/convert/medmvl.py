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
    cfg = json.loads(path.read_text())
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
    """Where MedM-VL's config path field may point locally: relative to the checkpoint, or as given."""
    if not named:
        return None
    for p in (src / named, Path(named)):
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
        src: the MedM-VL checkpoint folder (relative part paths are resolved against it, then the cwd).
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
            ("vision", "--vision", layout.image.name_or_path, Path(vision) if vision else None,
             ("config.json", "preprocessor_config.json"))
        )
    if layout.image3d is not None:
        wanted.append(("volume", "--volume", layout.image3d.name_or_path, Path(volume) if volume else None,
                       ("config.json",)))
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
        found[key] = folder
    if problems:
        raise MedMVLConversionError(
            f"cannot convert MedM-VL checkpoint {src}: MedM-VL rebuilds its parts from the folders its config "
            "names, and these are missing. Download them elsewhere (config + tokenizer / preprocessor files are "
            "enough; weights come from the checkpoint) and pass:\n" + "\n".join(problems)
        )
    return MedMVLParts(llm=found["llm"], vision=found.get("vision"), volume=found.get("volume"))


def load_state_dict(src: str | Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a MedM-VL checkpoint (single or sharded safetensors, or pytorch .bin).

    Args:
        src: the MedM-VL checkpoint folder.
    """
    from safetensors.torch import load_file

    src = Path(src)
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
    try:
        return {
            "model_type": "medvl_vit3d",
            "image_size": [int(cfg["frame_size"]), int(cfg["image_size"]), int(cfg["image_size"])],
            "patch_size": [int(cfg["frame_patch_size"]), int(cfg["image_patch_size"]), int(cfg["image_patch_size"])],
            "in_channels": 1,
            "hidden_size": int(cfg["hidden_size"]),
            "num_hidden_layers": int(cfg["image_num_layers"]),
            "num_attention_heads": int(cfg["image_num_heads"]),
            "intermediate_size": int(cfg["image_mlp_dim"]),
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
        raise MedMVLConversionError(f"MedM-CLIP config lacks field {err}") from None


def _m3dclip_vit3d(cfg: dict[str, Any]) -> dict[str, Any]:
    """M3D-CLIP config (img_size, patch_size, hidden_size, mlp_dim, ...) -> Vit3DConfig kwargs."""
    if cfg.get("pos_embed", "perceptron") != "perceptron":
        raise MedMVLConversionError(
            f"M3D-CLIP pos_embed={cfg.get('pos_embed')!r} is not supported; valid choices: 'perceptron'"
        )
    return {
        "model_type": "medvl_vit3d",
        "image_size": [int(v) for v in cfg.get("img_size", (32, 256, 256))],
        "patch_size": [int(v) for v in cfg.get("patch_size", (4, 16, 16))],
        "in_channels": int(cfg.get("in_channels", 1)),
        "hidden_size": int(cfg.get("hidden_size", 768)),
        "num_hidden_layers": int(cfg.get("num_layers", 12)),
        "num_attention_heads": int(cfg.get("num_heads", 12)),
        "intermediate_size": int(cfg.get("mlp_dim", 3072)),
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


def _vision_config(folder: Path) -> Any:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder)
    return getattr(cfg, "vision_config", None) or cfg


def _3d_layer(select_layer: int) -> int:
    """MedM-CLIP / M3D-CLIP hidden-state lists have no embedding entry; medvl's (transformers') do."""
    return select_layer if select_layer < 0 else select_layer + 1


def translate_config(
    layout: MedMVLLayout, parts: MedMVLParts, weights: dict[str, dict[str, torch.Tensor]]
) -> dict[str, Any]:
    """MedM-VL layout + part configs -> ``MedVLConfig`` keyword arguments (token ids excluded).

    A 2D tower with an ``attn_pooling`` connector is MedM-VL's CT-through-SigLIP design: it becomes a
    medvl *volume* model (``volume_encoder="slicewise"``, no slice position embedding, 32 slices). A 2D
    tower with another connector becomes an *image* model. A 3D encoder becomes a ``vit3d`` volume model.

    Args:
        layout: from :func:`read_layout`.
        parts: from :func:`resolve_parts`.
        weights: from :func:`split_state_dict` (the attn_pooling query count is read from it).
    """
    from transformers import AutoConfig

    from medvl.models.configuration_medvl import prefix_token_count

    text_config = AutoConfig.from_pretrained(parts.llm).to_dict()
    kwargs: dict[str, Any] = {"text_config": text_config}
    if layout.image is not None:
        spec = layout.image
        vcfg = _vision_config(parts.vision)
        select = _feature_select(spec, prefix_token_count(vcfg))
        connector = _connector(spec, weights["connector_image"])
        if spec.connector_type == "attn_pooling":
            kwargs.update(
                volume_config=vcfg.to_dict(),
                volume_encoder="slicewise",
                volume_connector=connector,
                volume_feature_layer=spec.select_layer,
                volume_feature_select=select,
                volume_num_slices=MEDMVL_CT_SLICES,
                slice_position_embedding=False,
            )
        else:
            kwargs.update(
                vision_config=vcfg.to_dict(),
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
def _patch_perm(channels: int, patch: tuple[int, int, int], order: str) -> torch.Tensor:
    """Index vector: medvl's patch vector (c, pd, ph, pw) element j comes from source element perm[j].

    Args:
        channels: input channels.
        patch: (pd, ph, pw).
        order: the source flattening order, a permutation of "cdhw" (MedM-CLIP "hwdc", MONAI "dhwc").
    """
    pd, ph, pw = patch
    sizes = {"c": channels, "d": pd, "h": ph, "w": pw}
    src = torch.arange(channels * pd * ph * pw).reshape([sizes[a] for a in order])
    return src.permute([order.index(a) for a in "cdhw"]).reshape(-1)


def map_vit3d_weights(sd: dict[str, torch.Tensor], kind: str, vit: dict[str, Any]) -> dict[str, torch.Tensor]:
    """MedM-CLIP / M3D-CLIP ``vision_encoder`` weights -> medvl ``Vit3DModel`` names.

    Args:
        sd: the 3D encoder's vision weights (``vision_encoder.`` stripped).
        kind: ``"medmclip"`` or ``"m3dclip"``.
        vit: the Vit3DConfig kwargs from the translator (patch size, channels).
    """
    perm = _patch_perm(vit["in_channels"], tuple(vit["patch_size"]), "hwdc" if kind == "medmclip" else "dhwc")
    out: dict[str, torch.Tensor] = {}
    try:
        if kind == "medmclip":
            out["embeddings.patch_norm_in.weight"] = sd["to_patch_embedding.1.weight"][perm]
            out["embeddings.patch_norm_in.bias"] = sd["to_patch_embedding.1.bias"][perm]
            out["embeddings.patch_proj.weight"] = sd["to_patch_embedding.2.weight"][:, perm]
            out["embeddings.patch_proj.bias"] = sd["to_patch_embedding.2.bias"]
            out["embeddings.patch_norm_out.weight"] = sd["to_patch_embedding.3.weight"]
            out["embeddings.patch_norm_out.bias"] = sd["to_patch_embedding.3.bias"]
            out["embeddings.cls_token"] = sd["cls_token"]
            out["embeddings.position_embedding"] = sd["pos_embedding"]
            for i in range(vit["num_hidden_layers"]):
                s, t = f"transformer_layers.{i}.", f"encoder.layers.{i}."
                for a, b in (
                    ("norm1", "norm1"), ("norm2", "norm2"), ("linear1", "mlp.fc1"), ("linear2", "mlp.fc2"),
                    ("self_attn.out_proj", "attn.proj"),
                ):
                    out[t + b + ".weight"] = sd[s + a + ".weight"]
                    out[t + b + ".bias"] = sd[s + a + ".bias"]
                out[t + "attn.qkv.weight"] = sd[s + "self_attn.in_proj_weight"]
                out[t + "attn.qkv.bias"] = sd[s + "self_attn.in_proj_bias"]
        else:
            out["embeddings.patch_proj.weight"] = sd["patch_embedding.patch_embeddings.1.weight"][:, perm]
            out["embeddings.patch_proj.bias"] = sd["patch_embedding.patch_embeddings.1.bias"]
            out["embeddings.cls_token"] = sd["cls_token"]
            out["embeddings.position_embedding"] = sd["patch_embedding.position_embeddings"]
            out["norm.weight"] = sd["norm.weight"]
            out["norm.bias"] = sd["norm.bias"]
            for i in range(vit["num_hidden_layers"]):
                s, t = f"blocks.{i}.", f"encoder.layers.{i}."
                for a, b in (
                    ("norm1", "norm1"), ("norm2", "norm2"), ("mlp.linear1", "mlp.fc1"), ("mlp.linear2", "mlp.fc2"),
                    ("attn.out_proj", "attn.proj"),
                ):
                    out[t + b + ".weight"] = sd[s + a + ".weight"]
                    out[t + b + ".bias"] = sd[s + a + ".bias"]
                out[t + "attn.qkv.weight"] = sd[s + "attn.qkv.weight"]
    except KeyError as err:
        raise MedMVLConversionError(f"{kind} vision encoder weight {err} missing from the checkpoint") from None
    return out


def map_connector_weights(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MedM-VL connector weights (``connector.{0,2,..}``, ``query``, ``attn.*``) -> medvl connector names."""
    out = {}
    for key, value in sd.items():
        out["mlp." + key[len("connector.") :] if key.startswith("connector.") else key] = value
    return out
