"""The Gradio page of ``medvl demo`` (and ``medvl serve --ui``): streamed multimodal chat and a CT viewer.

Layout: the conversation on the left (question box, file upload, example cases, generation
settings); on the right the CT viewer (axial, coronal and sagittal planes in radiological
orientation with a slice slider each and HU window presets), the uploaded 2D image, and "model
input": the tensor the saved processor makes of the last upload, i.e. what the model really sees.

Answers come from :func:`medvl.inference.stream_chat`, the inference path of ``medvl chat``,
``medvl infer`` and the server. Each upload is read, preprocessed and encoded once
(:func:`medvl.inference.encode_media`); every later turn reuses the encoder output.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from medvl.data.records import IMAGE_MARKER, VOLUME_MARKER
from medvl.errors import MedVLDataError
from medvl.imaging.volume3d import Volume
from medvl.imaging.windows import HU_WINDOWS
from medvl.inference import EncodedMedia, encode_media, stream_chat
from medvl.tools.demo.examples import ExampleCases
from medvl.tools.demo.media import UPLOAD_SUFFIXES, Upload, load_upload
from medvl.tools.demo.viewer import PLANES, WINDOW_CHOICES, OrientedVolume, montage, orient_for_view, render_plane

# Gradio phones home for analytics unless told otherwise; a hospital demo must not.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio as gr  # noqa: E402  (after the environment switch above)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

logger = logging.getLogger(__name__)

NOTICE = (
    "**Research use only. Not for clinical decisions.** This is a research prototype: its answers may be "
    "wrong or incomplete and must not be used for diagnosis or treatment. Do not upload identifiable "
    "patient data unless your institution allows it."
)
DEFAULT_WINDOW = "lung"
MARKERS = {"image": IMAGE_MARKER, "volume": VOLUME_MARKER}


@dataclass
class Conversation:
    """The per-browser-session state.

    Args:
        messages: the conversation as the model sees it (``<image>`` / ``<volume>`` markers in user turns).
        images: encoded images of the conversation, in marker order.
        volumes: encoded volumes, in marker order.
        pending: uploads attached to the next question (with their encoder outputs).
        view: the volume shown in the CT viewer (the last uploaded one).
    """

    messages: list[dict[str, str]] = field(default_factory=list)
    images: list[EncodedMedia] = field(default_factory=list)
    volumes: list[EncodedMedia] = field(default_factory=list)
    pending: list[tuple[Upload, EncodedMedia]] = field(default_factory=list)
    view: OrientedVolume | None = None


def demo_theme() -> gr.themes.Base:
    """The page theme: system fonts only, so the page loads no web fonts from the internet."""
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    mono = ["ui-monospace", "monospace"]
    return gr.themes.Default(primary_hue="sky", font=system, font_mono=mono)


CSS = """
#medvl-notice { border-left: 4px solid #d97706; padding-left: 0.6em; }
.medvl-plane img { image-rendering: auto; background: #000; }
"""


def launch_options() -> dict[str, Any]:
    """App-level settings Gradio 6 takes at ``launch`` / ``mount_gradio_app`` time (theme, css)."""
    return {"theme": demo_theme(), "css": CSS}


# ------------------------------------------------------------------------------------------------
# Pure helpers (tested without a browser)
# ------------------------------------------------------------------------------------------------


def window_setting(window: str, level: float | None, width: float | None) -> str | tuple[float, float]:
    """The window to render: a preset name, or (level, width) when "custom" is selected.

    Args:
        window: a preset name or "custom".
        level: custom level (center) in HU.
        width: custom width in HU.
    """
    if window != "custom":
        return window
    if level is None or width is None or not width > 0:
        raise gr.Error(f"custom window: width must be > 0 HU (got level {level}, width {width})")
    return float(level), float(width)


def processed_view(processor: MedVLProcessor, upload: Upload) -> tuple[Image.Image, str]:
    """What the model receives for an upload: the processor's tensor as a picture, and a caption.

    Args:
        processor: the model's ``MedVLProcessor``.
        upload: a loaded image or volume.
    """
    if upload.kind == "image":
        values = processor.image_processor([upload.data], return_tensors="pt")["pixel_values"][0]
        low, high = float(values.min()), float(values.max())
        rgb = ((values - low) / max(high - low, 1e-12) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        picture = Image.fromarray(rgb).resize((256, 256 * rgb.shape[0] // rgb.shape[1]), Image.Resampling.NEAREST)
        caption = (
            f"`pixel_values` {tuple(values.shape)} of **{upload.name}**: the image the 2D tower receives "
            f"after the saved processor (values {low:.2f}..{high:.2f}, shown min-max scaled)."
        )
        return picture, caption
    values = processor.volume_processor([upload.data])["volume_values"][0]  # (C, D, H, W)
    c, d, h, w = values.shape
    sheet = montage(values[0].numpy(), size=96)
    note = "" if c == 1 else f" Channel 1 of {c} shown."
    caption = (
        f"`volume_values` {(c, d, h, w)} of **{upload.name}**: the {d} axial slices (inferior to superior, "
        f"patient's left on the right) the volume encoder receives after the saved processor "
        f"(values {float(values.min()):.2f}..{float(values.max()):.2f}, shown min-max scaled).{note}"
    )
    return sheet, caption


def user_turn(question: str, uploads: list[Upload]) -> str:
    """The model-side user message: one marker per attached upload (in upload order), then the question.

    Args:
        question: the typed question.
        uploads: files attached to this turn.
    """
    return "".join(MARKERS[u.kind] + "\n" for u in uploads) + question


def generation_kwargs(max_tokens: float, temperature: float, top_p: float) -> dict[str, Any]:
    """``stream_chat`` settings from the page's sliders: temperature 0 is greedy decoding.

    Args:
        max_tokens: max new tokens.
        temperature: sampling temperature (0 = greedy).
        top_p: nucleus sampling mass (sampling only).
    """
    kwargs: dict[str, Any] = {"max_new_tokens": int(max_tokens), "do_sample": float(temperature) > 0}
    if kwargs["do_sample"]:
        kwargs.update(temperature=float(temperature), top_p=float(top_p))
    return kwargs


# ------------------------------------------------------------------------------------------------
# The page
# ------------------------------------------------------------------------------------------------


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
    has_images = getattr(processor, "num_image_tokens", 0) > 0
    has_volumes = getattr(processor, "num_volume_tokens", 0) > 0 and processor.volume_processor is not None
    # Every event that runs the model (encoding an upload, generating) is in one Gradio concurrency
    # group of size 1: the queue, not a lock held across a generator's yields, keeps sessions apart.
    model_events: dict[str, Any] = {"concurrency_id": "medvl-model", "concurrency_limit": 1}

    def planes(conv: Conversation, indices: list[int], window: str | tuple[float, float]) -> list[Image.Image | None]:
        if conv.view is None:
            return [None, None, None]
        return [render_plane(conv.view, plane, int(i), window).image for plane, i in zip(PLANES, indices)]

    def attach(conv: Conversation | None, path: str | None, name: str | None, window: str, level, width):
        conv = conv or Conversation()
        if not path:
            raise gr.Error("no file received")
        try:
            upload = load_upload(path, name)
        except (MedVLDataError, ValueError, OSError) as err:
            raise gr.Error(str(err)) from err
        if upload.kind == "image" and not has_images:
            raise gr.Error("this model has no 2D image encoder; upload a CT volume")
        if upload.kind == "volume" and not has_volumes:
            raise gr.Error("this model has no volume encoder; upload a 2D image")
        try:
            images, volumes = encode_media(model, processor, **{f"{upload.kind}s": [upload.data]})
            picture, caption = processed_view(processor, upload)
        except (MedVLDataError, ValueError) as err:
            raise gr.Error(f"{upload.name}: {err}") from err
        conv.pending.append((upload, (images or volumes)[0]))
        logger.info("attached a %s upload", upload.kind)  # never the name or content (patient data)
        # gr.update(): leave the component as it is
        slider_updates: list[Any] = [gr.update(), gr.update(), gr.update()]
        plane_images: list[Any] = [gr.update(), gr.update(), gr.update()]
        image_view: Any = gr.update()
        if isinstance(upload.data, Volume):
            conv.view = orient_for_view(upload.data)
            middle = [conv.view.num_slices(p) // 2 for p in PLANES]
            slider_updates = [
                gr.update(minimum=0, maximum=conv.view.num_slices(p) - 1, value=m, interactive=True)
                for p, m in zip(PLANES, middle)
            ]
            plane_images = planes(conv, middle, window_setting(window, level, width))
        else:
            image_view = upload.data
        return (conv, attached_text(conv), *plane_images, *slider_updates, image_view, picture, caption)

    def attached_text(conv: Conversation) -> str:
        if not conv.pending:
            return "No file attached to the next question."
        names = ", ".join(f"`{u.name}` ({u.kind})" for u, _ in conv.pending)
        return f"Attached to your next question: {names}"

    # Uploads may be patient images: Gradio's copies of them are deleted after an hour (checked every
    # 10 minutes) and when the server stops, rather than kept in its cache folder indefinitely.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        state = gr.State(None)
        gr.Markdown(
            f"# {title}\nModel input: "
            + ", ".join(k for k, ok in (("2D images", has_images), ("CT volumes", has_volumes)) if ok)
        )
        gr.Markdown(NOTICE, elem_id="medvl-notice")
        with gr.Row():
            with gr.Column(scale=5):
                chatbot = gr.Chatbot(
                    label="Conversation",
                    height=460,
                    buttons=["copy"],
                    elem_id="medvl-chat",
                    placeholder="Attach an image or a CT, then ask a question.",
                )
                with gr.Row(equal_height=True):
                    question = gr.Textbox(
                        placeholder="Ask about the image or CT...",
                        show_label=False,
                        scale=6,
                        min_width=260,
                        elem_id="medvl-question",
                    )
                    send = gr.Button("Send", variant="primary", scale=1, min_width=70, elem_id="medvl-send")
                    stop = gr.Button("Stop", scale=1, min_width=70, elem_id="medvl-stop")
                upload = gr.File(
                    label="Attach a 2D image (PNG, JPEG, DICOM) or a CT (NIfTI, zipped DICOM series)",
                    file_types=list(UPLOAD_SUFFIXES),
                    elem_id="medvl-upload",
                    height=110,
                )
                attached = gr.Markdown("No file attached to the next question.", elem_id="medvl-attached")
                with gr.Row():
                    example = gr.Dropdown(
                        examples.names(has_images, has_volumes),
                        scale=4,
                        elem_id="medvl-example",
                        label="Example cases (synthetic phantoms)",
                    )
                    load_example = gr.Button("Load example", scale=1, elem_id="medvl-load-example")
                with gr.Accordion("Generation settings", open=False):
                    max_tokens = gr.Slider(
                        1, 2048, value=max_new_tokens, step=1, label="Max new tokens", elem_id="medvl-max-tokens"
                    )
                    temperature = gr.Slider(
                        0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)", elem_id="medvl-temperature"
                    )
                    top_p = gr.Slider(
                        0.05, 1.0, value=1.0, step=0.05, label="Top-p (sampling only)", elem_id="medvl-top-p"
                    )
                new_chat = gr.Button("New conversation", elem_id="medvl-new")
            with gr.Column(scale=6):
                gr.Markdown("### CT viewer\nRadiological orientation: the patient's left is on the image's right.")
                with gr.Row():
                    window = gr.Radio(
                        list(WINDOW_CHOICES), value=DEFAULT_WINDOW, label="Window", scale=3, elem_id="medvl-window"
                    )
                    level = gr.Number(HU_WINDOWS[DEFAULT_WINDOW][0], label="Level (HU)", scale=1, elem_id="medvl-level")
                    width = gr.Number(HU_WINDOWS[DEFAULT_WINDOW][1], label="Width (HU)", scale=1, elem_id="medvl-width")
                plane_images, sliders = [], []
                with gr.Row():
                    for plane in PLANES:
                        with gr.Column(min_width=180):
                            plane_images.append(
                                gr.Image(
                                    label=plane.capitalize(),
                                    type="pil",
                                    interactive=False,
                                    format="png",
                                    height=260,
                                    elem_id=f"medvl-{plane}",
                                    elem_classes=["medvl-plane"],
                                    buttons=[],
                                )
                            )
                            sliders.append(
                                gr.Slider(
                                    0,
                                    1,
                                    value=0,
                                    step=1,
                                    label=f"{plane.capitalize()} slice",
                                    interactive=False,
                                    elem_id=f"medvl-{plane}-slice",
                                )
                            )
                with gr.Tab("Model input"):
                    model_input = gr.Image(
                        label="What the model receives",
                        type="pil",
                        interactive=False,
                        format="png",
                        height=300,
                        elem_id="medvl-model-input",
                        buttons=[],
                    )
                    model_input_info = gr.Markdown(elem_id="medvl-model-input-info")
                with gr.Tab("2D image"):
                    image_view = gr.Image(
                        label="Uploaded 2D image",
                        type="pil",
                        interactive=False,
                        height=300,
                        format="png",
                        elem_id="medvl-image",
                        buttons=[],
                    )

        media_outputs = [state, attached, *plane_images, *sliders, image_view, model_input, model_input_info]

        def on_upload(conv, file, window_, level_, width_):
            if file is None:
                return (conv, attached_text(conv or Conversation()), *[gr.update()] * 8)
            path = file if isinstance(file, str) else file.name
            return attach(conv, path, Path(path).name, window_, level_, width_)

        upload.upload(on_upload, [state, upload, window, level, width], media_outputs, **model_events).then(
            lambda: None, None, upload
        )  # empty the box for the next file

        def on_example(conv, name, window_, level_, width_):
            if not name:
                raise gr.Error("choose an example case first")
            case = examples.get(name)
            return (*attach(conv, str(case.path), case.path.name, window_, level_, width_), case.question)

        load_example.click(
            on_example, [state, example, window, level, width], [*media_outputs, question], **model_events
        )

        # ---- viewer
        # One FIFO group of size 1 with "always_last": renders happen in the order of the user's
        # changes, and the last change (e.g. the width typed after the level) is never dropped.
        viewer_events: dict[str, Any] = {
            "concurrency_id": "medvl-viewer",
            "concurrency_limit": 1,
            "trigger_mode": "always_last",
            "show_progress": "hidden",
        }

        def on_plane(k: int):
            def render(conv, index, window_, level_, width_):
                if conv is None or conv.view is None:
                    return None
                return render_plane(conv.view, PLANES[k], int(index), window_setting(window_, level_, width_)).image

            return render

        for k, slider in enumerate(sliders):
            slider.change(on_plane(k), [state, slider, window, level, width], plane_images[k], **viewer_events)

        def on_preset(conv, window_, level_, width_, *indices):
            if window_ != "custom":
                level_, width_ = HU_WINDOWS[window_]
            shown = planes(conv or Conversation(), list(indices), window_setting(window_, level_, width_))
            return (level_, width_, *shown)

        window.input(on_preset, [state, window, level, width, *sliders], [level, width, *plane_images], **viewer_events)

        def on_custom(conv, level_, width_, *indices):
            # Called while the user types: a half-typed width (empty, 0, "-") selects "custom" and
            # waits for a valid value instead of raising.
            if level_ is None or width_ is None or not width_ > 0:
                return ("custom", *[gr.update()] * 3)
            return ("custom", *planes(conv or Conversation(), list(indices), (float(level_), float(width_))))

        for box in (level, width):
            box.input(on_custom, [state, level, width, *sliders], [window, *plane_images], **viewer_events)

        # ---- chat
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

        def respond(conv, history, max_tokens_, temperature_, top_p_):
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

        turn_inputs = [state, question, chatbot]
        turn_outputs = [state, question, chatbot, attached]
        reply_args = dict(
            fn=respond,
            inputs=[state, chatbot, max_tokens, temperature, top_p],
            outputs=[chatbot, state],
            **model_events,
        )
        sent = send.click(add_turn, turn_inputs, turn_outputs).then(**reply_args)
        submitted = question.submit(add_turn, turn_inputs, turn_outputs).then(**reply_args)
        stop.click(None, None, None, cancels=[sent, submitted])

        def on_new_chat():
            return (
                Conversation(),
                [],
                "No file attached to the next question.",
                None,
                None,
                None,
                *[gr.update(value=0, maximum=1, interactive=False)] * 3,
                None,
                None,
                "",
            )

        new_chat.click(
            on_new_chat,
            None,
            [state, chatbot, attached, *plane_images, *sliders, image_view, model_input, model_input_info],
        )
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


__all__ = [
    "build_demo",
    "mount_demo",
    "launch_options",
    "demo_theme",
    "Conversation",
    "NOTICE",
    "processed_view",
    "user_turn",
    "generation_kwargs",
    "window_setting",
]
