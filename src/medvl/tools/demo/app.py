"""The Gradio page of ``medvl demo`` (and ``medvl serve --ui``): streamed multimodal chat and a CT viewer.

``build_demo(model, processor)`` is the entry point; ``mount_demo`` puts the same page on a FastAPI
app. The page is laid out in ``page.py``, its events are in ``events.py``, and a browser session's
state and the steps on it in ``conversation.py``.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import gradio as gr

from medvl.tools.demo.conversation import model_media
from medvl.tools.demo.events import wire_events
from medvl.tools.demo.examples import ExampleCases
from medvl.tools.demo.page import CSS, build_page, demo_theme

if TYPE_CHECKING:
    from fastapi import FastAPI

    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor


def launch_options() -> dict[str, Any]:
    """App-level settings Gradio 6 takes at ``launch`` / ``mount_gradio_app`` time (theme, css)."""
    return {"theme": demo_theme(), "css": CSS}


def build_demo(
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    *,
    max_new_tokens: int = 256,
    examples: ExampleCases | None = None,
    title: str = "medvl demo",
) -> gr.Blocks:
    """Build the demo page for a loaded model.

    Args:
        model: a ``MedVLForConditionalGeneration`` in eval mode.
        processor: its ``MedVLProcessor``.
        max_new_tokens: initial value of the "max new tokens" slider.
        examples: example cases (default: synthetic chest phantoms rendered on first use into a
            temporary folder).
        title: browser tab title and page heading.

    Returns:
        the ``gradio.Blocks`` app; launch it with ``**launch_options()`` (theme, css).
    """
    examples = examples or ExampleCases()
    has_images, has_volumes = model_media(processor)
    # Uploads may be patient images: Gradio's copies of them are deleted after an hour (checked every
    # 10 minutes) and when the server stops, rather than kept in its cache folder indefinitely.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        page = build_page(
            title,
            has_images=has_images,
            has_volumes=has_volumes,
            example_names=examples.names(has_images, has_volumes),
            max_new_tokens=max_new_tokens,
        )
        wire_events(page, model, processor, examples)
    return demo


def mount_demo(
    app: FastAPI,
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    path: str,
    *,
    password: str | None = None,
    max_file_size_mb: float | None = None,
) -> None:
    """Mount the demo page on a FastAPI app (``medvl serve --ui``: the API server's app).

    A browser cannot send the API's bearer header, so with a ``password`` the page is guarded by
    Gradio's login form instead (any user name, that password).

    Args:
        app: the app to mount on.
        model: the loaded model.
        processor: its processor.
        path: URL path of the page (e.g. ``/ui``).
        password: the login password (the server's API key); None: no login.
        max_file_size_mb: largest upload Gradio accepts (the server's request size limit).
    """
    options: dict[str, Any] = dict(launch_options())  # the theme and css: app-level in Gradio 6
    if password:
        expected = password.encode()
        options["auth"] = lambda _user, given: secrets.compare_digest(str(given).encode(), expected)
    if max_file_size_mb is not None:
        options["max_file_size"] = f"{max_file_size_mb:g}mb"
    gr.mount_gradio_app(app, build_demo(model, processor), path=path, ssr_mode=False, **options)


__all__ = ["build_demo", "launch_options", "mount_demo"]
