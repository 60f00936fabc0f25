"""A browser session of the demo: its :class:`Conversation` and the steps the page's events take on it.

Everything here runs without a browser (the tests call it directly): attaching an upload (read,
check against the model's encoders, encode once), the model-side user turn, the generation settings
of the sliders, the viewer's window and planes, and the "model input" picture of an upload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from medvl.data.records import IMAGE_MARKER, VOLUME_MARKER
from medvl.errors import MedVLDataError
from medvl.imaging.volume3d import Volume
from medvl.inference import EncodedMedia, encode_media
from medvl.tools.demo.media import Upload, load_upload
from medvl.tools.demo.page import NO_ATTACHMENT
from medvl.tools.demo.viewer import PLANES, OrientedVolume, montage, orient_for_view, render_plane

if TYPE_CHECKING:
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

logger = logging.getLogger(__name__)

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
    if isinstance(upload.data, Image.Image):
        if processor.image_processor is None:
            raise ValueError("this model's processor has no 2D image processor")
        values = processor.image_processor([upload.data], return_tensors="pt")["pixel_values"][0]
        low, high = float(values.min()), float(values.max())
        rgb = ((values - low) / max(high - low, 1e-12) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        picture = Image.fromarray(rgb).resize((256, 256 * rgb.shape[0] // rgb.shape[1]), Image.Resampling.NEAREST)
        caption = (
            f"`pixel_values` {tuple(values.shape)} of **{upload.name}**: the image the 2D tower receives "
            f"after the saved processor (values {low:.2f}..{high:.2f}, shown min-max scaled)."
        )
        return picture, caption
    if processor.volume_processor is None:
        raise ValueError("this model's processor has no volume processor")
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


def attached_text(conv: Conversation) -> str:
    """The line under the upload box: the files attached to the next question.

    Args:
        conv: the session's conversation.
    """
    if not conv.pending:
        return NO_ATTACHMENT
    names = ", ".join(f"`{u.name}` ({u.kind})" for u, _ in conv.pending)
    return f"Attached to your next question: {names}"


def rendered_planes(
    conv: Conversation, indices: list[int], window: str | tuple[float, float]
) -> list[Image.Image | None]:
    """The three viewer planes of the conversation's volume at ``indices`` (None without a volume).

    Args:
        conv: the session's conversation.
        indices: slice index of each plane (axial, coronal, sagittal).
        window: a preset name or (level, width) in HU.
    """
    if conv.view is None:
        return [None, None, None]
    return [render_plane(conv.view, plane, int(i), window).image for plane, i in zip(PLANES, indices)]


def model_media(processor: MedVLProcessor) -> tuple[bool, bool]:
    """Whether the model takes 2D images, and volumes.

    Args:
        processor: the model's processor.
    """
    has_images = getattr(processor, "num_image_tokens", 0) > 0
    has_volumes = getattr(processor, "num_volume_tokens", 0) > 0 and processor.volume_processor is not None
    return has_images, has_volumes


def attach_upload(
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    conv: Conversation | None,
    path: str | None,
    name: str | None,
    window: str,
    level: float | None,
    width: float | None,
) -> tuple[Any, ...]:
    """Read, check and encode a file for the next question; the updates of :meth:`Page.media_outputs`.

    Args:
        model: the model (encodes the upload once).
        processor: its processor.
        conv: the session's conversation (None: a new one).
        path: the uploaded file.
        name: the name shown for it.
        window: the viewer's window choice; ``level`` / ``width`` its custom values.
        level: custom window level (HU).
        width: custom window width (HU).
    """
    conv = conv or Conversation()
    if not path:
        raise gr.Error("no file received")
    try:
        upload = load_upload(path, name)
    except (MedVLDataError, ValueError, OSError) as err:
        raise gr.Error(str(err)) from err
    has_images, has_volumes = model_media(processor)
    if upload.kind == "image" and not has_images:
        raise gr.Error("this model has no 2D image encoder; upload a CT volume")
    if upload.kind == "volume" and not has_volumes:
        raise gr.Error("this model has no volume encoder; upload a 2D image")
    try:
        data = upload.data
        if isinstance(data, Image.Image):
            images, volumes = encode_media(model, processor, images=[data])
        else:
            images, volumes = encode_media(model, processor, volumes=[data])
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
        plane_images = rendered_planes(conv, middle, window_setting(window, level, width))
    else:
        image_view = upload.data
    return (conv, attached_text(conv), *plane_images, *slider_updates, image_view, picture, caption)
