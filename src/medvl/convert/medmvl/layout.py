"""What a MedM-VL checkpoint folder holds, read and checked before any weight is touched.

A MedM-VL ``config.json`` has only ``lvlm_*`` fields: the LLM, at most one 2D tower (``image``) and
one 3D encoder (``image3d``), each with a connector. The tables below list every encoder and
connector type the importer knows; :func:`read_layout` refuses anything else with the valid choices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvl.utils.files import TOKENIZER_FILES, read_json

Role = Literal["image", "image3d"]


class MedMVLConversionError(ValueError):
    """A MedM-VL checkpoint cannot be converted (missing part folder, unknown layout, bad weights)."""


@dataclass(frozen=True)
class EncoderType:
    """What medvl knows about one MedM-VL encoder type (``lvlm_encoder_<role>_type``).

    Args:
        role: the config role it fills: ``image`` (a 2D tower) or ``image3d`` (a 3D encoder).
        image_processor: a 2D tower's transformers PIL image processor class.
        slicewise_ct: MedM-VL can feed this 2D tower CT volumes slice by slice (its CT preprocessing
            exists for SigLIP only).
    """

    role: Role
    image_processor: str | None = None
    slicewise_ct: bool = False


ENCODER_TYPES: dict[str, EncoderType] = {
    "clip": EncoderType("image", image_processor="CLIPImageProcessorPil"),
    "siglip": EncoderType("image", image_processor="SiglipImageProcessorPil", slicewise_ct=True),
    "medmclip": EncoderType("image3d"),  # MedM-CLIP-CT (models.vit3d: "medmclip")
    "m3dclip": EncoderType("image3d"),  # M3D-CLIP, a MONAI ViT (models.vit3d: "m3dclip")
}

# Encoder types MedM-VL's code names but that have no importable saved layout, with the reason (facts
# from MedM-VL's code, lvlm/model/encoder/ctclip.py and lvlm/model/encoder/__init__.py at
# github.com/MSIIP/MedM-VL b1b0770).
REFUSED_ENCODER_TYPES: dict[str, str] = {
    "ctclip": (
        "MedM-VL's 'ctclip' 3D encoder has no well-defined saved layout, so it is not imported: MedM-VL's "
        "encoder factory (lvlm/model/encoder/__init__.py) does not register 'ctclip', so its training and "
        "loading code cannot build such a model; CTCLIPModel.load_pretrained_weights reads an undefined "
        "`config` (the CTViT weights path is never stored); its Image3DProcessor resizes volumes to 32x256x256 "
        "while CTViT asserts a 480x480 in-plane input; and the encoder's config is read with "
        "AutoConfig.from_pretrained from a .pt path. No MedM-VL release uses it. Build the same architecture "
        "natively instead: `medvl build` with `volume: {encoder: ctvit, path: <folder with CT-CLIP's "
        "visual-transformer weights>}` (see configs/ct-rate/ and docs/ctclip.md)."
    ),
}


@dataclass(frozen=True)
class ConnectorType:
    """What medvl knows about one MedM-VL connector type (``lvlm_connector_<role>_type``).

    Args:
        medvl_type: the medvl connector (``ConnectorConfig.type``).
        settings: fixed settings MedM-VL hard-codes (in no config).
        queries_from_weights: ``num_queries`` is the row count of the checkpoint's ``query`` weight.
        needs_3d_grid: pools over a 3D patch grid, so a 2D tower cannot use it.
        ct_design: with a 2D tower, MedM-VL's CT-through-the-tower design (``--tower-input auto`` makes
            the tower a volume encoder, as MedM-VL-CT-Chest).
    """

    medvl_type: str
    settings: dict[str, Any] = field(default_factory=dict)
    queries_from_weights: bool = False
    needs_3d_grid: bool = False
    ct_design: bool = False


CONNECTOR_TYPES: dict[str, ConnectorType] = {
    "mlp": ConnectorType("mlp"),
    # MedM-VL's attn_pooling hard-codes 8 heads
    "attn_pooling": ConnectorType("attn_pool", {"num_heads": 8}, queries_from_weights=True, ct_design=True),
    # MedM-VL's spatial_pooling hard-codes a 2x2x2 average pooling
    "spatial_pooling": ConnectorType("spatial_pool", {"pool_stride": [2, 2, 2]}, needs_3d_grid=True),
}
SELECT_FEATURES = ("patch", "cls_patch")


@dataclass
class EncoderSpec:
    """One MedM-VL encoder + connector pair, as its ``lvlm_*`` config fields describe it.

    Args:
        role: ``"image"`` (the 2D tower) or ``"image3d"`` (the 3D encoder).
        type: MedM-VL encoder type (a key of :data:`ENCODER_TYPES`).
        name_or_path: the hub id or path MedM-VL's config names.
        select_layer: index into the tower's hidden states.
        select_feature: ``patch`` (drop token 0) or ``cls_patch`` (keep all tokens).
        connector_type: a key of :data:`CONNECTOR_TYPES`.
        connector_name: e.g. ``mlp2x_gelu``.
    """

    role: Role
    type: str
    name_or_path: str
    select_layer: int
    select_feature: str
    connector_type: str
    connector_name: str


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
    def encoders(self) -> list[EncoderSpec]:
        """The encoders present, 2D tower first."""
        return [spec for spec in (self.image, self.image3d) if spec is not None]


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


def _choice(cfg: dict[str, Any], key: str, choices: list[str] | tuple[str, ...]) -> str:
    value = cfg.get(key)
    if value not in choices:
        raise MedMVLConversionError(
            f"config.json field {key}={value!r} is not supported; valid choices: {', '.join(choices)}"
        )
    return str(value)


def _encoder_spec(cfg: dict[str, Any], role: Role, path: Path) -> EncoderSpec | None:
    """The ``lvlm_encoder_<role>_*`` / ``lvlm_connector_<role>_*`` fields, checked against the tables."""
    kind = cfg.get(f"lvlm_encoder_{role}_type")
    if kind is None:
        return None
    if kind in REFUSED_ENCODER_TYPES:
        raise MedMVLConversionError(f"{path}: {REFUSED_ENCODER_TYPES[kind]}")
    types = [name for name, entry in ENCODER_TYPES.items() if entry.role == role]
    spec = EncoderSpec(
        role=role,
        type=_choice(cfg, f"lvlm_encoder_{role}_type", types),
        name_or_path=cfg.get(f"lvlm_encoder_{role}_name_or_path") or "",
        select_layer=int(cfg.get(f"lvlm_encoder_{role}_select_layer", -1)),
        select_feature=_choice(cfg, f"lvlm_encoder_{role}_select_feature", SELECT_FEATURES),
        connector_type=_choice(cfg, f"lvlm_connector_{role}_type", list(CONNECTOR_TYPES)),
        connector_name=cfg.get(f"lvlm_connector_{role}_name") or "",
    )
    parse_mlp_name(spec.connector_name)  # validate early
    return spec


def read_layout(src: str | Path) -> MedMVLLayout:
    """Read a MedM-VL checkpoint's ``config.json`` into a :class:`MedMVLLayout`.

    Args:
        src: the MedM-VL checkpoint folder.
    """
    path = Path(src) / "config.json"
    if not path.is_file():
        raise MedMVLConversionError(f"{src}: no config.json; is this a MedM-VL checkpoint folder?")
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
    # the 3D role first: a refused 3D encoder is reported whatever the 2D fields say
    layout.image3d = _encoder_spec(cfg, "image3d", path)
    layout.image = _encoder_spec(cfg, "image", path)
    if layout.image is None and layout.image3d is None:
        raise MedMVLConversionError(f"{path}: neither lvlm_encoder_image_type nor lvlm_encoder_image3d_type is set")
    return layout


# ----------------------------------------------------------------------------- part folders
@dataclass(frozen=True)
class PartFolder:
    """A part MedM-VL rebuilds from a folder its config names, and what medvl needs from that folder."""

    key: str  # MedMVLParts field
    flag: str  # the CLI flag that passes it
    what: str  # for messages
    files: tuple[str, ...]  # files it must hold


PART_FOLDERS: dict[str, PartFolder] = {
    "llm": PartFolder("llm", "--llm", "the LLM (its config.json and tokenizer files)", ("config.json",)),
    "image": PartFolder(
        "vision",
        "--vision",
        "the 2D vision tower (its config.json and preprocessor_config.json)",
        ("config.json", "preprocessor_config.json"),
    ),
    "image3d": PartFolder("volume", "--volume", "the 3D encoder (its config.json)", ("config.json",)),
}


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


def _wrong_part(key: str, folder: Path) -> str | None:
    """Why a part folder holds the wrong kind of model (e.g. ``--llm`` pointed at a vision tower), or None."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = read_json(folder / "config.json", "config")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if key == "llm":
        architecture = (config.get("architectures") or [""])[0]
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not architecture.endswith("ForCausalLM"):
            return (
                f"holds a {model_type!r} model, not a causal language model (config.json model_type); "
                "point --llm at the LLM's folder"
            )
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            return f"has no tokenizer files ({' / '.join(TOKENIZER_FILES)})"
    elif model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "vision_config" not in config:
        return f"holds a causal language model ({model_type!r}), not a vision encoder"
    return None


def _folder_problem(part: PartFolder, folder: Path | None, named: str) -> str | None:
    """What is wrong with the folder found (or not) for one part, as one line of the error, or None."""
    if folder is None:
        return f"  {part.flag} DIR: {part.what} that config.json names {named!r}; not found locally"
    lacking = [f for f in part.files if not (folder / f).is_file()]
    if lacking:
        return f"  {part.flag} {folder}: lacks {', '.join(lacking)} ({part.what} named {named!r})"
    wrong = _wrong_part(part.key, folder)
    if wrong:
        return f"  {part.flag} {folder}: {wrong} ({part.what} named {named!r})"
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
    given = {"llm": llm, "vision": vision, "volume": volume}
    wanted = [(PART_FOLDERS["llm"], layout.llm_name_or_path)]
    wanted += [(PART_FOLDERS[spec.role], spec.name_or_path) for spec in layout.encoders]
    found: dict[str, Path] = {}
    problems: list[str] = []
    for part, named in wanted:
        passed = given[part.key]
        folder = Path(passed) if passed else _candidate(src, named)
        problem = _folder_problem(part, folder, named)
        if problem:
            problems.append(problem)
        elif folder is not None:
            found[part.key] = folder
    if problems:
        raise MedMVLConversionError(
            f"cannot convert MedM-VL checkpoint {src}: MedM-VL rebuilds its parts from the folders its config "
            "names, and these are missing. Download them elsewhere (config + tokenizer / preprocessor files are "
            "enough; weights come from the checkpoint) and pass:\n" + "\n".join(problems)
        )
    return MedMVLParts(llm=found["llm"], vision=found.get("vision"), volume=found.get("volume"))
