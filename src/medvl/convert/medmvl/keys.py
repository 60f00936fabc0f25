"""MedM-VL state-dict names -> medvl parameter names: one table of rows (``KEY_TABLE``).

As in transformers' ``convert_*_to_hf.py`` scripts, the mapping is data: ordered rows of
``(regex over a MedM-VL key, target template)``, applied by :func:`medvl.models.key_mapping.rename_keys`.
The first row whose regex matches the whole key wins; ``{encoder}`` / ``{connector}`` in its target name
the medvl modules the part goes to (a 2D tower becomes the image tower, or the slice-wise volume encoder
of a CT model). A target ``None`` drops the key on purpose. A key no row matches is an error naming it,
and so is a mapped key the model does not have (:func:`~medvl.convert.medmvl.convert.load_medmvl_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medvl.models.configuration_medvl import MedVLConfig
from medvl.models.key_mapping import Row, rename_keys
from medvl.models.vit3d import Vit3DConfig, vit3d_state_dict_from_clip

from .layout import MedMVLConversionError, MedMVLLayout

# Rows for each part a MedM-VL checkpoint holds; a layout's table is the rows of the parts it has.
KEY_TABLE: dict[str, list[Row]] = {
    "llm": [
        (r"llm\.(.+)", r"language_model.\1"),  # a Hugging Face causal LM, names unchanged
    ],
    "image": [
        # MedM-VL (transformers 4) saved towers with a `vision_model.` level that transformers 5 no longer has
        (r"encoder_image\.encoder\.(?:vision_model\.)?(.+)", r"{encoder}.\1"),
        (r"connector_image\.connector\.(.+)", r"{connector}.mlp.\1"),  # the MLP (mlpNx_act: Linear, act, Linear)
        (r"connector_image\.(query|attn\..+)", r"{connector}.\1"),  # attn_pooling: learned queries + attention
    ],
    "image3d": [
        # the 3D CLIP's vision encoder, still under its own names: models.vit3d.VIT3D_KEY_TABLES renames them
        (r"encoder_image3d\.encoder\.vision_encoder\.(.+)", r"{encoder}.\1"),
        # the rest of the 3D CLIP (text encoder, projections, logit scale): MedM-VL never runs it
        (r"encoder_image3d\.encoder\..+", None),
        (r"connector_image3d\.connector\.(.+)", r"{connector}.mlp.\1"),
        (r"connector_image3d\.(query|attn\..+)", r"{connector}.\1"),
    ],
}
# The medvl modules of each part's {encoder} / {connector}, by where the part goes.
TARGET_MODULES: dict[str, dict[str, str]] = {
    "image": {"encoder": "vision_tower", "connector": "image_connector"},
    "volume": {"encoder": "volume_encoder", "connector": "volume_connector"},
}
# The module whose keys models.vit3d renames from a 3D CLIP's names to Vit3DModel's.
VIT3D_PART = "volume_encoder."


def layout_rows(layout: MedMVLLayout, config: MedVLConfig) -> list[Row]:
    """The key table of one layout: the rows of its parts, targets filled with the modules they go to.

    Args:
        layout: the checkpoint's layout.
        config: the translated medvl config (says whether a 2D tower became a slice-wise volume encoder).
    """
    rows = list(KEY_TABLE["llm"])
    for spec in layout.encoders:
        side = "image" if spec.role == "image" and config.volume_encoder != "slicewise" else "volume"
        modules = TARGET_MODULES[side]
        rows += [
            (pattern, None if target is None else target.format(**modules)) for pattern, target in KEY_TABLE[spec.role]
        ]
    return rows


def medvl_state_dict(
    layout: MedMVLLayout, state_dict: Mapping[str, torch.Tensor], config: MedVLConfig
) -> dict[str, torch.Tensor]:
    """All MedM-VL weights under medvl's parameter names (``language_model.``, ``vision_tower.``, ...).

    Args:
        layout: the checkpoint's layout.
        state_dict: the checkpoint's weights under MedM-VL's names.
        config: the translated medvl config.
    """
    out, unmapped = rename_keys(state_dict, layout_rows(layout, config))
    if unmapped:
        raise MedMVLConversionError(
            f"{len(unmapped)} weights of the MedM-VL checkpoint match no row of the key table for its layout: "
            f"{unmapped[:8]}{' ...' if len(unmapped) > 8 else ''} (does config.json describe the model these "
            "weights were saved from?)"
        )
    if layout.image3d is not None:
        # MedM-CLIP / M3D-CLIP -> Vit3DModel: names and the patch-axis permutation live with the model
        assert isinstance(config.volume_config, Vit3DConfig)
        clip = {k[len(VIT3D_PART) :]: out.pop(k) for k in [k for k in out if k.startswith(VIT3D_PART)]}
        try:
            vit = vit3d_state_dict_from_clip(clip, layout.image3d.type, config.volume_config)
        except ValueError as err:
            raise MedMVLConversionError(str(err)) from None
        out.update({VIT3D_PART + k: v for k, v in vit.items()})
    return out
