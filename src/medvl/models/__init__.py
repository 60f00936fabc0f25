"""medvl's Hugging Face model classes (remote-code safe files) and their Auto-class registration."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_medvl import ConnectorConfig, MedVLConfig
from .connectors import AttnPoolConnector, MLPConnector, SpatialPoolConnector, build_connector
from .ctvit import CTViTConfig, CTViTModel
from .modeling_medvl import MedVLForConditionalGeneration, MedVLPreTrainedModel
from .processing_medvl import CHATML_TEMPLATE, MedVLProcessor
from .vit3d import Vit3DConfig, Vit3DModel


def register_auto_classes() -> None:
    """Register medvl with the transformers Auto classes (idempotent).

    Also marks the classes for ``auto_map`` so ``save_pretrained`` writes the code files into the
    checkpoint and it loads with ``trust_remote_code=True`` where medvl is not installed.
    """
    for model_type, config_cls in (("medvl", MedVLConfig), ("medvl_vit3d", Vit3DConfig), ("medvl_ctvit", CTViTConfig)):
        try:
            AutoConfig.register(model_type, config_cls)
        except ValueError:  # already registered
            pass
    for auto_cls, config_cls, model_cls in (
        (AutoModelForImageTextToText, MedVLConfig, MedVLForConditionalGeneration),
        (AutoModel, Vit3DConfig, Vit3DModel),
        (AutoModel, CTViTConfig, CTViTModel),
    ):
        try:
            auto_cls.register(config_cls, model_cls)
        except ValueError:
            pass
    try:
        AutoProcessor.register(MedVLConfig, MedVLProcessor)
    except ValueError:
        pass
    MedVLConfig.register_for_auto_class()
    MedVLForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    MedVLProcessor.register_for_auto_class("AutoProcessor")


register_auto_classes()

__all__ = [
    "AttnPoolConnector",
    "CHATML_TEMPLATE",
    "CTViTConfig",
    "CTViTModel",
    "ConnectorConfig",
    "MLPConnector",
    "MedVLConfig",
    "MedVLForConditionalGeneration",
    "MedVLPreTrainedModel",
    "MedVLProcessor",
    "SpatialPoolConnector",
    "Vit3DConfig",
    "Vit3DModel",
    "build_connector",
    "register_auto_classes",
]
