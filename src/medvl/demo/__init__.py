"""The web demo (``medvl demo``): a Gradio app with streamed multimodal chat and a CT viewer.

``build_demo(model, processor) -> gradio.Blocks`` is the entry point (``medvl serve --ui`` mounts the
same page). ``viewer`` renders CT planes; ``media`` decodes uploads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gradio

    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor


def build_demo(model: MedVLForConditionalGeneration, processor: MedVLProcessor, **kwargs: Any) -> gradio.Blocks:
    """Build the demo page for a loaded model (Gradio is imported only when this is called).

    Args:
        model: a ``MedVLForConditionalGeneration`` in eval mode.
        processor: its ``MedVLProcessor``.
        **kwargs: see :func:`medvl.demo.app.build_demo` (``max_new_tokens``, ``examples``, ``title``).
    """
    from medvl.demo.app import build_demo as _build

    return _build(model, processor, **kwargs)


__all__ = ["build_demo"]
