"""LoRA adapters: saving what trained beside them, loading them back, and merging.

A LoRA run saves a PEFT adapter folder: ``adapter_config.json`` + ``adapter_model.safetensors``
(LoRA weights and, as PEFT ``modules_to_save``, the parts trained in full such as the connector).
Trainable bare parameters that PEFT cannot wrap (e.g. a slice position embedding) go to
``medvl_extra_trainable.safetensors`` in the same folder. ``base_model_name_or_path`` names the base
checkpoint folder. Merging happens only in :func:`merge_lora`, which writes a self-contained
checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

EXTRA_TRAINABLE_NAME = "medvl_extra_trainable.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# files of a Trainer checkpoint or an adapter folder that do not belong in a model checkpoint
_NOT_MODEL_FILES = ("trainer_state.json", "README.md", EXTRA_TRAINABLE_NAME)


def is_adapter_dir(path: str | Path) -> bool:
    """True when ``path`` is a PEFT adapter folder (has ``adapter_config.json``).

    Args:
        path: a folder.
    """
    return (Path(path) / ADAPTER_CONFIG_NAME).is_file()


def is_peft_model(model: object) -> TypeGuard[PeftModel]:
    """True for a ``peft.PeftModel``.

    Args:
        model: any object (a module, or None).
    """
    from peft import PeftModel

    return isinstance(model, PeftModel)


def extra_trainable_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """Trainable parameters of a PeftModel that its adapter save does not hold.

    These are bare ``nn.Parameter`` attributes of parts trained in full (PEFT's ``modules_to_save``
    can only wrap modules). Names are those of the base model (without PEFT's prefix).

    Args:
        model: a ``peft.PeftModel``.
    """
    base = model.get_base_model()
    out = {}
    for name, param in base.named_parameters():
        if not param.requires_grad or "lora_" in name or "modules_to_save" in name:
            continue
        out[name] = param.detach().to("cpu").contiguous()
    return out


def save_extra_trainable(model: PeftModel, folder: str | Path) -> Path | None:
    """Write :func:`extra_trainable_state` of ``model`` to ``folder`` (nothing when empty).

    Args:
        model: a ``peft.PeftModel``.
        folder: the adapter folder.
    """
    from safetensors.torch import save_file

    state = extra_trainable_state(model)
    if not state:
        return None
    path = Path(folder) / EXTRA_TRAINABLE_NAME
    save_file(state, str(path))
    return path


def load_extra_trainable(model: nn.Module, folder: str | Path) -> list[str]:
    """Load ``medvl_extra_trainable.safetensors`` from ``folder`` into ``model`` (if present).

    Args:
        model: a PeftModel or the plain base model.
        folder: the adapter folder.
    Returns:
        the names of the loaded parameters.
    """
    from safetensors.torch import load_file

    path = Path(folder) / EXTRA_TRAINABLE_NAME
    if not path.is_file():
        return []
    base = model.get_base_model() if is_peft_model(model) else model
    params = dict(base.named_parameters())
    state = load_file(str(path))
    missing = sorted(set(state) - set(params))
    if missing:
        raise ValueError(f"{path}: parameters {missing} are not in the model; was it saved from another model?")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].dtype))
    return sorted(state)


def base_model_path(adapter_dir: str | Path) -> Path:
    """The base checkpoint folder an adapter folder refers to.

    Relative ``base_model_name_or_path`` values are taken relative to the adapter folder.

    Args:
        adapter_dir: a PEFT adapter folder.
    """
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG_NAME}: no base_model_name_or_path")
    base_path = Path(base)
    if not base_path.is_absolute():
        base_path = (adapter_dir / base_path).resolve()
    if not (base_path / "config.json").is_file():
        raise FileNotFoundError(
            f"{adapter_dir}: the base checkpoint {base_path} named by {ADAPTER_CONFIG_NAME} does not exist "
            "(medvl does not download models; keep the base checkpoint folder next to the run)"
        )
    return base_path


def load_auto_model(path: str | Path, **kwargs: Any) -> PreTrainedModel:
    """Load a saved model folder through the Auto classes (medvl's are registered on import).

    Args:
        path: a checkpoint folder.
        **kwargs: passed to ``from_pretrained`` (e.g. ``dtype``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    import medvl.models  # noqa: F401  (registers medvl's Auto classes, also under the `medvl` console script)

    config = AutoConfig.from_pretrained(path)
    for auto in (AutoModelForImageTextToText, AutoModelForCausalLM):
        if type(config) in auto._model_mapping:
            return auto.from_pretrained(path, **kwargs)
    raise ValueError(f"{path}: model type {config.model_type!r} is neither an image-text-to-text nor a causal LM model")


def load_with_adapter(adapter_dir: str | Path, *, trainable: bool = False, **kwargs: Any) -> PeftModel:
    """Load the base model of ``adapter_dir`` with the adapter (and extra trained parameters) applied.

    Args:
        adapter_dir: a PEFT adapter folder written by ``medvl train``.
        trainable: keep the adapter trainable (for further training).
        **kwargs: passed to the base model's ``from_pretrained``.
    Returns:
        a ``peft.PeftModel``.
    """
    from peft import PeftModel

    base = load_auto_model(base_model_path(adapter_dir), **kwargs)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    load_extra_trainable(model, adapter_dir)
    return model


def copy_non_weight_files(src: str | Path, dst: str | Path) -> None:
    """Copy the processor, tokenizer, chat template and code files of a checkpoint (not weights).

    Args:
        src: a checkpoint folder.
        dst: the destination folder.
    """
    src, dst = Path(src), Path(dst)
    for item in src.iterdir():
        if not item.is_file() or item.name == "config.json" or item.name in _WEIGHT_INDEXES + _NOT_MODEL_FILES:
            continue
        if item.suffix in _WEIGHT_SUFFIXES or item.name.startswith("adapter_"):
            continue
        shutil.copy2(item, dst / item.name)


def merge_lora(adapter_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Merge a LoRA adapter into its base model and write a self-contained checkpoint.

    The result loads with ``from_pretrained`` and no PEFT, and gives the same outputs as the base
    model with the adapter applied.

    Args:
        adapter_dir: a PEFT adapter folder written by ``medvl train`` (``output/model`` or a
            ``checkpoint-N`` of a LoRA run).
        out_dir: the new checkpoint folder: new or empty (written atomically).
        overwrite: replace a non-empty ``out_dir`` (never the adapter or its base).
    Returns:
        ``out_dir`` as a Path.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not is_adapter_dir(adapter_dir):
        raise ValueError(f"{adapter_dir}: not a LoRA adapter folder (no {ADAPTER_CONFIG_NAME})")
    base_dir = base_model_path(adapter_dir)
    from medvl.utils.paths import fresh_output_dir

    writer = fresh_output_dir(out_dir, overwrite=overwrite, reads=[adapter_dir, base_dir], flag="--merge-lora")
    with writer as staging:  # target checked before the (large) base model is loaded
        model = load_with_adapter(adapter_dir)
        merged = model.merge_and_unload()
        copy_non_weight_files(base_dir, staging)
        # the processor saved with the adapter (if any) is the one the run trained with
        copy_non_weight_files(adapter_dir, staging)
        merged.save_pretrained(staging)
        from medvl.model_card import write_model_card

        write_model_card(
            staging, step="LoRA adapter merged into its base (`medvl export --merge-lora`)", source=adapter_dir
        )
    logger.info("merged %s into %s -> %s", adapter_dir, base_dir, out_dir)
    return out_dir
