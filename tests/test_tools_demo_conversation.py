"""A demo session without a browser (``medvl.tools.demo.conversation``): the model-side user turn, the
sliders' generation settings, the viewer's window, the "model input" picture and attaching an upload
with the tiny model (encoded once, shown in the viewer, listed for the next question)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


def test_user_turn_puts_one_marker_per_upload_in_upload_order() -> None:
    from medvl.tools.demo.conversation import user_turn
    from medvl.tools.demo.media import Upload

    uploads = [Upload("image", "a.png", None), Upload("volume", "b.nii.gz", None), Upload("image", "c.png", None)]
    assert user_turn("Where?", uploads) == "<image>\n<volume>\n<image>\nWhere?"
    assert user_turn("And now?", []) == "And now?"


def test_generation_settings_greedy_at_temperature_zero() -> None:
    from medvl.tools.demo.conversation import generation_kwargs

    assert generation_kwargs(32.0, 0.0, 0.9) == {"max_new_tokens": 32, "do_sample": False}
    assert generation_kwargs(8, 0.7, 0.9) == {"max_new_tokens": 8, "do_sample": True, "temperature": 0.7, "top_p": 0.9}


def test_window_setting_presets_and_custom() -> None:
    import gradio as gr

    from medvl.tools.demo.conversation import window_setting

    assert window_setting("bone", 1.0, 2.0) == "bone"
    assert window_setting("custom", 40, 400) == (40.0, 400.0)
    with pytest.raises(gr.Error, match="width must be > 0"):
        window_setting("custom", 40, 0)


def test_processed_view_shows_the_processor_tensors(tiny_processor) -> None:
    """The "model input" picture is the saved processor's output: 16 axial slices of 64x64 for the tiny model."""
    from medvl.imaging.volume3d import Volume
    from medvl.tools.demo.conversation import processed_view
    from medvl.tools.demo.media import Upload

    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(-500, 300, (40, 40, 20)).astype(np.float32), np.diag([-1.0, -1.0, 2.0, 1.0]), "ct")
    sheet, caption = processed_view(tiny_processor, Upload("volume", "ct.nii.gz", volume))
    assert "`volume_values` (1, 16, 64, 64)" in caption
    assert sheet.size == (4 * 96 + 3 * 2, 4 * 96 + 3 * 2)  # 4 x 4 tiles of 96 px, 2 px gaps
    # tile 0 is the processor's slice 0, min-max scaled over the whole tensor
    values = tiny_processor.volume_processor([volume])["volume_values"][0, 0].numpy()
    grey = np.round((values - values.min()) / (values.max() - values.min()) * 255).astype(np.uint8)
    tile = np.asarray(sheet)[:96, :96]
    assert np.array_equal(tile[::6, ::6], grey[0][::4, ::4])  # nearest upscaling 64 -> 96: pixel 6k shows 4k
    image = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    picture, caption = processed_view(tiny_processor, Upload("image", "x.png", image))
    assert "`pixel_values` (3, 64, 64)" in caption and picture.size == (256, 256)


def test_attach_upload_encodes_once_and_shows_the_volume(tiny_model, tiny_processor, tmp_path) -> None:
    import nibabel as nib

    from medvl.tools.demo.conversation import Conversation, attach_upload, attached_text

    array = np.random.default_rng(1).normal(-500, 300, (40, 36, 12)).astype(np.float32)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    conv = Conversation()
    assert attached_text(conv) == "No file attached to the next question."
    out = attach_upload(tiny_model, tiny_processor, conv, str(path), "ct.nii.gz", "lung", None, None)
    # state, attachment line, 3 planes, 3 sliders, 2D image tab, model input picture and caption
    assert len(out) == 11 and out[0] is conv
    assert out[1] == attached_text(conv) == "Attached to your next question: `ct.nii.gz` (volume)"
    upload, encoded = conv.pending[0]
    assert upload.kind == "volume" and encoded.kind == "volume"
    # the encoder output of the processed volume, kept for every later turn
    from medvl.imaging.volume3d import load_volume

    with torch.no_grad():
        values = tiny_processor.volume_processor([load_volume(path)])["volume_values"]
        expected = tiny_model.encode_volumes(values.to(tiny_model.dtype))[0]
    torch.testing.assert_close(encoded.features.float(), expected.float())
    assert conv.view is not None and all(isinstance(p, Image.Image) for p in out[2:5])
    # the sliders start at the middle slice of each plane
    assert [u["value"] for u in out[5:8]] == [conv.view.num_slices(p) // 2 for p in ("axial", "coronal", "sagittal")]
    assert "`volume_values`" in out[10]
