"""Model cards: the ``README.md`` every checkpoint medvl writes carries (build, train, convert, merge, export).

A card says what the model is (its parts, read from the folder's ``config.json`` or
``adapter_config.json``), how it came to be (the history of medvl steps that produced it), the data and
recipe it was trained with, its evaluation table when one is known, the licences of the data where
medvl knows them, and that it is for research use only.

The card's YAML front matter (the Hugging Face Hub's card metadata) also holds a ``medvl`` mapping
with the history, data, recipe and evaluation, so that a later step (merging a LoRA adapter,
exporting to stock LLaVA) carries them over from its source folder's card: ``write_model_card(out,
step=..., source=in_dir)``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
RESEARCH_NOTICE = (
    "**Research use only, not for clinical decisions.** This model has not been validated for clinical use; "
    "its outputs can be wrong, incomplete or biased, must not be used to diagnose, treat or triage patients, "
    "and must not replace a qualified clinician's judgement."
)


# ---------------------------------------------------------------------------- data licences
def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def data_licence(name: str) -> tuple[str, str] | None:
    """``(data set, licence and source)`` for a data set medvl knows (its benchmark table), else None.

    Matched on the benchmark task names and release folder names inside ``name`` (a registry name, a
    file name or a path), ignoring case and punctuation: ``data/VQA_RAD/train.jsonl`` is VQA-RAD.

    Args:
        name: a data set name or path.
    """
    from medvl.eval.tasks import TASKS

    key = _squash(name)
    # longest names first: "m3d_vqa_closed" before "m3d"
    for task in sorted(TASKS.values(), key=lambda t: -len(t.name)):
        names = {_squash(task.name), _squash(task.default_dir.split("/")[0])}
        if any(n and len(n) >= 3 and n in key for n in names) and task.source:
            return task.name, task.source
    return None


def data_entries(files: list[str], weights: list[float] | None = None, split: str = "train") -> list[dict[str, Any]]:
    """Card entries for training data files and registries: names (never full paths), weights, licences.

    Args:
        files: ``data.train`` (records files and/or registry YAMLs).
        weights: ``data.weights`` (one per file; empty/None: 1).
        split: the registry split that was used.
    """
    from medvl.data.registry import is_registry, load_registry

    entries: list[dict[str, Any]] = []
    for file, weight in zip(files, weights or [1.0] * len(files)):
        if is_registry(file):
            try:
                selected = load_registry(file).select(split)
            except ValueError as err:
                logger.warning("model card: cannot list the data sets of %s: %s", file, err)
                selected = []
            for entry in selected:
                entries.append(_entry(entry.name, entry.path, entry.weight * weight))
        else:
            entries.append(_entry(Path(file).stem, file, weight))
    return entries


def _entry(name: str, path: str, weight: float) -> dict[str, Any]:
    # the licence is looked up on the data set's name first, then on its whole path (a release's folder
    # name tells); the card shows the file name only
    known = data_licence(name) or data_licence(path)
    file = Path(path).name
    return {
        "name": name,
        "file": file,
        "weight": float(weight),
        "licence": known[1] if known else None,
        "known_as": known[0] if known else None,
    }


# ---------------------------------------------------------------------------- what the model is
def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _describe_text(cfg: dict[str, Any]) -> str:
    fields = [f"`{cfg.get('model_type', '?')}`"]
    for key, label in (("num_hidden_layers", "layers"), ("hidden_size", "hidden"), ("vocab_size", "vocabulary")):
        if cfg.get(key) is not None:
            fields.append(f"{label} {cfg[key]}")
    return ", ".join(fields)


def _describe_tower(cfg: dict[str, Any]) -> str:
    fields = [f"`{cfg.get('model_type', '?')}`"]
    for key, label in (
        ("image_size", "input"),
        ("patch_size", "patch"),
        ("num_hidden_layers", "layers"),
        ("hidden_size", "hidden"),
    ):
        if cfg.get(key) is not None:
            fields.append(f"{label} {cfg[key]}")
    return ", ".join(fields)


def _describe_connector(cfg: dict[str, Any] | None) -> str:
    if not cfg:
        return "?"
    kind = cfg.get("type", "?")
    fields = [f"`{kind}`"]
    # the settings that matter for each connector type (the config holds every type's fields)
    keys = {
        "mlp": ("depth", "activation"),
        "spatial_pool": ("pool_stride", "depth", "activation"),
        "attn_pool": ("num_queries", "depth", "activation"),
    }.get(kind, ("depth", "activation"))
    for key in keys:
        if cfg.get(key) is not None:
            fields.append(f"{key} {cfg[key]}")
    return ", ".join(fields)


def describe_parts(folder: str | Path) -> tuple[str, list[tuple[str, str]]]:
    """What the checkpoint in ``folder`` is: a one-line kind and (part, description) rows.

    Args:
        folder: a checkpoint folder (medvl, stock LLaVA, or a PEFT adapter folder).
    """
    folder = Path(folder)
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        settings = json.loads(adapter.read_text(encoding="utf-8"))
        adapter_rows: list[tuple[str, str]] = [
            (
                "adapter",
                f"LoRA r {settings.get('r')}, alpha {settings.get('lora_alpha')}, targets "
                f"{settings.get('target_modules')}, fully trained modules {settings.get('modules_to_save')}",
            )
        ]
        base = Path(str(settings.get("base_model_name_or_path") or ""))
        adapter_rows.append(
            (
                "base model",
                f"`{base.name}` (the folder this adapter applies to; "
                "merge with `medvl export ADAPTER --merge-lora OUT`)",
            )
        )
        if (base / "config.json").is_file():
            adapter_rows.extend(describe_parts(base)[1])
        return "a LoRA adapter for a medvl model (PEFT)", adapter_rows
    cfg = _config(folder)
    rows: list[tuple[str, str]] = []
    if cfg.get("model_type") == "medvl":
        if cfg.get("text_config"):
            rows.append(("LLM", _describe_text(cfg["text_config"])))
        if cfg.get("vision_config"):
            rows.append(("2D image encoder", _describe_tower(cfg["vision_config"])))
            rows.append(
                (
                    "image connector",
                    _describe_connector(cfg.get("image_connector"))
                    + f"; {cfg.get('num_image_tokens', '?')} tokens per image",
                )
            )
        if cfg.get("volume_config"):
            how = "native 3D ViT" if cfg.get("volume_encoder") == "vit3d" else "2D tower applied slice by slice"
            rows.append(("3D volume encoder", f"{how}: {_describe_tower(cfg['volume_config'])}"))
            rows.append(
                (
                    "volume connector",
                    _describe_connector(cfg.get("volume_connector"))
                    + f"; {cfg.get('num_volume_tokens', '?')} tokens per volume",
                )
            )
        return (
            "a medvl medical vision-language model (LLaVA paradigm: encoder(s) + connector(s) + causal LM); "
            "loads with medvl or with transformers' `AutoModelForImageTextToText` / `AutoProcessor` and "
            "`trust_remote_code=True`"
        ), rows
    if cfg.get("model_type") == "llava":
        rows.append(("LLM", _describe_text(cfg.get("text_config") or {})))
        rows.append(("2D image encoder", _describe_tower(cfg.get("vision_config") or {})))
        rows.append(
            (
                "projector",
                f"MLP, activation {cfg.get('projector_hidden_act')}; "
                f"{cfg.get('image_seq_length', '?')} tokens per image",
            )
        )
        return (
            "a stock Hugging Face LLaVA checkpoint exported by medvl (`LlavaForConditionalGeneration` + "
            "`AutoProcessor`, no medvl needed)"
        ), rows
    return f"a `{cfg.get('model_type', 'unknown')}` checkpoint written by medvl", rows


# ---------------------------------------------------------------------------- reading and writing
def read_card_metadata(folder: str | Path) -> dict[str, Any]:
    """The ``medvl`` mapping of a card's front matter (empty when there is no medvl card).

    Args:
        folder: a checkpoint folder.
    """
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    if not match:
        return {}
    try:
        front = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError:
        return {}
    meta = front.get("medvl") if isinstance(front, dict) else None
    return meta if isinstance(meta, dict) else {}


def render_model_card(
    folder: str | Path,
    *,
    history: list[str],
    data: list[dict[str, Any]] | None = None,
    recipe: dict[str, Any] | None = None,
    evaluation: dict[str, dict[str, float]] | None = None,
    title: str | None = None,
) -> str:
    """The card text for the checkpoint in ``folder`` (see :func:`write_model_card`).

    Args:
        folder: the checkpoint folder (its config files describe the parts).
        history: the steps that produced the checkpoint, oldest first.
        data: training data entries (:func:`data_entries`); None: not trained by medvl.
        recipe: a summary of the training recipe.
        evaluation: section -> metric -> value.
        title: heading (default: the folder name).
    """
    folder = Path(folder)
    kind, parts = describe_parts(folder)
    meta = {"history": history, "data": data, "recipe": recipe, "evaluation": evaluation}
    front = {
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": ["medvl", "medical", "vision-language", "research-only"],
        "medvl": meta,
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {title or folder.name}",
        "",
        RESEARCH_NOTICE,
        "",
        "## What this model is",
        "",
        f"This is {kind}.",
        "",
    ]
    if parts:
        lines += ["| part | what |", "|---|---|"] + [f"| {name} | {what} |" for name, what in parts] + [""]
    lines += ["## How it was made", ""] + [f"{i}. {step}" for i, step in enumerate(history, 1)] + [""]
    lines += ["## Training data", ""]
    if not data:
        lines += [
            "No training data recorded by medvl for this checkpoint (parts not loaded from a pretrained "
            "folder are randomly initialised; a converted model's data is described by its original "
            "release).",
            "",
        ]
    else:
        lines += [
            "| data set | file | weight | licence (as medvl's benchmark table records it; check the source) |",
            "|---|---|---|---|",
        ]
        for entry in data:
            licence = entry.get("licence") or "unknown to medvl: check the data's own terms"
            if entry.get("licence") and entry.get("known_as"):
                licence = f"{entry['known_as']}: {licence}"
            lines.append(f"| {entry.get('name')} | {entry.get('file')} | {entry.get('weight', 1.0):g} | {licence} |")
        lines += [
            "",
            "The weights inherit the terms of the data they were trained on and of their parts "
            "(LLM, encoders); non-commercial or credentialed-access data keep their restrictions.",
            "",
        ]
    if recipe:
        lines += ["## Training recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    lines += ["## Evaluation", ""]
    if evaluation:
        rows = [
            (section, metric, value) for section, metrics in evaluation.items() for metric, value in metrics.items()
        ]
        lines += ["| set | metric | value |", "|---|---|---|"]
        lines += [
            f"| {s} | {m} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {s} | {m} | {v} |" for s, m, v in rows
        ] + [""]
    else:
        lines += [
            "No evaluation recorded. Run `medvl eval MODEL --tasks ...` for benchmark numbers, each with "
            "the protocol it follows.",
            "",
        ]
    lines += [
        "## Intended use and limits",
        "",
        RESEARCH_NOTICE + " It was produced with medvl, a framework for research on medical vision-language models.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    folder: str | Path,
    *,
    step: str,
    source: str | Path | None = None,
    data: list[dict[str, Any]] | None = None,
    recipe: dict[str, Any] | None = None,
    evaluation: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Write ``folder/README.md`` for the checkpoint just saved in ``folder``.

    Args:
        folder: the checkpoint folder (already holding its config files).
        step: what produced this checkpoint, e.g. "trained with `medvl train` (stage finetune)".
        source: the folder it was derived from; the history, data, recipe and evaluation of its card
            are carried over (this call's values win).
        data: training data entries (:func:`data_entries`).
        recipe: a summary of the training recipe.
        evaluation: section -> metric -> value.

    Returns:
        The card's path.
    """
    folder = Path(folder)
    previous = read_card_metadata(source) if source is not None else {}
    history = list(previous.get("history") or []) + [step]
    text = render_model_card(
        folder,
        history=history,
        data=data if data is not None else previous.get("data"),
        recipe=recipe if recipe is not None else previous.get("recipe"),
        evaluation=evaluation if evaluation is not None else previous.get("evaluation"),
    )
    path = folder / CARD_NAME
    path.write_text(text, encoding="utf-8")
    return path


__all__ = [
    "CARD_NAME",
    "RESEARCH_NOTICE",
    "data_entries",
    "data_licence",
    "describe_parts",
    "read_card_metadata",
    "render_model_card",
    "write_model_card",
]
