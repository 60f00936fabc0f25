"""``export_llava``: a stock transformers LLaVA checkpoint that loads without medvl and gives the same outputs.

The source is MedM-VL's 2D fixture converted to medvl (SigLIP + mlp2x_gelu + Qwen2, tied head), so the
expected logits and greedy ids are MedM-VL's own. The stock model is loaded in a subprocess in which
importing medvl is impossible.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import fixture_path

FIXTURE = fixture_path("medmvl")

QUESTION = "Is there a lesion in the right lung?"

# Runs in a fresh interpreter where `import medvl` fails: only transformers' own classes can load it.
STOCK_SCRIPT = r"""
import json, sys
sys.modules["medvl"] = None
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
model = LlavaForConditionalGeneration.from_pretrained(sys.argv[1]).eval()
processor = AutoProcessor.from_pretrained(sys.argv[1])
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sys.argv[3]}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
batch = processor(text=[text], images=[Image.open(sys.argv[2]).convert("RGB")], return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits[0, -1]
    seq = model.generate(**batch, max_new_tokens=8, do_sample=False)
n = batch["input_ids"].shape[1]
loaded = sorted(k for k, v in sys.modules.items() if k.split(".")[0] == "medvl" and v is not None)
print(json.dumps({"text": text, "n": n, "logits": logits.tolist(), "ids": seq[0, n:].tolist(),
                  "processor": type(processor).__name__, "medvl_modules": loaded}))
"""


@pytest.fixture(scope="module")
def medvl_2d(tmp_path_factory) -> Path:
    from medvl.convert.medmvl import convert_medmvl

    return convert_medmvl(FIXTURE / "medmvl-2d-siglip-mlp" / "checkpoint", tmp_path_factory.mktemp("medvl2d"))


def test_export_llava_same_logits_and_greedy(medvl_2d: Path, tmp_path: Path) -> None:
    from medvl.cli import main
    from medvl.data.records import Record
    from medvl.inference import load_model, prepare_batch

    out = tmp_path / "llava"
    assert main(["export", str(medvl_2d), "--as-llava", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    image = FIXTURE / "medmvl-2d-siglip-mlp" / "inputs" / "image.png"
    proc = subprocess.run(
        [sys.executable, "-c", STOCK_SCRIPT, str(out), str(image), QUESTION],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stock = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stock["medvl_modules"] == [] and stock["processor"] == "LlavaProcessor"

    model, processor = load_model(medvl_2d, device="cpu")
    rec = Record(id="r", messages=[{"role": "user", "content": "<image>\n" + QUESTION}], images=[str(image)])
    batch = prepare_batch(model, processor, [rec])
    assert stock["text"] == processor.apply_chat_template(rec.messages, add_generation_prompt=True)
    assert stock["n"] == batch["input_ids"].shape[1] == 74
    with torch.no_grad():
        ours = model(**batch).logits[0, -1]
        ours_ids = model.generate(**batch, max_new_tokens=8, do_sample=False)[0, 74:].tolist()
    assert float((torch.tensor(stock["logits"]) - ours).abs().max()) <= 1e-4
    expected = np.load(FIXTURE / "medmvl-2d-siglip-mlp" / "expected" / "logits_last.npy")
    assert float(np.abs(np.array(stock["logits"]) - expected).max()) <= 1e-4
    assert stock["ids"] == ours_ids == [1814, 988, 985, 330, 275, 512, 84, 83]


def test_export_refuses_volume_models(tmp_path: Path) -> None:
    """A CT (slice-wise attention-pooling) model has no stock class: the error says why and what to use."""
    from medvl.convert.medmvl import convert_medmvl
    from medvl.export import ExportError, export_llava

    ct = convert_medmvl(FIXTURE / "medmvl-ct-siglip-attnpool" / "checkpoint", tmp_path / "ct")
    with pytest.raises(ExportError, match="volume encoder.*trust_remote_code=True"):
        export_llava(ct, tmp_path / "llava")
    assert not (tmp_path / "llava").exists()


def test_content_parts_template_renders_like_markers() -> None:
    """OpenAI-style content parts render exactly as the '<image>\\n' marker text medvl trains on."""
    from jinja2 import Template

    from medvl.data.templates import VICUNA
    from medvl.export import content_parts_template

    parts = [{"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image"}]}]
    marker = [{"role": "user", "content": "<image>\nWhat?"}]
    tpl = Template(content_parts_template(VICUNA))
    kw = dict(bos_token="", eos_token="<|im_end|>", add_generation_prompt=True)
    assert tpl.render(messages=parts, **kw) == Template(VICUNA).render(messages=marker, **kw)


def test_export_llava_clip_drops_cls(tmp_path: Path) -> None:
    """CLIP + layer -2 + patch (MedM-VL's CLIP layout) maps to LLaVA's 'default' strategy: same logits."""
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from medvl.convert.medmvl import convert_medmvl
    from medvl.data.records import Record
    from medvl.export import export_llava
    from medvl.inference import load_model, prepare_batch
    from tests.test_convert_medmvl import QWEN, _make_clip_checkpoint

    src = _make_clip_checkpoint(tmp_path)
    medvl_dir = convert_medmvl(src, tmp_path / "medvl", llm=QWEN, vision=tmp_path / "clip-tiny")
    out = export_llava(medvl_dir, tmp_path / "llava")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["vision_feature_select_strategy"], cfg["vision_feature_layer"]) == ("default", -2)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image)
    model, processor = load_model(medvl_dir, device="cpu")
    rec = Record(id="r", messages=[{"role": "user", "content": "<image>\nWhat?"}], images=[str(image)])
    batch = prepare_batch(model, processor, [rec])
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    llava_proc = AutoProcessor.from_pretrained(out)
    text = llava_proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
        add_generation_prompt=True,
    )
    stock = llava_proc(text=[text], images=[Image.open(image).convert("RGB")], return_tensors="pt")
    assert stock["input_ids"].tolist() == batch["input_ids"].tolist()
    assert torch.equal(stock["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        diff = (llava(**stock).logits[0, -1] - model(**batch).logits[0, -1]).abs().max()
    assert float(diff) <= 1e-4
