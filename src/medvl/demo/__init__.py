"""The web demo (``medvl demo``): a Gradio app with streamed multimodal chat and a CT viewer.

``build_demo(model, processor) -> gradio.Blocks`` is the entry point (``medvl serve --ui`` mounts the
same page). ``viewer`` renders CT planes; ``media`` decodes uploads.
"""

from __future__ import annotations

from typing import Any


def build_demo(model: Any, processor: Any, **kwargs: Any):
    """Build the demo page for a loaded model (see :func:`medvl.demo.app.build_demo`)."""
    from medvl.demo.app import build_demo as _build

    return _build(model, processor, **kwargs)


__all__ = ["build_demo"]
