"""Trainable parts: one map from part name (llm, vision, volume, connector) to the model's modules.

Freezing, LoRA target modules and the optimiser's per-part parameter groups all derive from
:func:`part_module_names`, so a part is named in exactly one place. A model can declare its own map
as a class attribute ``trainable_part_modules`` (same shape as :data:`DEFAULT_PART_MODULES`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medvl.train.config import PART_NAMES, LoraSettings, PartsConfig

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

# part -> attribute names of the modules that form it. The names of medvl's model
# (MedVLForConditionalGeneration) come first; ``multi_modal_projector`` and a top-level ``lm_head``
# let the same code fine-tune stock transformers LLaVA models.
DEFAULT_PART_MODULES: dict[str, tuple[str, ...]] = {
    "llm": ("language_model", "lm_head"),
    "vision": ("vision_tower",),
    "volume": ("volume_encoder",),
    # the slice position embedding of slice-wise volume encoders is new (random) like the connectors
    # and trains with them in stage 1
    "connector": ("image_connector", "volume_connector", "volume_slice_embedding", "multi_modal_projector"),
}


def part_module_names(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The part -> module-name map of ``model`` (its own ``trainable_part_modules`` or the default).

    Args:
        model: the model, possibly wrapped by PEFT.
    """
    base = unwrap_model(model)
    mapping = getattr(base, "trainable_part_modules", None) or DEFAULT_PART_MODULES
    unknown = sorted(set(mapping) - set(PART_NAMES))
    if unknown:
        raise ValueError(
            f"trainable_part_modules names unknown part(s) {unknown}; valid parts: {', '.join(PART_NAMES)}"
        )
    return {part: tuple(mapping.get(part, ())) for part in PART_NAMES}


def part_of(name: str, mapping: dict[str, tuple[str, ...]]) -> str | None:
    """The part a dotted parameter/module name belongs to (the outermost matching component wins).

    Args:
        name: e.g. ``model.language_model.layers.0.self_attn.q_proj.weight``.
        mapping: part -> module names, from :func:`part_module_names`.
    """
    owner = {module: part for part, modules in mapping.items() for module in modules}
    for component in name.split("."):
        if component in owner:
            return owner[component]
    return None


def parameters_by_part(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Group ``model.named_parameters()`` by part; parameters outside every part are an error.

    Args:
        model: the model, possibly wrapped by PEFT.
    """
    mapping = part_module_names(model)
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {part: [] for part in PART_NAMES}
    orphans = []
    for name, param in model.named_parameters():
        part = part_of(name, mapping)
        if part is None:
            orphans.append(name)
        else:
            groups[part].append((name, param))
    if orphans:
        # Loud, because silently freezing (or training) an unnamed parameter changes the recipe.
        raise ValueError(
            f"{len(orphans)} parameter(s) belong to no trainable part: {', '.join(orphans[:10])}"
            f"{' ...' if len(orphans) > 10 else ''}; parts and their modules: {mapping}. "
            "Set `trainable_part_modules` on the model class to place them."
        )
    return groups


def present_parts(model: nn.Module) -> list[str]:
    """Names of the parts that ``model`` has (at least one parameter).

    Args:
        model: the model.
    """
    return [part for part, params in parameters_by_part(model).items() if params]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model under PEFT / DDP / DeepSpeed wrappers.

    Args:
        model: a model, possibly wrapped.
    """
    while True:
        get_base = getattr(model, "get_base_model", None)  # PEFT
        inner = getattr(model, "module", None)  # DDP / DeepSpeed engines
        if callable(get_base):
            model = get_base()
        elif isinstance(inner, nn.Module):
            model = inner
        else:
            return model


def _output_head_names(model: nn.Module) -> set[str]:
    """Module names of the output head(s), never a LoRA target (as in MedM-VL / LLaVA)."""
    heads: set[str] = set()
    head_modules = []
    for module in model.modules():
        get = getattr(module, "get_output_embeddings", None)
        if callable(get):
            try:
                head = get()
            except (AttributeError, NotImplementedError):
                head = None
            if isinstance(head, nn.Module):
                head_modules.append(head)
    for name, module in model.named_modules():
        if any(module is head for head in head_modules) or name.split(".")[-1] == "lm_head":
            heads.add(name)
    return heads


def lora_target_modules(model: nn.Module, parts: Iterable[str], targets: list[str]) -> list[str]:
    """Full names of the linear layers LoRA adapts: inside ``parts``, optionally filtered by suffix.

    Args:
        model: the (unwrapped) model.
        parts: the parts whose mode is ``lora``.
        targets: module-name suffixes (e.g. ``["q_proj", "v_proj"]``); empty means all linear layers
            of those parts except the output head.
    """
    parts = set(parts)
    mapping = part_module_names(model)
    heads = _output_head_names(model)
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name in heads:
            continue
        if part_of(name, mapping) not in parts:
            continue
        if targets and not any(name == t or name.endswith("." + t) for t in targets):
            continue
        names.append(name)
    if not names:
        raise ValueError(
            f"no linear layers to adapt with LoRA in part(s) {sorted(parts)}"
            + (f" matching train.lora.targets={targets}" if targets else "")
        )
    return names


def apply_parts(model: PreTrainedModel, parts: PartsConfig, lora: LoraSettings) -> PreTrainedModel | PeftModel:
    """Freeze / unfreeze each part and wrap LoRA parts with PEFT adapters.

    ``full`` parts train all their parameters; ``frozen`` and ``lora`` parts keep their weights fixed
    (``lora`` parts get trainable adapters). When any part uses LoRA the result is a
    ``peft.PeftModel`` whose ``modules_to_save`` are the ``full`` parts, so that an adapter save
    holds everything that trained.

    Args:
        model: the plain model (not yet wrapped).
        parts: mode and lr per part (``train.parts``).
        lora: LoRA hyper-parameters (``train.lora``).
    Returns:
        the model to train (the same object, or a PeftModel around it).
    """
    groups = parameters_by_part(model)
    modes = {name: cfg.mode for name, cfg in parts.items()}
    for part, params in groups.items():
        for _, param in params:
            param.requires_grad_(modes[part] == "full")
    lora_parts = [p for p in PART_NAMES if modes[p] == "lora" and groups[p]]
    missing = [p for p in PART_NAMES if modes[p] != "frozen" and not groups[p]]
    if missing:
        logger.info("parts %s are not in this model; their settings are ignored", missing)
    if not lora_parts:
        return model

    from peft import LoraConfig, get_peft_model

    # The ``full`` parts become PEFT ``modules_to_save`` (trained copies saved with the adapter).
    mapping = part_module_names(model)
    all_names = mapping_all(mapping)
    full_names = {m for p in PART_NAMES if modes[p] == "full" for m in mapping[p]}
    full_modules = []
    for name, _ in model.named_modules():
        components = name.split(".")
        # outermost modules only: an ``lm_head`` inside ``language_model`` is saved with it
        if components[-1] in full_names and not any(c in all_names for c in components[:-1]):
            full_modules.append(name)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias=lora.bias,
        target_modules=lora_target_modules(model, lora_parts, lora.targets),
        modules_to_save=full_modules or None,
    )
    peft_model = get_peft_model(model, config)
    return peft_model


def mapping_all(mapping: dict[str, tuple[str, ...]]) -> set[str]:
    """All module names of all parts.

    Args:
        mapping: part -> module names.
    """
    return {m for modules in mapping.values() for m in modules}


def param_groups(
    model: nn.Module,
    parts: PartsConfig,
    base_lr: float,
    weight_decay: float,
    decay_names: Iterable[str],
) -> list[dict[str, Any]]:
    """Optimiser parameter groups: one per (part, decay or not), each with the part's learning rate.

    Args:
        model: the model to optimise (PEFT-wrapped or plain).
        parts: ``train.parts`` (``lr`` None means ``base_lr``).
        base_lr: ``train.lr``.
        weight_decay: applied to the groups of decayed parameters.
        decay_names: names of parameters that get weight decay (the Trainer's rule: not biases/norms).
    """
    decay = set(decay_names)
    groups = []
    for part, params in parameters_by_part(model).items():
        lr = getattr(parts, part).lr or base_lr
        trainable = [(n, p) for n, p in params if p.requires_grad]
        for decayed in (True, False):
            chosen = [p for n, p in trainable if (n in decay) == decayed]
            if chosen:
                groups.append(
                    {
                        "params": chosen,
                        "lr": lr,
                        "weight_decay": weight_decay if decayed else 0.0,
                        # an extra key that optimisers keep: tells the groups apart in logs and tests
                        "part": part,
                    }
                )
    if not groups:
        raise ValueError("no trainable parameters: every part is frozen")
    return groups


def parts_table(model: nn.Module, parts: PartsConfig, base_lr: float) -> str:
    """A small table of parts: mode, parameters, trainable parameters, learning rate.

    Args:
        model: the model after :func:`apply_parts`.
        parts: ``train.parts``.
        base_lr: ``train.lr``.
    """
    lines = [f"{'part':<10} {'mode':<7} {'params':>12} {'trainable':>12} {'lr':>9}"]
    for part, params in parameters_by_part(model).items():
        if not params:
            continue
        total = sum(p.numel() for _, p in params)
        trainable = sum(p.numel() for _, p in params if p.requires_grad)
        cfg = getattr(parts, part)
        lr = "-" if cfg.mode == "frozen" else f"{(cfg.lr or base_lr):.2e}"
        lines.append(f"{part:<10} {cfg.mode:<7} {total:>12,} {trainable:>12,} {lr:>9}")
    return "\n".join(lines)


def snapshot(model: nn.Module, part: str) -> dict[str, torch.Tensor]:
    """Copies of the parameters of one part (to check later that a frozen part did not move).

    Args:
        model: the model.
        part: part name.
    """
    return {n: p.detach().clone() for n, p in parameters_by_part(model)[part]}
