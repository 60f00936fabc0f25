"""The conversion, step by step: layout -> parts -> weights -> config -> model -> processor -> folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from medvl.build import media_token_ids
from medvl.model_card import write_model_card
from medvl.models.configuration_medvl import MedVLConfig
from medvl.models.modeling_medvl import MedVLForConditionalGeneration
from medvl.utils.files import load_state_dict
from medvl.utils.paths import fresh_output_dir

from .config import translate_config
from .keys import medvl_state_dict
from .layout import MedMVLConversionError, MedMVLLayout, MedMVLParts, read_layout, resolve_parts
from .processor import medmvl_processor, medmvl_tokenizer

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _decide_tie(state_dict: dict[str, torch.Tensor], text_config: dict[str, Any]) -> bool:
    """Tie when the LLM config says so and the checkpoint's lm_head is absent or equal to the embeddings.

    An identical stored copy (DeepSpeed saves both) is removed from ``state_dict``; a differing one
    unties ``text_config``.
    """
    head_key, embed_key = "llm.lm_head.weight", "llm.model.embed_tokens.weight"
    if not text_config.get("tie_word_embeddings", False):
        if head_key not in state_dict:
            raise MedMVLConversionError("the checkpoint has no llm.lm_head.weight and the LLM config does not tie it")
        return False
    head = state_dict.get(head_key)
    if head is None:
        logger.info("checkpoint stores no lm_head; tying it to embed_tokens as the LLM config says")
        return True
    embed = state_dict[embed_key]
    if head.shape == embed.shape and torch.equal(head, embed):
        state_dict.pop(head_key)  # identical copy: keep one, tied
        return True
    logger.warning("lm_head differs from embed_tokens although the LLM config ties them; keeping both untied")
    text_config["tie_word_embeddings"] = False
    return False


def _empty_model(config: MedVLConfig, dtype: torch.dtype) -> MedVLForConditionalGeneration:
    """Instantiate without random initialisation (every weight is loaded next), in the checkpoint dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            return MedVLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)


def load_medmvl_weights(model: MedVLForConditionalGeneration, state_dict: dict[str, torch.Tensor], tie: bool) -> None:
    """Load the mapped weights into ``model``; tie the LM head when the checkpoint has none.

    Args:
        model: the empty model.
        state_dict: from :func:`~medvl.convert.medmvl.keys.medvl_state_dict`.
        tie: whether ``lm_head`` shares the input embedding matrix.

    Raises:
        MedMVLConversionError: naming the weights the model lacks or does not have.
    """
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
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


def build_medvl_model(
    src: str | Path,
    *,
    llm: str | Path | None = None,
    vision: str | Path | None = None,
    volume: str | Path | None = None,
    token_ids: dict[str, int] | None = None,
    tower_input: str = "auto",
) -> tuple[MedVLForConditionalGeneration, MedMVLLayout, MedMVLParts]:
    """Build a ``MedVLForConditionalGeneration`` holding a MedM-VL checkpoint's weights (no processor).

    Args:
        src: MedM-VL checkpoint folder.
        llm / vision / volume: local part folders (see :func:`~medvl.convert.medmvl.layout.resolve_parts`).
        token_ids: ``{"image_token_id": ..., "volume_token_id": ...}`` of the processor's tokenizer.
        tower_input: see :func:`~medvl.convert.medmvl.config.translate_config`.
    """
    layout = read_layout(src)
    parts = resolve_parts(src, layout, llm=llm, vision=vision, volume=volume)
    state_dict = load_state_dict(src)
    kwargs = translate_config(layout, parts, state_dict, tower_input)
    tie = _decide_tie(state_dict, kwargs["text_config"])
    kwargs.update(token_ids or {})
    dtype = state_dict["llm.model.embed_tokens.weight"].dtype
    config = MedVLConfig(**kwargs)
    config.dtype = dtype
    config.get_text_config().dtype = dtype
    model = _empty_model(config, dtype)
    load_medmvl_weights(model, medvl_state_dict(layout, state_dict, config), tie)
    model.eval()
    return model, layout, parts


def _fit_tokenizer(model: MedVLForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> None:
    """Add embedding rows for the media markers when the LLM's vocabulary has no spare rows for them."""
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding)
    rows = embeddings.num_embeddings
    if len(tokenizer) > rows:
        logger.warning(
            "tokenizer has %d entries but the embedding %d rows; adding rows for the media markers",
            len(tokenizer),
            rows,
        )
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)


def _medmvl_generation_config(
    model: MedVLForConditionalGeneration, tokenizer: PreTrainedTokenizerBase
) -> GenerationConfig:
    """Greedy, no penalties: MedM-VL never applies the LLM's hub generation_config after a reload."""
    return GenerationConfig(
        bos_token_id=model.config.get_text_config().bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )


def _write_provenance(out: Path, src: Path, layout: MedMVLLayout, parts: MedMVLParts) -> None:
    """The model card and ``medmvl_source.json`` (the source folder, its lvlm config and the part folders)."""
    write_model_card(
        out,
        step=f"converted from the MedM-VL checkpoint `{src.name}` with `medvl convert` (same "
        "outputs as MedM-VL's code); its training data, licences and evaluation are those "
        "of the original release and its model card",
    )
    source = {
        "source": str(src.resolve()),
        "lvlm_config": layout.raw,
        "parts": {k: str(v) for k, v in vars(parts).items() if v is not None},
    }
    (out / "medmvl_source.json").write_text(json.dumps(source, indent=1))


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
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: valid choices: {', '.join(DTYPES)}")
    src, out = Path(src), Path(out)
    # checked before any weight is read; the folder appears only once complete
    with fresh_output_dir(out, overwrite=overwrite, reads=[src, llm, vision, volume], flag="OUT") as staging:
        layout = read_layout(src)
        parts = resolve_parts(src, layout, llm=llm, vision=vision, volume=volume)
        tokenizer = medmvl_tokenizer(parts, src)
        model, layout, parts = build_medvl_model(
            src,
            llm=parts.llm,
            vision=parts.vision,
            volume=parts.volume,
            token_ids=media_token_ids(tokenizer),
            tower_input=tower_input,
        )
        _fit_tokenizer(model, tokenizer)
        if dtype is not None:
            # PreTrainedModel.to is functools.wraps(nn.Module.to): typeshed's _Wrapped keeps the unbound
            # (self, ...) signature, so mypy takes the first argument for self
            model.to(DTYPES[dtype])  # type: ignore[arg-type]
        model.generation_config = _medmvl_generation_config(model, tokenizer)
        processor = medmvl_processor(layout, parts, model.config, tokenizer)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        _write_provenance(staging, src, layout, parts)
    logger.info("converted MedM-VL checkpoint %s -> %s", src, out)
    return out
