"""MedVL: a LLaVA-style medical LVLM (2D tower and/or 3D encoder + connectors + any causal LM).

REMOTE-CODE SAFE: imports only torch/transformers and siblings (copied into checkpoints).

Reads top to bottom like transformers' ``modeling_llava.py``:

1. ``get_image_features`` / ``get_volume_features``: encoder -> feature layer(s) -> token selection
   -> connector, giving (N_items, tokens_per_item, llm_hidden).
2. ``check_placeholders``: the placeholder tokens of every batch row must add up to the features;
   a mismatch raises naming the row(s).
3. ``merge_media``: ``inputs_embeds.masked_scatter`` puts the features at the placeholders.
4. Training (``labels`` given): the LLM's decoder runs without cache and the loss is the mean
   cross-entropy over supervised positions (labels != -100). ``logits`` keep the Hugging Face
   contract, (B, L, vocab), unless the caller asks for ``return_supervised_logits_only=True`` (what
   medvl's trainer does): then the LM head runs only at supervised positions and ``logits`` are
   (K, vocab), so no (B, L, vocab) tensor is built for the prompt and media positions.
   Inference: the whole causal LM runs (full logits or ``logits_to_keep``, KV cache).

State-dict layout (for converters and exporters)::

    vision_tower.*              the HF 2D tower as is (its own module names, e.g. vision_tower.encoder.*);
                                with ``image_conv_stem`` its patch-embedding conv is a ConvStem
                                (``...patch_embedding.layers.{0,3,..}``, ``...patch_embedding.proj``)
    image_connector.mlp.{0,2,..}.{weight,bias}   Linear layers (odd indices: activation)
    image_connector.norm.*      optional input LayerNorm
    volume_encoder.*            Vit3DModel (see vit3d.py), CTViTModel (ctvit.py: CT-CLIP's own keys, e.g.
                                volume_encoder.enc_spatial_transformer.layers.0.1.to_q.weight) or the HF
                                2D tower of a slicewise encoder
    volume_slice_embedding      (num_slices, feature_size), slicewise only
    volume_connector.*          as image_connector; attn_pool adds query, attn.{in_proj_*,out_proj.*},
                                norm_q / norm_kv
    language_model.*            the AutoModelForCausalLM as is (language_model.model.*, language_model.lm_head.*)
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_medvl import MedVLConfig, prefix_token_count
from .connectors import AttnPoolConnector, Connector, build_connector
from .ctvit import CTViTConfig, CTViTModel
from .stems import install_conv_stem
from .vit3d import Vit3DConfig, Vit3DModel

IGNORE_INDEX = -100


def select_features(
    hidden_states: tuple[torch.Tensor, ...], feature_layer: int | list[int], select: str, num_prefix: int
) -> torch.Tensor:
    """Pick the encoder layer(s) and tokens that feed a connector.

    Args:
        hidden_states: the encoder's per-layer hidden states (embeddings first).
        feature_layer: one index or a list (concatenated along the hidden axis).
        select: "patch" (drop the ``num_prefix`` CLS/register tokens), "cls" (first token only)
            or "all".
        num_prefix: CLS/register tokens in front of the patches.
    """
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    picked = []
    for index in layers:
        states = hidden_states[index]
        if select == "patch":
            states = states[:, num_prefix:]
        elif select == "cls":
            states = states[:, :1]
        picked.append(states)
    return picked[0] if len(picked) == 1 else torch.cat(picked, dim=-1)


def _capturing_hooks_installer() -> Callable[[PreTrainedModel], None] | None:
    """transformers 5's installer of the hooks that record hidden states (None in a transformers
    without it, which records hidden states in the forward itself)."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return None
    return maybe_install_capturing_hooks


_install_capturing_hooks = _capturing_hooks_installer()

# Encoders whose hidden states turned out not to follow their block list: they always run whole.
_FULL_DEPTH_ENCODERS: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _layer_list(encoder: nn.Module, num_layers: int) -> tuple[nn.Module, str] | None:
    """The (parent, attribute) of an encoder's block list: the ModuleList named ``layers`` / ``layer``
    holding ``num_layers`` blocks (``encoder.layers`` of CLIP / SigLIP / Vit3D, ``encoder.layer`` of ViT)."""
    for module in encoder.modules():
        for attr in ("layers", "layer"):
            child = getattr(module, attr, None)
            if isinstance(child, nn.ModuleList) and len(child) == num_layers:
                return module, attr
    return None


@contextlib.contextmanager
def _first_layers(encoder: nn.Module, num_layers: int, depth: int) -> Iterator[bool]:
    """Run only the first ``depth`` blocks of ``encoder`` inside the block (yields whether it could).

    The features come from ``hidden_states[depth]`` (e.g. layer -2 of LLaVA-style towers), which the
    later blocks do not change: skipping them saves their whole cost and gives identical features.
    """
    # depth 0 (the embeddings) is not shortened: hidden states are recorded by the blocks, so an
    # encoder with no block to run would record none.
    shortenable = 0 < depth < num_layers and encoder not in _FULL_DEPTH_ENCODERS
    found = _layer_list(encoder, num_layers) if shortenable else None
    if found is None:
        yield False
        return
    # transformers 5 records hidden states with hooks that it installs on the blocks at the model's
    # first forward, once; install them on every block now, or a first call made while shortened
    # would leave the later blocks without hooks for good (full runs would then miss their states).
    if _install_capturing_hooks is not None and isinstance(encoder, PreTrainedModel):
        _install_capturing_hooks(encoder)
    parent, attr = found
    layers = getattr(parent, attr)
    setattr(parent, attr, layers[:depth])
    try:
        yield True
    finally:
        setattr(parent, attr, layers)


def _encoder_grad(encoder: nn.Module, values: torch.Tensor) -> bool:
    """Whether autograd must record the encoder: not for a frozen encoder on plain inputs."""
    return torch.is_grad_enabled() and (values.requires_grad or any(p.requires_grad for p in encoder.parameters()))


def run_encoder(
    encoder: nn.Module, values: torch.Tensor, num_layers: int, feature_layer: int | list[int], **kwargs: Any
) -> tuple[tuple[torch.Tensor, ...], int | list[int]]:
    """Run ``encoder`` only as deep as ``feature_layer`` needs, without autograd when it is frozen.

    Args:
        encoder: a tower whose ``hidden_states`` are (embeddings, block 1, ..., block L).
        values: its input.
        num_layers: its block count L.
        feature_layer: the hidden-state index (or indices) the connector reads.
        **kwargs: extra forward arguments (e.g. ``return_dict=True``).

    Returns:
        ``(hidden_states, feature_layer)`` with the index rewritten for the shortened run.
    """
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    positive = [index % (num_layers + 1) for index in layers]
    depth = max(positive)
    with torch.set_grad_enabled(_encoder_grad(encoder, values)), _first_layers(encoder, num_layers, depth) as short:
        hidden_states = encoder(values, output_hidden_states=True, **kwargs).hidden_states
    if not short:
        return hidden_states, feature_layer
    if len(hidden_states) != depth + 1:  # an encoder whose hidden states do not follow the block list:
        _FULL_DEPTH_ENCODERS.add(encoder)  # run it whole from now on (not shortened, then again in full)
        with torch.set_grad_enabled(_encoder_grad(encoder, values)):
            return encoder(values, output_hidden_states=True, **kwargs).hidden_states, feature_layer
    return hidden_states, positive[0] if isinstance(feature_layer, int) else positive


class MedVLPreTrainedModel(PreTrainedModel):
    config: MedVLConfig
    config_class = MedVLConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ["image", "text"]
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only our own modules get here: sub-models (LLM, towers, Vit3D) are PreTrainedModels and
        # transformers dispatches their own _init_weights. The `init` functions skip parameters
        # already loaded from a checkpoint, so pretrained parts keep their weights bit for bit.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, AttnPoolConnector):
            init.normal_(module.query, mean=0.0, std=std)
        elif isinstance(module, MedVLForConditionalGeneration) and module.volume_slice_embedding is not None:
            # zero: an untrained slice embedding leaves the slice features unchanged
            init.zeros_(module.volume_slice_embedding)


class MedVLForConditionalGeneration(MedVLPreTrainedModel, GenerationMixin):
    """Encoders + connectors + ``AutoModelForCausalLM``.

    Submodules: ``vision_tower`` (2D, optional), ``image_connector``, ``volume_encoder`` (Vit3D or a
    2D tower run per slice, optional), ``volume_connector``, ``volume_slice_embedding`` (slicewise),
    ``language_model`` (the full causal LM with its head).
    """

    def __init__(self, config: MedVLConfig):
        super().__init__(config)
        llm_hidden = config.get_text_config().hidden_size
        self.vision_tower: PreTrainedModel | None = None
        self.image_connector: Connector | None = None
        if config.vision_config is not None:
            vision_config = config.vision_tower_config
            self.vision_tower = AutoModel.from_config(vision_config)
            if config.image_conv_stem:
                install_conv_stem(self.vision_tower, vision_config.patch_size, config.image_conv_stem)
            _, grid = config.image_token_layout()
            self.image_connector = build_connector(
                config.image_connector_config, config.image_feature_size(), llm_hidden, grid
            )
        self.volume_encoder: PreTrainedModel | None = None
        self.volume_connector: Connector | None = None
        self.volume_slice_embedding: nn.Parameter | None = None
        if config.volume_config is not None:
            volume_config = config.volume_encoder_config
            # MedVLConfig checked that the config class matches volume_encoder. Not isinstance here: loaded
            # as remote code, the config and this file may import two copies of vit3d.py / ctvit.py.
            if config.volume_encoder == "vit3d":
                self.volume_encoder = Vit3DModel(cast(Vit3DConfig, volume_config))
            elif config.volume_encoder == "ctvit":
                self.volume_encoder = CTViTModel(cast(CTViTConfig, volume_config))
            else:
                self.volume_encoder = AutoModel.from_config(volume_config)
                if config.slice_position_embedding:
                    self.volume_slice_embedding = nn.Parameter(
                        torch.zeros(config.volume_num_slices, config.volume_feature_size())
                    )
            _, grid = config.volume_token_layout()
            self.volume_connector = build_connector(
                config.volume_connector_config, config.volume_feature_size(), llm_hidden, grid
            )
        self.language_model: PreTrainedModel = AutoModelForCausalLM.from_config(config.get_text_config())
        self.post_init()

    # ------------------------------------------------------------------ embeddings / LLM access
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        """The LLM's transformer stack without the LM head."""
        return self.language_model.get_decoder()

    # ------------------------------------------------------------------ 1. media features
    # Two stages each: encode_* (encoder + feature layer/token selection: what a frozen-encoder
    # feature cache stores) and get_*_features (the trainable rest: slice embedding + connector).
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Run the 2D tower and select feature layer(s) and tokens.

        Args:
            pixel_values: (N, 3, H, W) float, all images of the batch in text order.

        Returns:
            (N, tokens, config.image_feature_size()) connector inputs.
        """
        if self.vision_tower is None:
            raise ValueError("this model has no 2D vision tower (vision_config is None) but got pixel_values")
        vision_config = self.config.vision_tower_config
        tower_dtype = next(self.vision_tower.parameters()).dtype
        hidden_states, feature_layer = run_encoder(
            self.vision_tower,
            pixel_values.to(tower_dtype),
            vision_config.num_hidden_layers,
            self.config.image_feature_layer,
            return_dict=True,
        )
        return select_features(
            hidden_states, feature_layer, self.config.image_feature_select, prefix_token_count(vision_config)
        )

    def get_image_features(
        self, pixel_values: torch.Tensor | None = None, encoder_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode 2D images into LLM embeddings.

        Args:
            pixel_values: (N, 3, H, W) float, all images of the batch in text order.
            encoder_features: instead of pixel_values, cached ``encode_images`` outputs.

        Returns:
            (N, config.num_image_tokens, llm_hidden).
        """
        if encoder_features is None:
            if pixel_values is None:
                raise ValueError("get_image_features needs pixel_values or encoder_features")
            encoder_features = self.encode_images(pixel_values)
        if self.image_connector is None:
            raise ValueError("this model has no 2D vision tower (vision_config is None)")
        return self.image_connector(encoder_features.to(self.image_connector.input_dtype))

    def encode_volumes(self, volume_values: torch.Tensor) -> torch.Tensor:
        """Run the volume encoder and select feature layer(s) and tokens.

        Args:
            volume_values: (N, C, D, H, W) float, all volumes of the batch in text order.

        Returns:
            (N, tokens, config.volume_feature_size()); slicewise: slice-major (slice 0's tokens,
            then slice 1's, ...); ctvit: CTViT's (t, h, w) raster order, quantised tokens (feature
            select "patch") or pre-quantisation tokens ("pre_vq").
        """
        if self.volume_encoder is None:
            raise ValueError("this model has no volume encoder (volume_config is None) but got volume_values")
        if volume_values.ndim != 5:
            raise ValueError(f"volume_values must be (N, C, D, H, W), got shape {tuple(volume_values.shape)}")
        encoder_dtype = next(self.volume_encoder.parameters()).dtype
        volume_values = volume_values.to(encoder_dtype)
        if self.config.volume_encoder == "vit3d":
            return self._encode_volumes_vit3d(self.volume_encoder, volume_values)
        if self.config.volume_encoder == "ctvit":
            return self._encode_volumes_ctvit(self.volume_encoder, volume_values)
        return self._encode_volumes_slicewise(self.volume_encoder, volume_values)

    def _encode_volumes_vit3d(self, encoder: nn.Module, volume_values: torch.Tensor) -> torch.Tensor:
        """The native 3D ViT: hidden state(s) of ``volume_feature_layer``, CLS and/or patch tokens."""
        volume_config = self.config.volume_encoder_config
        # M3D semantics (hidden_states[-1] normed) tie the last state to the full depth
        full = volume_config.final_norm_in_hidden_states
        hidden_states, feature_layer = run_encoder(
            encoder,
            volume_values,
            volume_config.num_hidden_layers,
            -1 if full else self.config.volume_feature_layer,
        )
        if full:
            feature_layer = self.config.volume_feature_layer
        return select_features(
            hidden_states, feature_layer, self.config.volume_feature_select, int(volume_config.use_cls_token)
        )

    def _encode_volumes_ctvit(self, encoder: nn.Module, volume_values: torch.Tensor) -> torch.Tensor:
        """CT-CLIP's CTViT: its quantised tokens ("patch") or its pre-quantisation tokens ("pre_vq")."""
        frames = self.config.volume_encoder_config.num_frames
        if volume_values.shape[2] != frames:
            raise ValueError(
                f"the ctvit volume encoder is configured for {frames} slices (volume_config.num_frames), "
                f"got volumes of shape {tuple(volume_values.shape)}"
            )
        outputs = encoder(volume_values)
        if self.config.volume_feature_select == "pre_vq":
            return outputs.pre_quantization
        return outputs.last_hidden_state

    def _encode_volumes_slicewise(self, encoder: nn.Module, volume_values: torch.Tensor) -> torch.Tensor:
        """A 2D tower on every slice; the slices' tokens are concatenated, slice-major."""
        # (N, C, D, H, W) -> (N*D, C, H, W), slice index fastest within a volume (MedM-VL)
        n, c, d, h, w = volume_values.shape
        if d != self.config.volume_num_slices:
            raise ValueError(f"slicewise volume encoder expects {self.config.volume_num_slices} slices, got {d}")
        volume_config = self.config.volume_encoder_config
        slices = volume_values.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)
        hidden_states, feature_layer = run_encoder(
            encoder,
            slices,
            volume_config.num_hidden_layers,
            self.config.volume_feature_layer,
            return_dict=True,
        )
        features = select_features(
            hidden_states, feature_layer, self.config.volume_feature_select, prefix_token_count(volume_config)
        )
        return features.reshape(n, d * features.shape[1], features.shape[2])

    def get_volume_features(
        self, volume_values: torch.Tensor | None = None, encoder_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode 3D volumes into LLM embeddings.

        Args:
            volume_values: (N, C, D, H, W) float, all volumes of the batch in text order.
            encoder_features: instead of volume_values, cached ``encode_volumes`` outputs.

        Returns:
            (N, config.num_volume_tokens, llm_hidden).
        """
        if encoder_features is None:
            if volume_values is None:
                raise ValueError("get_volume_features needs volume_values or encoder_features")
            encoder_features = self.encode_volumes(volume_values)
        if self.volume_connector is None:
            raise ValueError("this model has no volume encoder (volume_config is None)")
        features = encoder_features.to(self.volume_connector.input_dtype)
        if self.volume_slice_embedding is not None:
            n, tokens, width = features.shape
            d = self.config.volume_num_slices
            features = features.reshape(n, d, tokens // d, width) + self.volume_slice_embedding[None, :, None, :]
            features = features.reshape(n, tokens, width)
        return self.volume_connector(features)

    # ------------------------------------------------------------------ 2. count check
    @staticmethod
    def check_placeholders(input_ids: torch.Tensor, token_id: int, features: torch.Tensor, kind: str) -> torch.Tensor:
        """Return the placeholder mask (B, L) after checking it matches the features.

        Args:
            input_ids: (B, L) token ids.
            token_id: the placeholder id of this modality.
            features: (N_items, tokens_per_item, hidden).
            kind: "image" or "volume" (for the message).

        Raises:
            ValueError: naming the batch row(s) whose placeholder count is not a whole number of
                items, or listing every row's count when the total disagrees with the items given.
        """
        mask = input_ids == token_id
        per_item = features.shape[1]
        counts = mask.sum(dim=-1).tolist()
        bad_rows = [row for row, count in enumerate(counts) if count % per_item]
        if bad_rows:
            details = ", ".join(f"row {row} has {counts[row]}" for row in bad_rows)
            raise ValueError(
                f"{kind} placeholder count mismatch: batch {details} {kind} placeholder tokens, not a multiple of "
                f"the {per_item} tokens one {kind} takes (was the text tokenised by this model's processor?)"
            )
        total_items = sum(counts) // per_item
        if total_items != features.shape[0]:
            rows = ", ".join(f"row {row}: {count // per_item}" for row, count in enumerate(counts) if count)
            raise ValueError(
                f"{kind} placeholder count mismatch: the batch rows hold placeholders for {total_items} {kind}(s) "
                f"({rows or 'none'}), but {features.shape[0]} {kind}(s) were given"
            )
        return mask

    # ------------------------------------------------------------------ 3. merge
    def merge_media(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        volume_values: torch.Tensor | None = None,
        image_encoder_features: torch.Tensor | None = None,
        volume_encoder_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Replace image / volume placeholder embeddings by media features.

        Args:
            input_ids: (B, L) token ids (placeholders included).
            inputs_embeds: (B, L, hidden) text embeddings.
            pixel_values: (N_images, 3, H, W) or None.
            volume_values: (N_volumes, C, D, H, W) or None.
            image_encoder_features / volume_encoder_features: cached ``encode_images`` /
                ``encode_volumes`` outputs, used instead of pixel / volume values.
        """
        for kind, values, cached, token_id, encode in (
            ("image", pixel_values, image_encoder_features, self.config.image_token_id, self.get_image_features),
            ("volume", volume_values, volume_encoder_features, self.config.volume_token_id, self.get_volume_features),
        ):
            if values is not None and cached is not None:
                raise ValueError(f"pass either {kind} values or cached {kind} encoder features, not both")
            if values is None:
                values = cached
            if values is None:
                if token_id is not None and bool((input_ids == token_id).any()):
                    rows = torch.nonzero((input_ids == token_id).any(-1)).flatten().tolist()
                    raise ValueError(f"batch row(s) {rows} contain {kind} placeholders but no {kind} inputs were given")
                continue
            if values.shape[0] == 0:
                continue
            if token_id is None:
                raise ValueError(f"config.{kind}_token_id is not set, so {kind} inputs cannot be placed in the text")
            features = encode(values) if cached is None else encode(encoder_features=cached)
            features = features.to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.check_placeholders(input_ids, token_id, features, kind)
            inputs_embeds = inputs_embeds.masked_scatter(
                mask.unsqueeze(-1).to(inputs_embeds.device), features.reshape(-1, features.shape[-1])
            )
        return inputs_embeds

    # ------------------------------------------------------------------ 4. forward
    def embed_inputs(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        volume_values: torch.Tensor | None = None,
        image_encoder_features: torch.Tensor | None = None,
        volume_encoder_features: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the media features at their placeholders (the LLM's input).

        Args:
            input_ids: (B, L) ids, or None with ``inputs_embeds``.
            inputs_embeds: ready text embeddings (media cannot then be merged).
            pixel_values / volume_values / image_encoder_features / volume_encoder_features: as ``forward``.
            cache: the KV cache (decode steps after the prefill are not checked for placeholders).
        """
        if inputs_embeds is not None:
            if input_ids is not None:
                raise ValueError("pass exactly one of input_ids or inputs_embeds")
            if pixel_values is not None or volume_values is not None:
                raise ValueError("media inputs need input_ids (placeholders) to be merged, not inputs_embeds")
            return inputs_embeds
        if input_ids is None:
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        inputs_embeds = self.get_input_embeddings()(input_ids)
        # Without media, a prompt (no cache yet) must not hold placeholders either; decode steps
        # are not checked: a generated token may legitimately be a marker id.
        prefill = cache is None or cache.get_seq_length() == 0
        media = (pixel_values, volume_values, image_encoder_features, volume_encoder_features)
        if prefill or any(m is not None for m in media):
            inputs_embeds = self.merge_media(input_ids, inputs_embeds, *media)
        return inputs_embeds

    @property
    def base_model(self) -> MedVLBackbone:  # type: ignore[override]  # a parameter-free view, not an nn.Module
        """The model without its LM head, as Hugging Face vision-language models expose it.

        transformers' VLMs keep their body (media merge + LLM decoder) in ``model`` and return
        ``last_hidden_state`` from it; libraries that apply the LM head themselves (TRL's fused LM
        head in ``SFTTrainer`` / ``DPOTrainer``) call ``model.base_model(...)``. medvl's parameters
        live directly on this class (see the state-dict layout above), so this is a parameter-free
        view that runs :meth:`forward_backbone`.
        """
        return MedVLBackbone(self)

    def forward_backbone(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        volume_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        image_encoder_features: torch.Tensor | None = None,
        volume_encoder_features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Media merge + the LLM's decoder: ``last_hidden_state`` (B, L, hidden), no LM head.

        Args:
            input_ids ... volume_encoder_features: as :meth:`forward`.
            **kwargs: passed to the decoder (e.g. ``output_hidden_states``).
        """
        if cache is None:
            cache = past_key_values
        inputs_embeds = self.embed_inputs(
            input_ids,
            inputs_embeds,
            pixel_values,
            volume_values,
            image_encoder_features,
            volume_encoder_features,
            cache,
        )
        return self.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        volume_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        image_encoder_features: torch.Tensor | None = None,
        volume_encoder_features: torch.Tensor | None = None,
        return_supervised_logits_only: bool = False,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Run the model.

        Args:
            input_ids: (B, L) ids with ``num_image_tokens`` / ``num_volume_tokens`` placeholders per item.
            pixel_values: (N_images, 3, H, W), images of all rows in text order.
            volume_values: (N_volumes, C, D, H, W), volumes of all rows in text order.
            attention_mask: (B, L).
            position_ids: (B, L) or (1, L) for packed (padding-free) rows.
            cache: KV cache (generation).
            inputs_embeds: text embeddings instead of input_ids (media cannot then be merged).
            labels: (B, L), NOT shifted, -100 where unsupervised. When given, ``loss`` is the mean
                cross-entropy of the supervised positions (or their sum / ``num_items_in_batch``).
            use_cache: forced off when training with labels.
            logits_to_keep: inference only: keep the last N positions' logits (0 = all).
            num_items_in_batch: total supervised tokens over gradient-accumulation steps (HF Trainer).
            past_key_values: older name of ``cache``.
            image_encoder_features / volume_encoder_features: cached frozen-encoder outputs
                (``encode_images`` / ``encode_volumes``) instead of pixel / volume values.
            return_supervised_logits_only: with ``labels``: apply the LM head only at the K
                supervised positions and return ``logits`` of shape (K, vocab) (row-major order)
                instead of (B, L, vocab). Same loss, far less memory; medvl's trainer asks for it.
                Default False: the standard (B, L, vocab) that ``Trainer.predict``,
                ``compute_metrics`` and TRL expect.
        """
        if cache is None:
            cache = past_key_values
        inputs_embeds = self.embed_inputs(
            input_ids,
            inputs_embeds,
            pixel_values,
            volume_values,
            image_encoder_features,
            volume_encoder_features,
            cache,
        )
        if labels is None:  # inference: the whole causal LM (its head, KV cache, logits_to_keep)
            return self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        outputs = self.get_decoder()(  # training: the decoder without cache, the head applied below
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        targets = self._next_token_targets(labels).to(hidden.device)
        supervised = targets != IGNORE_INDEX
        logits, supervised_logits = self._lm_head(hidden, supervised, return_supervised_logits_only)
        loss = self._mean_loss(supervised_logits, targets[supervised], supervised, num_items_in_batch)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    # ------------------------------------------------------------------ 5. loss (training path)
    @staticmethod
    def _next_token_targets(labels: torch.Tensor) -> torch.Tensor:
        """(B, L) target of every position: position p predicts token p+1, the last one nothing."""
        return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)

    def _lm_head(
        self, hidden: torch.Tensor, supervised: torch.Tensor, supervised_only: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits to return, logits of the supervised positions)``.

        With ``supervised_only`` the head runs at the K supervised positions only and both are
        (K, vocab); otherwise the returned logits are the full (B, L, vocab).
        """
        head = self.get_output_embeddings()
        if supervised_only:
            logits = self._scale_logits(head(hidden[supervised]))
            return logits, logits
        logits = self._scale_logits(head(hidden))
        return logits, logits[supervised]

    @staticmethod
    def _mean_loss(
        supervised_logits: torch.Tensor,
        supervised_targets: torch.Tensor,
        supervised: torch.Tensor,
        num_items_in_batch: int | torch.Tensor | None,
    ) -> torch.Tensor:
        """Cross-entropy summed over the supervised tokens, divided by their count.

        With gradient accumulation the HF Trainer passes ``num_items_in_batch``, the total over all
        micro-batches, so that every token weighs the same (an empty row gives loss 0).
        """
        loss = F.cross_entropy(supervised_logits.float(), supervised_targets, reduction="sum")
        denominator = num_items_in_batch if num_items_in_batch is not None else supervised.sum().clamp(min=1)
        if isinstance(denominator, torch.Tensor):
            denominator = denominator.to(loss.device)
        return loss / denominator

    def _scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        # A few LLM families scale / soft-cap the LM head output (Cohere, Granite, Gemma 2/3); the
        # training path applies the head itself, so it mirrors what their forward does.
        text_config = self.config.get_text_config()
        scale = getattr(text_config, "logit_scale", None)
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            logits = logits * scale
        scaling = getattr(text_config, "logits_scaling", None)  # Granite divides
        if isinstance(scaling, (int, float)) and not isinstance(scaling, bool) and scaling:
            logits = logits / scaling
        softcap = getattr(text_config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    # ------------------------------------------------------------------ generation
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        volume_values: torch.Tensor | None = None,
        image_encoder_features: torch.Tensor | None = None,
        volume_encoder_features: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Media go in the prefill step only; later steps decode from the KV cache."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["pixel_values"] = pixel_values
            model_inputs["volume_values"] = volume_values
            model_inputs["image_encoder_features"] = image_encoder_features
            model_inputs["volume_encoder_features"] = volume_encoder_features
        return model_inputs


class MedVLBackbone:
    """A parameter-free view of a :class:`MedVLForConditionalGeneration` without its LM head.

    Calling it runs ``model.forward_backbone`` (media merge + decoder -> ``last_hidden_state``).
    Not an ``nn.Module``: it owns nothing, so the model's state dict and parameter list are unchanged.

    Args:
        model: the full model.
    """

    # transformers asks the base model for its parallelism plans; medvl defines none
    _tp_plan = None
    _pp_plan = None

    def __init__(self, model: MedVLForConditionalGeneration):
        self.model = model
        self.config = model.config

    def __call__(self, *args: Any, **kwargs: Any) -> BaseModelOutputWithPast:
        return self.model.forward_backbone(*args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model.get_image_features(*args, **kwargs)

    def get_volume_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model.get_volume_features(*args, **kwargs)


__all__ = ["MedVLBackbone", "MedVLForConditionalGeneration", "MedVLPreTrainedModel", "select_features"]
