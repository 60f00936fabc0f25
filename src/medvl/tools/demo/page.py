"""The layout of the demo page: its components, without callbacks (``app.py`` wires those).

The conversation on the left (question box, file upload, example cases, generation settings); on
the right the CT viewer (axial, coronal and sagittal planes with a slice slider each, HU window
presets or a custom level/width), the uploaded 2D image, and "model input": the tensor the saved
processor makes of the last upload. Element ids (``medvl-...``) are what the browser test drives.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from medvl.models.windows import HU_WINDOWS
from medvl.tools.demo.media import UPLOAD_SUFFIXES
from medvl.tools.demo.viewer import PLANES, WINDOW_CHOICES

NOTICE = (
    "**Research use only. Not for clinical decisions.** This is a research prototype: its answers may be "
    "wrong or incomplete and must not be used for diagnosis or treatment. Do not upload identifiable "
    "patient data unless your institution allows it."
)
DEFAULT_WINDOW = "lung"
NO_ATTACHMENT = "No file attached to the next question."


def demo_theme() -> gr.themes.Base:
    """The page theme: system fonts only, so the page loads no web fonts from the internet."""
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    mono = ["ui-monospace", "monospace"]
    return gr.themes.Default(primary_hue="sky", font=system, font_mono=mono)


CSS = """
#medvl-notice { border-left: 4px solid #d97706; padding-left: 0.6em; }
.medvl-plane img { image-rendering: auto; background: #000; }
"""


@dataclass
class Page:
    """The components the callbacks read or update (state first: the per-session ``Conversation``)."""

    state: gr.State
    chatbot: gr.Chatbot
    question: gr.Textbox
    send: gr.Button
    stop: gr.Button
    upload: gr.File
    attached: gr.Markdown
    example: gr.Dropdown
    load_example: gr.Button
    max_tokens: gr.Slider
    temperature: gr.Slider
    top_p: gr.Slider
    new_chat: gr.Button
    window: gr.Radio
    level: gr.Number
    width: gr.Number
    planes: list[gr.Image]
    sliders: list[gr.Slider]
    model_input: gr.Image
    model_input_info: gr.Markdown
    image_view: gr.Image

    def media_outputs(self) -> list[gr.components.Component]:
        """What attaching a file updates: the session, the attachment line, the viewer, the media tabs."""
        return [
            self.state,
            self.attached,
            *self.planes,
            *self.sliders,
            self.image_view,
            self.model_input,
            self.model_input_info,
        ]


def build_page(
    title: str, *, has_images: bool, has_volumes: bool, example_names: list[str], max_new_tokens: int
) -> Page:
    """Lay out the page's components; call it inside a ``gradio.Blocks`` context.

    Args:
        title: the page heading.
        has_images: the model has a 2D image encoder.
        has_volumes: the model has a volume encoder.
        example_names: the example cases offered.
        max_new_tokens: initial value of the "max new tokens" slider.
    """
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
            attached = gr.Markdown(NO_ATTACHMENT, elem_id="medvl-attached")
            with gr.Row():
                example = gr.Dropdown(
                    example_names,
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
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (sampling only)", elem_id="medvl-top-p")
            new_chat = gr.Button("New conversation", elem_id="medvl-new")
        with gr.Column(scale=6):
            gr.Markdown("### CT viewer\nRadiological orientation: the patient's left is on the image's right.")
            with gr.Row():
                window = gr.Radio(
                    list(WINDOW_CHOICES), value=DEFAULT_WINDOW, label="Window", scale=3, elem_id="medvl-window"
                )
                level = gr.Number(HU_WINDOWS[DEFAULT_WINDOW][0], label="Level (HU)", scale=1, elem_id="medvl-level")
                width = gr.Number(HU_WINDOWS[DEFAULT_WINDOW][1], label="Width (HU)", scale=1, elem_id="medvl-width")
            plane_images: list[gr.Image] = []
            sliders: list[gr.Slider] = []
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
    return Page(
        state=state,
        chatbot=chatbot,
        question=question,
        send=send,
        stop=stop,
        upload=upload,
        attached=attached,
        example=example,
        load_example=load_example,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        new_chat=new_chat,
        window=window,
        level=level,
        width=width,
        planes=plane_images,
        sliders=sliders,
        model_input=model_input,
        model_input_info=model_input_info,
        image_view=image_view,
    )
