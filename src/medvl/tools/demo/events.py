"""The events of the demo page: what each control does (``page.py`` lays the controls out).

Uploads and example cases attach a file to the next question; sliders, window presets and a typed
level/width re-render the CT viewer; Send streams the answer from :func:`medvl.inference.stream_chat`
(the inference path of ``medvl chat``, ``infer`` and ``serve``), Stop cancels it; "New conversation"
empties the session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from medvl.errors import MedVLDataError
from medvl.inference import stream_chat
from medvl.models.windows import HU_WINDOWS
from medvl.tools.demo.conversation import (
    MARKERS,
    Conversation,
    attach_upload,
    attached_text,
    generation_kwargs,
    rendered_planes,
    user_turn,
    window_setting,
)
from medvl.tools.demo.examples import ExampleCases
from medvl.tools.demo.page import NO_ATTACHMENT, Page
from medvl.tools.demo.viewer import PLANES, render_plane

if TYPE_CHECKING:
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

# Every event that runs the model (encoding an upload, generating) is in one Gradio concurrency
# group of size 1: the queue, not a lock held across a generator's yields, keeps sessions apart.
MODEL_EVENTS: dict[str, Any] = {"concurrency_id": "medvl-model", "concurrency_limit": 1}
# Viewer renders: one FIFO group of size 1 with "always_last": renders happen in the order of the
# user's changes, and the last change (e.g. the width typed after the level) is never dropped.
VIEWER_EVENTS: dict[str, Any] = {
    "concurrency_id": "medvl-viewer",
    "concurrency_limit": 1,
    "trigger_mode": "always_last",
    "show_progress": "hidden",
}


def wire_events(
    page: Page, model: MedVLForConditionalGeneration, processor: MedVLProcessor, examples: ExampleCases
) -> None:
    """Connect every control of the page to its callback; call it inside the page's ``gradio.Blocks``.

    Args:
        page: the laid-out page.
        model: the model answering (and encoding uploads).
        processor: its processor.
        examples: the example cases offered.
    """
    _wire_uploads(page, model, processor, examples)
    _wire_viewer(page)
    _wire_chat(page, model, processor)
    _wire_new_chat(page)


def _wire_uploads(
    page: Page, model: MedVLForConditionalGeneration, processor: MedVLProcessor, examples: ExampleCases
) -> None:
    """A file dropped in the upload box, or an example case loaded, is attached to the next question."""
    viewer_inputs = [page.window, page.level, page.width]

    def on_upload(conv, file, window_, level_, width_):
        if file is None:
            return (conv, attached_text(conv or Conversation()), *[gr.update()] * 8)
        path = file if isinstance(file, str) else file.name
        return attach_upload(model, processor, conv, path, Path(path).name, window_, level_, width_)

    page.upload.upload(on_upload, [page.state, page.upload, *viewer_inputs], page.media_outputs(), **MODEL_EVENTS).then(
        lambda: None, None, page.upload
    )  # empty the box for the next file

    def on_example(conv, name, window_, level_, width_):
        if not name:
            raise gr.Error("choose an example case first")
        case = examples.get(name)
        attached = attach_upload(model, processor, conv, str(case.path), case.path.name, window_, level_, width_)
        return (*attached, case.question)

    page.load_example.click(
        on_example, [page.state, page.example, *viewer_inputs], [*page.media_outputs(), page.question], **MODEL_EVENTS
    )


def _wire_viewer(page: Page) -> None:
    """Slice sliders re-render their plane; a window preset or a typed level/width re-renders all three."""

    def on_plane(k: int) -> Callable[..., Image.Image | None]:
        def render(conv, index, window_, level_, width_):
            if conv is None or conv.view is None:
                return None
            return render_plane(conv.view, PLANES[k], int(index), window_setting(window_, level_, width_)).image

        return render

    for k, slider in enumerate(page.sliders):
        slider.change(
            on_plane(k), [page.state, slider, page.window, page.level, page.width], page.planes[k], **VIEWER_EVENTS
        )

    def on_preset(conv, window_, level_, width_, *indices):
        if window_ != "custom":
            level_, width_ = HU_WINDOWS[window_]
        shown = rendered_planes(conv or Conversation(), list(indices), window_setting(window_, level_, width_))
        return (level_, width_, *shown)

    page.window.input(
        on_preset,
        [page.state, page.window, page.level, page.width, *page.sliders],
        [page.level, page.width, *page.planes],
        **VIEWER_EVENTS,
    )

    def on_custom(conv, level_, width_, *indices):
        # Called while the user types: a half-typed width (empty, 0, "-") selects "custom" and
        # waits for a valid value instead of raising.
        if level_ is None or width_ is None or not width_ > 0:
            return ("custom", *[gr.update()] * 3)
        return ("custom", *rendered_planes(conv or Conversation(), list(indices), (float(level_), float(width_))))

    for box in (page.level, page.width):
        box.input(
            on_custom, [page.state, page.level, page.width, *page.sliders], [page.window, *page.planes], **VIEWER_EVENTS
        )


def _wire_chat(page: Page, model: MedVLForConditionalGeneration, processor: MedVLProcessor) -> None:
    """Send (or Enter) adds the user turn with its attachments, then streams the answer; Stop cancels."""

    def add_turn(conv, text, history):
        conv = conv or Conversation()
        text = (text or "").strip()
        if not text:
            raise gr.Error("type a question first")
        uploads = [u for u, _ in conv.pending]
        conv.messages.append({"role": "user", "content": user_turn(text, uploads)})
        for u, encoded in conv.pending:
            (conv.images if u.kind == "image" else conv.volumes).append(encoded)
        conv.pending = []
        shown = "".join(f"[attached: {u.name}]\n\n" for u in uploads) + text
        history = [*(history or []), {"role": "user", "content": shown}]
        return conv, "", history, attached_text(conv)

    def respond(conv, history, max_tokens_, temperature_, top_p_) -> Iterator[tuple[list, Conversation]]:
        if conv is None or not conv.messages or conv.messages[-1]["role"] != "user":
            return
        history = [*history, {"role": "assistant", "content": ""}]
        answer = ""
        deltas = stream_chat(
            model,
            processor,
            conv.messages,
            images=conv.images,
            volumes=conv.volumes,
            **generation_kwargs(max_tokens_, temperature_, top_p_),
        )
        try:
            for delta in deltas:
                answer += delta
                history[-1] = {"role": "assistant", "content": answer.strip()}
                yield history, conv
        except (MedVLDataError, ValueError) as err:
            # Forget the failed turn and the media it attached, so the next turn's markers match.
            failed = conv.messages.pop()["content"]
            for kind, items in (("image", conv.images), ("volume", conv.volumes)):
                del items[len(items) - failed.count(MARKERS[kind]) :]
            raise gr.Error(str(err)) from err
        finally:
            deltas.close()  # a stopped event ends generation too
            if conv.messages and conv.messages[-1]["role"] == "user":
                conv.messages.append({"role": "assistant", "content": answer.strip()})
        history[-1] = {"role": "assistant", "content": answer.strip()}
        yield history, conv

    turn_inputs = [page.state, page.question, page.chatbot]
    turn_outputs = [page.state, page.question, page.chatbot, page.attached]
    reply_args = dict(
        fn=respond,
        inputs=[page.state, page.chatbot, page.max_tokens, page.temperature, page.top_p],
        outputs=[page.chatbot, page.state],
        **MODEL_EVENTS,
    )
    sent = page.send.click(add_turn, turn_inputs, turn_outputs).then(**reply_args)
    submitted = page.question.submit(add_turn, turn_inputs, turn_outputs).then(**reply_args)
    page.stop.click(None, None, None, cancels=[sent, submitted])


def _wire_new_chat(page: Page) -> None:
    """ "New conversation" empties the session, the chat, the viewer and the media tabs."""

    def on_new_chat():
        return (
            Conversation(),
            [],
            NO_ATTACHMENT,
            None,
            None,
            None,
            *[gr.update(value=0, maximum=1, interactive=False)] * 3,
            None,
            None,
            "",
        )

    page.new_chat.click(
        on_new_chat,
        None,
        [
            page.state,
            page.chatbot,
            page.attached,
            *page.planes,
            *page.sliders,
            page.image_view,
            page.model_input,
            page.model_input_info,
        ],
    )
