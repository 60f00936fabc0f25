"""Export medvl checkpoints to plain Hugging Face formats.

``export_llava`` writes a 2D model whose tower is CLIP or SigLIP and whose connector is a 2-layer
MLP as a stock ``llava`` checkpoint: ``transformers.LlavaForConditionalGeneration`` and
``AutoProcessor`` load it without medvl (and vLLM / SGLang serve it). Same weights, same feature
layer and token selection, same chat template, so logits and greedy generations are unchanged.

Any other layout (3D volumes, attention/spatial pooling, LayerNorm in the connector, other towers)
has no stock Hugging Face class; such a medvl checkpoint already loads anywhere with
``trust_remote_code=True`` (its model code is saved inside it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from medvl.models import MedVLConfig

logger = logging.getLogger(__name__)

LLAVA_TOWERS = ("clip_vision_model", "siglip_vision_model")


class ExportError(ValueError):
    """The model cannot be written in the requested format (the message says why and what to use instead)."""


# Stock clients (vLLM, SGLang, OpenAI-style requests) send content parts; medvl templates expect
# string content with markers. This prefix rewrites part lists into that form (media first, each
# followed by a newline, then the text: the "<image>\nquestion" layout of LLaVA / MedM-VL data).
_PARTS_TO_TEXT = (
    "{%- set ns = namespace(msgs=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}"
    "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': m['content']}] -%}"
    "{%- else -%}"
    "{%- set acc = namespace(media='', text='') -%}"
    "{%- for p in m['content'] -%}"
    "{%- if p['type'] == 'image' or p['type'] == 'image_url' -%}{%- set acc.media = acc.media + '<image>\\n' -%}"
    "{%- elif p['type'] == 'text' -%}{%- set acc.text = acc.text + p['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': acc.media + acc.text}] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = ns.msgs -%}"
)


def content_parts_template(template: str) -> str:
    """Wrap a string-content chat template so that it also accepts content-part lists.

    Args:
        template: a Jinja chat template that reads ``message['content']`` as a string.
    """
    return _PARTS_TO_TEXT + template


def llava_incompatibility(config: MedVLConfig) -> str | None:
    """Why a medvl config cannot be written as stock LLaVA, or None when it can.

    Args:
        config: a ``MedVLConfig``.
    """
    from medvl.models.configuration_medvl import prefix_token_count

    if config.volume_config is not None:
        return "it has a volume encoder (3D input); stock LLaVA takes 2D images only"
    if config.vision_config is None:
        return "it has no 2D vision tower"
    tower = config.vision_tower_config
    if tower.model_type not in LLAVA_TOWERS:
        return f"its tower is {tower.model_type!r}; the stock export supports CLIP and SigLIP towers"
    conn = config.image_connector_config
    if conn.type != "mlp":
        return f"its connector is {conn.type!r}; stock LLaVA has a token-wise MLP projector only"
    if conn.depth != 2 or conn.layer_norm:
        return (
            f"its MLP connector has depth {conn.depth}{' and a LayerNorm' if conn.layer_norm else ''}; "
            "LLaVA's projector is exactly Linear -> activation -> Linear"
        )
    prefix = prefix_token_count(tower)
    if config.image_feature_select == "cls" or (config.image_feature_select == "patch" and prefix not in (0, 1)):
        return f"its feature select {config.image_feature_select!r} has no LLaVA equivalent"
    return None


def _select_strategy(config: MedVLConfig) -> tuple[Literal["default", "full"], int]:
    """LLaVA's (vision_feature_select_strategy, num_additional_image_tokens) for the medvl token selection."""
    from medvl.models.configuration_medvl import prefix_token_count

    prefix = prefix_token_count(config.vision_tower_config)
    if config.image_feature_select == "patch" and prefix == 1:
        return "default", 1  # drop the CLS token
    return "full", prefix  # keep every token (SigLIP has no CLS: "patch" and "all" are the same)


def _one_template(template: str | dict[str, str] | None) -> str:
    """The processor's chat template (medvl saves exactly one)."""
    if not isinstance(template, str):
        raise ExportError(f"expected one chat template string, got {type(template).__name__}")
    return template


def _llava_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if key.startswith("vision_tower."):
            out["model." + key] = value
        elif key.startswith("image_connector.mlp.0."):
            out["model.multi_modal_projector.linear_1." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("image_connector.mlp.2."):
            out["model.multi_modal_projector.linear_2." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("language_model.model."):
            out["model.language_model." + key[len("language_model.model.") :]] = value
        elif key == "language_model.lm_head.weight":
            out["lm_head.weight"] = value
        else:
            raise ExportError(f"weight {key!r} has no place in a LLaVA checkpoint")
    return out


def export_llava(model_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a medvl 2D CLIP/SigLIP + MLP model as a stock Hugging Face ``llava`` checkpoint.

    Args:
        model_dir: medvl checkpoint folder.
        out_dir: output folder: new or empty (written to a staging folder, then renamed).
        overwrite: replace a non-empty ``out_dir`` (never the source folder).

    Returns:
        The output folder.

    Raises:
        ExportError: for layouts stock LLaVA cannot express (the message points to the
            ``trust_remote_code`` checkpoint, which works everywhere transformers does).
    """

    from medvl.utils.files import check_model_folder
    from medvl.utils.paths import fresh_output_dir

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_model_folder(model_dir)
    # the target is checked before the model is loaded; it appears only once complete
    with fresh_output_dir(out_dir, overwrite=overwrite, reads=[model_dir], flag="--as-llava") as staging:
        _export_llava_into(model_dir, staging)
    logger.info("exported %s as stock LLaVA to %s", model_dir, out_dir)
    return out_dir


def _export_llava_into(model_dir: Path, out_dir: Path) -> None:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.initialization import no_init_weights

    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

    model = MedVLForConditionalGeneration.from_pretrained(model_dir, dtype="auto")
    config = model.config
    reason = llava_incompatibility(config)
    if reason is not None:
        raise ExportError(
            f"{model_dir} cannot be exported as stock LLaVA: {reason}. Use the medvl checkpoint itself: it loads "
            "without medvl through transformers with trust_remote_code=True "
            f"(AutoModelForImageTextToText.from_pretrained({str(model_dir)!r}, trust_remote_code=True) and "
            "AutoProcessor likewise), e.g. for vLLM/SGLang as a custom model."
        )
    processor = MedVLProcessor.from_pretrained(model_dir)
    strategy, additional = _select_strategy(config)
    if config.image_token_id is None:
        raise ExportError(f"{model_dir}: config.image_token_id is not set, so LLaVA could not place the images")
    text_config = config.get_text_config()
    llava_config = LlavaConfig(
        vision_config=config.vision_tower_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.num_image_tokens,
        projector_hidden_act=config.image_connector_config.activation,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=config.image_feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(text_config.tie_word_embeddings),
    )
    dtype = next(model.parameters()).dtype
    llava_config.dtype = dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            llava = LlavaForConditionalGeneration(llava_config)
    finally:
        torch.set_default_dtype(previous)
    sd = _llava_state_dict(model.state_dict())
    if llava_config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = llava.load_state_dict(sd, strict=False, assign=True)
    if llava_config.tie_word_embeddings:
        llava.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ExportError(f"weight mapping to LLaVA failed: missing {missing[:8]}, unexpected {unexpected[:8]}")
    llava.generation_config = model.generation_config
    llava.eval()

    patch = config.vision_tower_config.patch_size
    llava_processor = LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=patch if isinstance(patch, int) else patch[0],
        vision_feature_select_strategy=strategy,
        chat_template=content_parts_template(_one_template(processor.chat_template)),
        image_token="<image>",
        num_additional_image_tokens=additional,
    )
    llava.save_pretrained(out_dir)
    llava_processor.save_pretrained(out_dir)
    from medvl.model_card import write_model_card

    write_model_card(
        out_dir, step="exported to the stock Hugging Face LLaVA format with `medvl export --as-llava`", source=model_dir
    )


__all__ = ["ExportError", "export_llava", "llava_incompatibility", "content_parts_template"]
