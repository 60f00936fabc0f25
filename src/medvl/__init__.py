"""medvl: medical vision-language models (2D images and 3D volumes), Hugging Face-native.

``import medvl`` registers the model, config and processor with the transformers Auto classes
(``AutoConfig``, ``AutoModelForImageTextToText``, ``AutoProcessor``). The public API is loaded on
first attribute access, so that the ``medvl`` command line does not pay for importing torch and
transformers on light verbs (there, a verb registers the classes when it imports them).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "MedVLConfig": "medvl.models",
    "ConnectorConfig": "medvl.models",
    "MedVLForConditionalGeneration": "medvl.models",
    "MedVLProcessor": "medvl.models",
    "Vit3DConfig": "medvl.models",
    "Vit3DModel": "medvl.models",
    "register_auto_classes": "medvl.models",
    "train_tokenizer": "medvl.tokenization",
    "qwen2_tokenizer": "medvl.tokenization",
    "ModelSpec": "medvl.build",
    "build_model": "medvl.build",
    "load_model_spec": "medvl.build",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medvl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


# Library use: register with the Auto classes right away. The console script skips it (fast
# `medvl --help`); its verbs import medvl.models, which registers, before loading a model.
if os.path.basename(sys.argv[0] if sys.argv else "") != "medvl" and os.environ.get("MEDVL_LAZY_IMPORT") != "1":
    importlib.import_module("medvl.models")

__all__ = sorted(_API)
