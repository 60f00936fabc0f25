"""build_model / medvl build: tiny.yaml, pretrained parts kept bit for bit, self-contained checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medvl.build import build_model, load_model_spec, save_checkpoint
from medvl.models import MedVLForConditionalGeneration, MedVLProcessor
from medvl.tokenization import builtin_corpus, train_tokenizer

SRC = Path(__file__).resolve().parents[1] / "src"


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))


def _volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 300, (20, 48, 40)).astype(np.float32)  # HU, (D, H, W)


def _prompt(processor: MedVLProcessor) -> str:
    return processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "volume"}, {"type": "text", "text": "Any nodule?"}]}],
        add_generation_prompt=True,
    )


def test_tiny_yaml_checkpoint_is_self_contained(tiny_model_dir, tiny_processor):
    files = {p.name for p in tiny_model_dir.iterdir()}
    for name in (
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "configuration_medvl.py",
        "modeling_medvl.py",
        "processing_medvl.py",
        "vit3d.py",
        "connectors.py",
        "volume_processing_medvl.py",
        "windows.py",
        "generation_config.json",
    ):
        assert name in files, name
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_medvl.MedVLForConditionalGeneration"
    assert (config["num_image_tokens"], config["num_volume_tokens"]) == (16, 8)
    assert config["volume_config"]["model_type"] == "medvl_vit3d"
    # the processor knows the same counts and the volume processor settings travel with it
    assert (tiny_processor.num_image_tokens, tiny_processor.num_volume_tokens) == (16, 8)
    assert list(tiny_processor.volume_processor.to_dict()["target_shape"]) == [16, 64, 64]
    assert tiny_processor.image_token_id == config["image_token_id"]


def _make_parts(root: Path) -> tuple[Path, Path]:
    """Pretrained-style part folders: a tiny Qwen2 LLM with its tokenizer and a tiny SigLIP tower."""
    from transformers import AutoModelForCausalLM, Qwen2Config, SiglipConfig, SiglipModel

    tokenizer = train_tokenizer(builtin_corpus(200), vocab_size=400)
    torch.manual_seed(1)
    llm = AutoModelForCausalLM.from_config(
        Qwen2Config(
            vocab_size=448,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    )
    with torch.no_grad():  # non-default values everywhere, so that a re-initialisation would show
        for p in llm.parameters():
            p.add_(torch.randn_like(p))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    # a full SigLIP checkpoint (text + vision, like google/siglip-*); medvl keeps its vision half
    tower = SiglipModel(
        SiglipConfig(
            vision_config=dict(
                image_size=32,
                patch_size=8,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
            ),
            text_config=dict(
                vocab_size=50, hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4
            ),
        )
    )
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(torch.randn_like(p))
    tower.save_pretrained(root / "siglip")
    return root / "llm", root / "siglip"


def test_pretrained_parts_keep_their_weights_and_checkpoint_loads_without_them(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, SiglipModel

    llm_dir, tower_dir = _make_parts(tmp_path / "parts")
    spec = load_model_spec(
        None,
        [
            f"llm.path={llm_dir}",
            f"vision.path={tower_dir}",
            "vision.connector.depth=2",
            "volume.encoder=vit3d",
            "volume.config.image_size=[8,32,32]",
            "volume.config.patch_size=[4,8,8]",
            "volume.config.hidden_size=32",
            "volume.config.intermediate_size=64",
            "volume.config.num_hidden_layers=1",
            "volume.config.num_attention_heads=4",
            "volume.connector.pool_stride=[2,2,2]",
        ],
    )
    model, processor = build_model(spec)
    llm_ref = AutoModelForCausalLM.from_pretrained(llm_dir).state_dict()
    tower_ref = SiglipModel.from_pretrained(tower_dir).vision_model.state_dict()
    for ref, module in ((llm_ref, model.language_model), (tower_ref, model.vision_tower)):
        got = module.state_dict()
        assert set(got) == set(ref)
        for key, value in ref.items():
            assert torch.equal(got[key], value), key
    out = save_checkpoint(model, processor, tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "parts")  # the checkpoint must not need its parts any more
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = MedVLForConditionalGeneration.from_pretrained(str(out)).eval()
    for key, value in llm_ref.items():
        assert torch.equal(loaded.language_model.state_dict()[key], value), key
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    proc = MedVLProcessor.from_pretrained(str(out))
    batch = proc(text=[_prompt(proc)], images=[_image()], volumes=[_volume()])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, os, sys
    src = os.path.realpath(sys.argv[1])
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != src]
    assert importlib.util.find_spec("medvl") is None, "medvl must not be importable here"
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    ckpt = sys.argv[2]
    model = AutoModelForImageTextToText.from_pretrained(ckpt, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    volume = np.random.default_rng(0).normal(0, 300, (20, 48, 40)).astype(np.float32)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "volume"}, {"type": "text", "text": "Any nodule?"}]}],
        add_generation_prompt=True)
    batch = processor(text=[prompt], images=[image], volumes=[volume])
    with torch.no_grad():
        logits = model(**batch).logits
    assert not any(name == "medvl" or name.startswith("medvl.") for name in sys.modules), "medvl was imported"
    np.save(sys.argv[3], logits.numpy())
    print(type(model).__module__, type(processor).__module__)
    """
)


def test_trust_remote_code_load_in_a_process_without_medvl(tiny_model_dir, tiny_model, tiny_processor, tmp_path):
    script = tmp_path / "remote_load.py"
    script.write_text(REMOTE_SCRIPT)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(SRC), str(tiny_model_dir), str(tmp_path / "logits.npy")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout  # classes came from the checkpoint's code files
    batch = tiny_processor(text=[_prompt(tiny_processor)], images=[_image()], volumes=[_volume()])
    with torch.no_grad():
        expected = tiny_model(**batch).logits.numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), expected)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("llm.config.num_attention_heads=8", None),  # a valid combination (8 % 2 == 0, 64 % 8 == 0)
        (
            "llm.config.num_key_value_heads=3",
            "num_attention_heads \\(4\\) must be a multiple of num_key_value_heads \\(3\\).*1, 2, 4",
        ),
        (
            "llm.config.num_attention_heads=5",
            "num_attention_heads \\(5\\) must be a multiple of num_key_value_heads \\(2\\)",
        ),
        (
            "vision.config.num_attention_heads=3",
            "vision.config: hidden_size \\(64\\) must be a multiple of num_attention_heads \\(3\\)",
        ),
        ("vision.config.patch_size=24", "image_size 64 must be a multiple of patch_size 24"),
        ("volume.config.patch_size=[4,16,24]", "patch_size \\[4, 16, 24\\] does not divide image_size"),
    ],
)
def test_invalid_architecture_is_refused_at_build_time(tmp_path, override, expected):
    from medvl.build import build_model, load_model_spec
    from tests.conftest import TINY_YAML

    spec = load_model_spec(TINY_YAML, [override])
    if expected is None:  # a valid combination builds
        build_model(spec)
        return
    with pytest.raises(ValueError, match=expected):
        build_model(spec)


def test_build_cli_writes_a_loadable_checkpoint(tmp_path):
    from medvl.cli import main

    out = tmp_path / "cli"
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    assert main(["build", str(tiny), "--out", str(out), "volume=null", "vision.connector.depth=1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["volume_config"] is None and config["image_connector"]["depth"] == 1
    assert main(["build", str(tiny), "--out", str(tmp_path / "bad"), "vision.feature_select=cls_patch"]) == 2


def test_spec_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="valid keys"):
        load_model_spec(None, ["vision.conector.depth=2"])
    with pytest.raises(ValueError, match="at least one encoder"):
        build_model(load_model_spec(None, ["tokenizer.source=train", "llm.config.model_type=qwen2"]))
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        build_model(
            load_model_spec(
                None,
                [
                    f"llm.path={tmp_path / 'nope'}",
                    "tokenizer.source=train",
                    "vision.config.model_type=siglip_vision_model",
                ],
            )
        )


def _write_released_clip(folder: Path, kind: str) -> tuple[Path, torch.nn.Module]:
    """A tiny 3D CLIP checkpoint in the layout its project releases it: config.json (model_type
    medm-pretrain / m3d_clip) and model.safetensors holding the whole CLIP model (vision encoder under
    ``vision_encoder.``, a text encoder, projections, logit scale), as ``save_pretrained`` writes it."""
    from safetensors.torch import save_file

    try:
        from tests import _medmvl_reference as R
    except ImportError:
        import _medmvl_reference as R

    folder.mkdir(parents=True)
    torch.manual_seed(11)
    if kind == "medmclip":
        config = {
            "model_type": "medm-pretrain",
            "architectures": ["MedMCLIP"],
            "hidden_size": 32,
            "image_size": 32,
            "image_patch_size": 8,
            "frame_size": 8,
            "frame_patch_size": 4,
            "image_num_heads": 4,
            "image_mlp_dim": 64,
            "image_num_layers": 2,
            "dropout_rate": 0.0,
            "gather_loss": True,
            "local_loss": False,
            "language_model_name_or_path": "google-bert/bert-base-uncased",
        }
        vit = R.MedMClipViT(8, 32, 4, 8, 32, 2, 4, 64).eval()
        rest = {
            "text_encoder.embeddings.word_embeddings.weight": torch.randn(10, 32),
            "logit_scale": torch.tensor(2.6),
            "vision_encoder.mlp_head.0.weight": torch.randn(32),
            "vision_encoder.mlp_head.1.weight": torch.randn(32, 32),
        }
        encoder = vit
    else:
        from monai.networks.nets import ViT

        config = {
            "model_type": "m3d_clip",
            "architectures": ["M3DCLIP"],
            "in_channels": 1,
            "img_size": [8, 32, 32],
            "patch_size": [4, 8, 8],
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_layers": 2,
            "num_heads": 4,
            "pos_embed": "perceptron",
            "dropout_rate": 0.0,
            "spatial_dims": 3,
            "max_text_len": 128,
            "vocab_size": 30522,
            "language_model_name_or_path": "bert-base-uncased",
        }
        vit = ViT(
            in_channels=1,
            img_size=(8, 32, 32),
            patch_size=(4, 8, 8),
            hidden_size=32,
            mlp_dim=64,
            num_layers=2,
            num_heads=4,
            proj_type="perceptron",
            classification=True,
        ).eval()
        with torch.no_grad():  # MONAI initialises these to zero; make them matter
            vit.cls_token.normal_()
            vit.patch_embedding.position_embeddings.normal_()
        rest = {
            "language_encoder.embeddings.word_embeddings.weight": torch.randn(10, 32),
            "mm_vision_proj.weight": torch.randn(32, 32),
            "mm_language_proj.weight": torch.randn(32, 32),
            "logit_scale": torch.tensor(2.6),
        }
        encoder = R.monai_vit_hidden_states(vit)
    weights = {
        "vision_encoder." + k: v
        for k, v in vit.state_dict().items()
        if not k.startswith("classification_head") and ".norm_cross_attn." not in k
    }
    weights.update(rest)
    save_file({k: v.contiguous() for k, v in weights.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return folder, encoder


@pytest.mark.parametrize("kind", ["medmclip", "m3dclip"])
def test_build_with_a_released_3d_clip_encoder(tmp_path, kind):
    from safetensors.torch import load_file

    from medvl.cli import main as cli

    clip_dir, reference = _write_released_clip(tmp_path / kind, kind)
    source = load_file(str(clip_dir / "model.safetensors"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        textwrap.dedent(f"""
        llm:
          config: {{model_type: qwen2, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 1,
                    num_attention_heads: 4, num_key_value_heads: 2}}
        volume:
          encoder: vit3d
          path: {clip_dir}
          connector: {{type: spatial_pool, pool_stride: [1, 2, 2], depth: 1}}
        tokenizer: {{source: train, vocab_size: 400}}
    """)
    )
    assert cli(["build", str(spec), "--out", str(tmp_path / "built")]) == 0
    model = MedVLForConditionalGeneration.from_pretrained(tmp_path / "built").eval()
    got = {k[len("volume_encoder.") :]: v for k, v in model.state_dict().items() if k.startswith("volume_encoder.")}

    # bit for bit: every tensor is the released one (the patch Linear with its input axis reordered)
    if kind == "medmclip":
        pairs = {
            "embeddings.cls_token": "cls_token",
            "embeddings.position_embedding": "pos_embedding",
            "embeddings.patch_proj.bias": "to_patch_embedding.2.bias",
            "embeddings.patch_norm_out.weight": "to_patch_embedding.3.weight",
            "encoder.layers.1.attn.qkv.weight": "transformer_layers.1.self_attn.in_proj_weight",
            "encoder.layers.0.mlp.fc2.bias": "transformer_layers.0.linear2.bias",
        }
        # vit-pytorch flattens a patch as (ph, pw, pd, c); medvl as (c, pd, ph, pw)
        patch = source["vision_encoder.to_patch_embedding.2.weight"].reshape(32, 8, 8, 4, 1).permute(0, 4, 3, 1, 2)
    else:
        pairs = {
            "embeddings.cls_token": "cls_token",
            "embeddings.position_embedding": "patch_embedding.position_embeddings",
            "embeddings.patch_proj.bias": "patch_embedding.patch_embeddings.1.bias",
            "encoder.layers.1.attn.qkv.weight": "blocks.1.attn.qkv.weight",
            "encoder.layers.0.mlp.fc2.bias": "blocks.0.mlp.linear2.bias",
            "norm.weight": "norm.weight",
        }
        # MONAI flattens a patch as (pd, ph, pw, c)
        patch = source["vision_encoder.patch_embedding.patch_embeddings.1.weight"].reshape(32, 4, 8, 8, 1)
        patch = patch.permute(0, 4, 1, 2, 3)
    for ours, theirs in pairs.items():
        assert torch.equal(got[ours], source["vision_encoder." + theirs]), ours
    assert torch.equal(got["embeddings.patch_proj.weight"], patch.reshape(32, -1))
    assert not any("text_encoder" in k or "language_encoder" in k or "logit_scale" in k for k in model.state_dict())

    # and the encoder computes what the released one computes (block outputs, MedM-VL's reading)
    volume = torch.randn(2, 1, 8, 32, 32)
    with torch.no_grad():
        ours = model.volume_encoder(volume, output_hidden_states=True).hidden_states[1:]
        theirs = reference(volume)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the processor defaults to the encoder's input size and normalisation
    processor = MedVLProcessor.from_pretrained(tmp_path / "built")
    assert list(processor.volume_processor.target_shape) == [8, 32, 32]


def test_conv_stem_presets_are_the_quickstart_findings():
    from medvl.build import resolve_conv_stem
    from medvl.tools.quickstart.recipe import RECIPES

    # the 2D recipe's stem is "standard" at its width; the 3D recipe's is "narrow" after the thin slab
    vision = RECIPES["2d"].model["vision"]
    assert (
        resolve_conv_stem("standard", vision["config"]["hidden_size"], vision["config"]["patch_size"])
        == vision["conv_stem"]
    )
    volume = RECIPES["3d"].model["volume"]["config"]
    assert resolve_conv_stem("narrow", volume["hidden_size"], volume["patch_size"], [2, 1, 1]) == volume["conv_stem"]
    # one stride-2 layer per factor of two of the patch, at most four
    assert resolve_conv_stem("standard", 64, 8) == [16, 32, 64]
    assert resolve_conv_stem("narrow", 96, [4, 16, 16], [1, 1, 1]) == [6, 12, 24, 48]
    assert resolve_conv_stem([4, 8], 64, 16) == [4, 8] and resolve_conv_stem(None, 64, 16) is None
    with pytest.raises(ValueError, match="valid choices: standard, narrow"):
        resolve_conv_stem("wide", 64, 16)


def test_conv_stem_presets_in_the_build_spec(tmp_path):
    spec_yaml = tmp_path / "spec.yaml"
    spec_yaml.write_text(
        textwrap.dedent("""
        llm: {config: {model_type: qwen2, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
                       num_attention_heads: 2, num_key_value_heads: 2}}
        vision:
          config: {model_type: siglip_vision_model, image_size: 32, patch_size: 8, hidden_size: 32,
                   intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}
          conv_stem: standard
        volume:
          config: {image_size: [8, 32, 32], patch_size: [4, 16, 16], hidden_size: 32, intermediate_size: 64,
                   num_hidden_layers: 1, num_attention_heads: 2}
          conv_stem: narrow
          conv_stem_pool: thin-slab
        tokenizer: {source: train, vocab_size: 300}
    """)
    )
    model, processor = build_model(load_model_spec(spec_yaml))
    assert model.config.image_conv_stem == [8, 16, 32]
    assert model.config.volume_config.conv_stem == [2, 4, 8, 16] and model.config.volume_config.conv_stem_pool == [
        2,
        1,
        1,
    ]
    save_checkpoint(model, processor, tmp_path / "ckpt")
    loaded = MedVLForConditionalGeneration.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.volume_config.conv_stem == [2, 4, 8, 16]
    x = torch.randn(1, 1, 8, 32, 32)
    torch.testing.assert_close(loaded.encode_volumes(x), model.encode_volumes(x))
    with pytest.raises(ValueError, match="volume.conv_stem_pool: unknown preset 'thick'"):
        build_model(load_model_spec(spec_yaml, ["volume.conv_stem_pool=thick"]))
    with pytest.raises(ValueError, match="volume.conv_stem and volume.config.conv_stem are both set"):
        build_model(load_model_spec(spec_yaml, ["volume.config.conv_stem=[4,8]"]))
    with pytest.raises(ValueError, match="vit3d encoder built from scratch"):
        build_model(load_model_spec(spec_yaml, ["volume.encoder=slicewise"]))
