"""MedM-VL importer: the independent oracle, config/weight translation, and equivalence on the fixtures.

The fixtures in ``tests/fixtures/medmvl/`` hold tiny checkpoints in MedM-VL's saved format with the
values MedM-VL's own code computed on them. ``tests/_medmvl_reference.py`` re-implements MedM-VL's
numerics from the fixture READMEs alone; it is checked against the fixtures here, and then serves as
the oracle for the layouts the fixtures do not cover.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import _medmvl_reference as R
from tests.conftest import fixture_path

FIXTURES = fixture_path("medmvl")
FOLDERS = ["medmvl-2d-siglip-mlp", "medmvl-ct-siglip-attnpool"]


def _expected(name: str) -> dict:
    return json.loads((FIXTURES / name / "expected.json").read_text())


def _inputs(name: str, which: str) -> dict:
    return json.loads((FIXTURES / name / "inputs" / f"{which}.json").read_text())[0]


@pytest.fixture(scope="module")
def reference_models() -> dict[str, R.RefModel]:
    torch.manual_seed(0)
    return {
        name: R.load_ref_model(
            FIXTURES / name / "checkpoint",
            FIXTURES / name / "components" / "qwen2-tiny",
            FIXTURES / name / "components" / "siglip-tiny",
        )
        for name in FOLDERS
    }


def _ref_pixels(name: str) -> tuple[torch.Tensor, bool]:
    item = _inputs(name, "infer")
    if "image" in item:
        return R.preprocess_image(FIXTURES / name / "inputs" / item["image"][0], 64, [0.5] * 3, [0.5] * 3), False
    hu = np.load(FIXTURES / name / "inputs" / item["image3d"][0])
    return R.preprocess_ct_slices(hu, 64, 32, [0.5] * 3, [0.5] * 3), True


@pytest.mark.parametrize("name", FOLDERS)
def test_reference_reproduces_fixture(name: str, reference_models: dict) -> None:
    """The oracle reproduces every value MedM-VL computed (so it can judge layouts without fixtures)."""
    exp = _expected(name)
    ref = reference_models[name]
    tok = R.load_tokenizer(FIXTURES / name / "checkpoint")
    item = _inputs(name, "infer")
    prompt = R.prompt_text(item["conversations"], "eval")
    assert prompt == exp["inference"]["prompt"]
    ids = R.tokenize_chunks(tok, prompt)
    assert ids == exp["inference"]["input_ids"]
    px, is_3d = _ref_pixels(name)
    stored = np.load(FIXTURES / name / "expected" / ("pixel_values_channel0.npy" if is_3d else "pixel_values.npy"))
    np.testing.assert_array_equal(px[:, :1].numpy() if is_3d else px.numpy(), stored)
    feats = ref.encode(px, is_3d)
    np.testing.assert_allclose(feats.numpy(), np.load(FIXTURES / name / "expected" / "encoder_features.npy"), atol=1e-5)
    media = ref.connect(feats)
    embeds = ref.merge(ids, media[0])
    assert embeds.shape[0] == exp["inference"]["merged_len"]
    logits = ref.logits(embeds)[-1]
    assert (
        float((logits - torch.from_numpy(np.load(FIXTURES / name / "expected" / "logits_last.npy"))).abs().max())
        <= 1e-4
    )
    assert ref.greedy(embeds, 8) == exp["inference"]["greedy"]["ids"]

    train = _inputs(name, "train_case")
    text = R.prompt_text(train["conversations"], "train")
    tids = R.tokenize_chunks(tok, text)
    labels = R.train_labels(tok, text, tids)
    assert tids == exp["training"]["input_ids"] and labels == exp["training"]["labels"]
    merged = R.merged_labels(tids, labels, media.shape[1])
    assert merged == exp["training"]["merged_labels"]
    assert ref.loss(ref.merge(tids, media[0]), merged) == pytest.approx(exp["training"]["loss"], rel=1e-5)


# ----------------------------------------------------------------------------- converted fixtures
@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    from medvl.convert.medmvl import convert_medmvl
    from medvl.inference import load_model

    out = {}
    for name in FOLDERS:
        folder = convert_medmvl(FIXTURES / name / "checkpoint", tmp_path_factory.mktemp(name))
        out[name] = load_model(folder, device="cpu")
    return out


def _collapse(ids: list[int], token_id: int, sentinel: int) -> list[int]:
    """Runs of placeholder ids -> one MedM-VL sentinel id (-200/-201)."""
    out: list[int] = []
    for t in ids:
        if t == token_id:
            if not out or out[-1] != sentinel:
                out.append(sentinel)
        else:
            out.append(t)
    return out


@pytest.mark.parametrize("name", FOLDERS)
def test_converted_model_reproduces_medmvl(name: str, converted: dict) -> None:
    """Pixels, ids, merged length, last logits, greedy continuation and training loss equal MedM-VL's."""
    from medvl.data.labels import ConversationEncoder
    from medvl.data.records import load_records
    from medvl.inference import generate, prepare_batch

    exp = _expected(name)
    model, processor = converted[name]
    records = load_records(FIXTURES / name / "inputs" / "infer.json", root=FIXTURES / name / "inputs")
    batch = prepare_batch(model, processor, records)
    is_3d = "volume_values" in batch
    if is_3d:
        vol = batch["volume_values"]
        assert vol.shape == (1, 3, 32, 64, 64)
        np.testing.assert_array_equal(
            vol[:, :1].numpy(), np.load(FIXTURES / name / "expected" / "pixel_values_channel0.npy")
        )
        assert torch.equal(vol[:, 0], vol[:, 1]) and torch.equal(vol[:, 0], vol[:, 2])
        token_id, sentinel = model.config.volume_token_id, -201
    else:
        np.testing.assert_array_equal(
            batch["pixel_values"].numpy(), np.load(FIXTURES / name / "expected" / "pixel_values.npy")
        )
        token_id, sentinel = model.config.image_token_id, -200
    ids = batch["input_ids"][0].tolist()
    assert _collapse(ids, token_id, sentinel) == exp["inference"]["input_ids"]
    assert len(ids) == exp["inference"]["merged_len"]

    with torch.no_grad():
        logits = model(**batch).logits[0, -1]
    expected_logits = torch.from_numpy(np.load(FIXTURES / name / "expected" / "logits_last.npy"))
    assert float((logits - expected_logits).abs().max()) <= 1e-4

    greedy = exp["inference"]["greedy"]
    with torch.no_grad():
        seq = model.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert seq[0, len(ids) :].tolist() == greedy["ids"]
    assert generate(model, processor, records, max_new_tokens=8, progress=False) == [
        exp["inference"]["inference_py_output"]
    ]

    # training: medvl's label rule gives MedM-VL's supervised tokens and loss
    train = load_records(FIXTURES / name / "inputs" / "train_case.json", root=FIXTURES / name / "inputs")[0]
    enc = ConversationEncoder.from_processor(processor).encode(train.messages, record=train.id)
    assert _collapse(enc.input_ids, token_id, sentinel) == exp["training"]["input_ids"]
    assert enc.labels == exp["training"]["merged_labels"]
    media = {"volume_values": batch["volume_values"]} if is_3d else {"pixel_values": batch["pixel_values"]}
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor([enc.input_ids]),
            labels=torch.tensor([enc.labels]),
            **media,
            return_supervised_logits_only=True,
        )
    assert float(out.loss) == pytest.approx(exp["training"]["loss"], rel=1e-5)
    # logits only at the supervised positions: one per loss term MedM-VL counted
    assert out.logits.shape[0] == sum(label != -100 for label in exp["training"]["merged_labels"])


# ----------------------------------------------------------------------------- layouts without fixtures
QWEN = FIXTURES / "medmvl-2d-siglip-mlp" / "components" / "qwen2-tiny"
_NULL_3D = {
    f"lvlm_{k}": None
    for k in (
        "connector_image3d_name",
        "connector_image3d_path",
        "connector_image3d_type",
        "encoder_image3d_name_or_path",
        "encoder_image3d_select_feature",
        "encoder_image3d_select_layer",
        "encoder_image3d_type",
    )
}
_NULL_2D = {k.replace("image3d", "image"): None for k in _NULL_3D}


def _llm_weights(seed: int) -> dict[str, torch.Tensor]:
    """Random Qwen2 weights under MedM-VL's ``llm.`` prefix, saved WITHOUT lm_head (non-DeepSpeed save)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    llm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(QWEN))
    return {"llm." + k: v.clone() for k, v in llm.state_dict().items() if k != "lm_head.weight"}


def _connector_weights(prefix: str, dim_in: int, dim_out: int, depth: int = 2) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(depth):
        out[f"{prefix}connector.{2 * i}.weight"] = torch.randn(dim_out, dim_in if i == 0 else dim_out) * 0.1
        out[f"{prefix}connector.{2 * i}.bias"] = torch.randn(dim_out) * 0.1
    return out


def _write(folder: Path, config: dict, weights: dict[str, torch.Tensor], shards: int = 1) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "lvlm", "hidden_size": 64, **config}))
    keys = sorted(weights)
    if shards == 1:
        save_file({k: weights[k].contiguous() for k in keys}, folder / "model.safetensors")
        return folder
    index = {"metadata": {}, "weight_map": {}}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s::shards]
        save_file({k: weights[k].contiguous() for k in part}, folder / name)
        index["weight_map"].update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def _make_clip_checkpoint(tmp: Path, dtype: torch.dtype = torch.float32, shards: int = 1) -> Path:
    """CLIP tower, select_layer -2, select_feature patch (CLS dropped), mlp2x_gelu; no lm_head stored."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    vision = tmp / "clip-tiny"
    vision.mkdir()
    vcfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
    )
    vcfg.save_pretrained(vision)
    (vision / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": 32},
                "do_center_crop": True,
                "crop_size": {"height": 32, "width": 32},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "resample": 3,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            }
        )
    )
    torch.manual_seed(1)
    tower = CLIPVisionModel(vcfg)
    weights = _llm_weights(2)
    weights.update({"encoder_image.encoder.vision_model." + k: v for k, v in tower.state_dict().items()})
    weights.update(_connector_weights("connector_image.", 32, 64))
    config = {
        **_NULL_3D,
        "lvlm_llm_type": "qwen2",
        "lvlm_llm_name_or_path": "Qwen/Qwen2.5-3B-Instruct",
        "lvlm_llm_max_length": 2048,
        "lvlm_encoder_image_type": "clip",
        "lvlm_encoder_image_name_or_path": "openai/clip-vit-large-patch14-336",
        "lvlm_encoder_image_select_layer": -2,
        "lvlm_encoder_image_select_feature": "patch",
        "lvlm_connector_image_type": "mlp",
        "lvlm_connector_image_name": "mlp2x_gelu",
    }
    return _write(tmp / "ckpt", config, {k: v.to(dtype) for k, v in weights.items()}, shards)


def _make_3d_checkpoint(tmp: Path, kind: str) -> tuple[Path, torch.nn.Module]:
    """MedM-CLIP + spatial_pooling (select_layer 0, patch) or M3D-CLIP + mlp (select_layer -1, cls_patch)."""
    enc_dir = tmp / f"{kind}-tiny"
    enc_dir.mkdir()
    torch.manual_seed(3)
    if kind == "medmclip":
        enc_cfg = {
            "hidden_size": 32,
            "image_size": 32,
            "image_patch_size": 8,
            "frame_size": 8,
            "frame_patch_size": 4,
            "image_num_heads": 4,
            "image_mlp_dim": 64,
            "image_num_layers": 2,
        }
        vit = R.MedMClipViT(8, 32, 4, 8, 32, 2, 4, 64).eval()
        extra = {
            "encoder_image3d.encoder.text_encoder.embeddings.word_embeddings.weight": torch.randn(10, 32),
            "encoder_image3d.encoder.logit_scale": torch.tensor(2.6),
        }
        connector = ("spatial_pooling", "mlp2x_gelu", 0, "patch")
        encoder = vit
    else:
        from monai.networks.nets import ViT

        enc_cfg = {
            "in_channels": 1,
            "img_size": [8, 32, 32],
            "patch_size": [4, 8, 8],
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_layers": 2,
            "num_heads": 4,
            "pos_embed": "perceptron",
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
        extra = {"encoder_image3d.encoder.mm_vision_proj.weight": torch.randn(32, 32)}
        connector = ("mlp", "mlp2x_gelu", -1, "cls_patch")
        encoder = R.monai_vit_hidden_states(vit)
    (enc_dir / "config.json").write_text(json.dumps(enc_cfg))
    sd = {
        k: v
        for k, v in vit.state_dict().items()
        if not k.startswith(("classification_head", "blocks.0.norm_cross", "blocks.1.norm_cross"))
    }
    weights = _llm_weights(4)
    weights.update({"encoder_image3d.encoder.vision_encoder." + k: v for k, v in sd.items()})
    weights.update(extra)
    weights.update(_connector_weights("connector_image3d.", 32, 64))
    ctype, cname, layer, feat = connector
    config = {
        **_NULL_2D,
        "lvlm_llm_type": "qwen2",
        "lvlm_llm_name_or_path": str(QWEN),
        "lvlm_llm_max_length": 2048,
        "lvlm_encoder_image3d_type": kind,
        "lvlm_encoder_image3d_name_or_path": str(enc_dir),
        "lvlm_encoder_image3d_select_layer": layer,
        "lvlm_encoder_image3d_select_feature": feat,
        "lvlm_connector_image3d_type": ctype,
        "lvlm_connector_image3d_name": cname,
    }
    return _write(tmp / "ckpt", config, weights), encoder


def _expand(ids: list[int], sentinel: int, token_id: int, n: int) -> list[int]:
    out: list[int] = []
    for t in ids:
        out.extend([token_id] * n if t == sentinel else [t])
    return out


PROMPT_IDS = [32, 2485, 743, 220, -1, 198, 40, 82, 274, 261, 2381, 25]


def test_clip_patch_layer_minus2_sharded_bf16(tmp_path: Path) -> None:
    """CLIP select_layer -2 / patch, sharded bf16 weights, no lm_head (tied): same logits as the oracle."""
    from medvl.convert.medmvl import convert_medmvl
    from medvl.inference import load_model

    src = _make_clip_checkpoint(tmp_path, dtype=torch.bfloat16, shards=3)
    out = convert_medmvl(src, tmp_path / "out", llm=QWEN, vision=tmp_path / "clip-tiny", dtype="float32")
    model, processor = load_model(out, device="cpu")
    assert model.config.num_image_tokens == 16  # 4x4 patches, CLS dropped
    assert model.language_model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    ref_ckpt = tmp_path / "ref"
    ref_ckpt.mkdir()
    (ref_ckpt / "config.json").write_text((src / "config.json").read_text())
    from safetensors.torch import load_file, save_file

    sd = {}
    for f in src.glob("*.safetensors"):
        sd.update({k: v.float() for k, v in load_file(f).items()})
    save_file(sd, ref_ckpt / "model.safetensors")
    ref = R.load_ref_model(ref_ckpt, QWEN, tmp_path / "clip-tiny")
    torch.manual_seed(5)
    px = torch.randn(1, 3, 32, 32)
    feats = ref.encode(px, False)
    assert feats.shape == (1, 16, 32)
    expected = ref.logits(ref.merge(PROMPT_IDS, ref.connect(feats)[0]))[-1]
    ids = _expand(PROMPT_IDS, -1, model.config.image_token_id, 16)
    with torch.no_grad():
        got = model(input_ids=torch.tensor([ids]), pixel_values=px).logits[0, -1]
    assert float((got - expected).abs().max()) <= 1e-4


@pytest.mark.parametrize("kind", ["medmclip", "m3dclip"])
def test_3d_clip_encoders(tmp_path: Path, kind: str) -> None:
    """MedM-CLIP + spatial pooling (hidden-state index shifted: no embedding entry) and M3D-CLIP + MLP."""
    from medvl.convert.medmvl import build_medvl_model

    src, encoder = _make_3d_checkpoint(tmp_path, kind)
    model, layout, _ = build_medvl_model(src, token_ids={"image_token_id": 4000, "volume_token_id": 4001})
    ref = R.load_ref_model(src, QWEN, None, medmclip=encoder)
    torch.manual_seed(6)
    vol = torch.randn(1, 1, 8, 32, 32)
    feats = ref.encode(vol, True)
    media = ref.connect(feats, grid=(2, 4, 4))
    n = media.shape[1]
    assert n == (4 if kind == "medmclip" else 33)
    assert model.config.num_volume_tokens == n
    expected = ref.logits(ref.merge(PROMPT_IDS, media[0]))[-1]
    ids = _expand(PROMPT_IDS, -1, 4001, n)
    with torch.no_grad():
        got = model(input_ids=torch.tensor([ids]), volume_values=vol).logits[0, -1]
    assert float((got - expected).abs().max()) <= 1e-4


def test_missing_parts_are_named(tmp_path: Path) -> None:
    """Without local part folders the error lists each flag with the hub id MedM-VL's config names."""
    from medvl.convert.medmvl import MedMVLConversionError, convert_medmvl

    src = _make_clip_checkpoint(tmp_path)
    with pytest.raises(MedMVLConversionError) as err:
        convert_medmvl(src, tmp_path / "out")
    msg = str(err.value)
    assert "--llm DIR" in msg and "'Qwen/Qwen2.5-3B-Instruct'" in msg
    assert "--vision DIR" in msg and "'openai/clip-vit-large-patch14-336'" in msg
    with pytest.raises(MedMVLConversionError, match="lacks preprocessor_config.json"):
        convert_medmvl(src, tmp_path / "out", llm=QWEN, vision=QWEN)


def test_invalid_layouts(tmp_path: Path) -> None:
    from medvl.convert.medmvl import MedMVLConversionError
    from medvl.convert.medmvl.config import translate_config
    from medvl.convert.medmvl.layout import parse_mlp_name, read_layout

    assert parse_mlp_name("mlp3x_gelu") == (3, "gelu")
    with pytest.raises(MedMVLConversionError, match="mlp<depth>x_<gelu|relu>"):
        parse_mlp_name("linear")
    src = _make_clip_checkpoint(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "lvlm_connector_image_type": "qformer"}))
    with pytest.raises(MedMVLConversionError, match="valid choices: mlp, attn_pooling, spatial_pooling"):
        read_layout(src)
    # SigLIP has no CLS token: MedM-VL's 'patch' would silently drop a real patch
    siglip = FIXTURES / "medmvl-2d-siglip-mlp"
    (src / "config.json").write_text(
        json.dumps(
            {
                **json.loads((siglip / "checkpoint" / "config.json").read_text()),
                "lvlm_encoder_image_select_feature": "patch",
            }
        )
    )
    from medvl.convert.medmvl.layout import MedMVLParts

    parts = MedMVLParts(llm=siglip / "components" / "qwen2-tiny", vision=siglip / "components" / "siglip-tiny")
    with pytest.raises(MedMVLConversionError, match="drops its first real patch"):
        translate_config(read_layout(src), parts, {"connector_image": {}})


def test_ctclip_checkpoints_are_refused_with_the_reason(tmp_path: Path) -> None:
    from medvl.convert.medmvl import MedMVLConversionError, convert_medmvl

    src = _make_clip_checkpoint(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(
        json.dumps(
            {
                **cfg,
                "lvlm_encoder_image_type": None,
                "lvlm_encoder_image3d_type": "ctclip",
                "lvlm_encoder_image3d_name_or_path": "CT-CLIP_v2_visual_transformer.pt",
                "lvlm_connector_image3d_type": "spatial_pooling",
                "lvlm_connector_image3d_name": "mlp2x_gelu",
            }
        )
    )
    with pytest.raises(MedMVLConversionError, match="'ctclip' 3D encoder has no well-defined saved layout") as err:
        convert_medmvl(src, tmp_path / "out")
    assert "does not register 'ctclip'" in str(err.value) and "encoder: ctvit" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["medmclip", "m3dclip"])
def test_3d_converted_processor(tmp_path: Path, kind: str) -> None:
    """The converted processor applies MedM-VL's input handling for the 3D encoder and feeds the model."""
    import torch.nn.functional as F

    from medvl.convert.medmvl import convert_medmvl
    from medvl.inference import load_model
    from medvl.models.vit3d import MEDMCLIP_MEAN, MEDMCLIP_STD

    src, _ = _make_3d_checkpoint(tmp_path, kind)
    model, processor = load_model(convert_medmvl(src, tmp_path / "out"), device="cpu")
    rng = np.random.default_rng(0)
    if kind == "medmclip":
        raw = rng.uniform(0, 40, size=(12, 40, 36)).astype(np.float32)
        raw[2:10, 5:30, 4:33] = rng.uniform(60, 250, size=(8, 25, 29))
        got = processor.volume_processor([raw])["volume_values"]
        norm = (raw.astype(np.float64) - MEDMCLIP_MEAN) / MEDMCLIP_STD  # MedM-CLIP: normalise, crop > 0, resize
        nz = np.argwhere(norm > 0)
        lo, hi = nz.min(0), nz.max(0) + 1
        crop = torch.from_numpy(norm[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32))[None, None]
        ref = F.interpolate(crop, size=(8, 32, 32), mode="trilinear", align_corners=False)
        np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)
    else:
        raw = rng.uniform(0, 1, size=(8, 32, 32)).astype(np.float32)  # M3D's preprocessed input, used as is
        got = processor.volume_processor([raw])["volume_values"]
        np.testing.assert_array_equal(got.numpy()[0, 0], raw)
    batch = processor(text=["<volume>\nWhat is shown?"], volumes=[raw])
    assert batch["input_ids"].shape[1] == model.config.num_volume_tokens + len(
        processor.tokenizer("\nWhat is shown?", add_special_tokens=False)["input_ids"]
    )
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_convert_cli(tmp_path: Path) -> None:
    from medvl.cli import main

    src = _make_clip_checkpoint(tmp_path)
    assert main(["convert", "medm-vl", str(src), str(tmp_path / "bad")]) == 2  # parts missing: listed, exit 2
    assert (
        main(
            [
                "convert",
                "medm-vl",
                str(src),
                str(tmp_path / "out"),
                "--llm",
                str(QWEN),
                "--vision",
                str(tmp_path / "clip-tiny"),
            ]
        )
        == 0
    )
    config_text = (tmp_path / "out" / "config.json").read_text()
    assert json.loads(config_text)["model_type"] == "medvl"
    # self-contained: no part folder or hub id the checkpoint was built from
    assert str(tmp_path) not in config_text and "Qwen/" not in config_text and "openai/" not in config_text


def test_tower_input_routing(tmp_path: Path) -> None:
    """attn_pooling on SigLIP defaults to CT volumes; it can be imported as a 2D image model instead."""
    from medvl.convert.medmvl import MedMVLConversionError, build_medvl_model

    ids = {"image_token_id": 4000, "volume_token_id": 4001}
    ct = FIXTURES / "medmvl-ct-siglip-attnpool" / "checkpoint"
    as_image, _, _ = build_medvl_model(ct, token_ids=ids, tower_input="image")
    assert (as_image.config.num_image_tokens, as_image.config.num_volume_tokens) == (16, 0)
    assert as_image.config.image_connector_config.type == "attn_pool"
    src = _make_clip_checkpoint(tmp_path)
    with pytest.raises(MedMVLConversionError, match="SigLIP towers only"):
        build_medvl_model(src, llm=QWEN, vision=tmp_path / "clip-tiny", token_ids=ids, tower_input="volume")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "lvlm_connector_image_type": "spatial_pooling"}))
    with pytest.raises(MedMVLConversionError, match="needs a 3D patch grid"):
        build_medvl_model(src, llm=QWEN, vision=tmp_path / "clip-tiny", token_ids=ids)


def test_weights_outside_the_key_table_are_named(tmp_path: Path) -> None:
    """A weight no row of the layout's key table maps, or one the translated model lacks, is refused by name."""
    from safetensors.torch import load_file, save_file

    from medvl.convert.medmvl import MedMVLConversionError, build_medvl_model

    ids = {"image_token_id": 4000, "volume_token_id": 4001}
    src = _make_clip_checkpoint(tmp_path)
    weights = load_file(src / "model.safetensors")
    # a 3D encoder's weight in a checkpoint whose config.json has no 3D encoder: no row maps it
    save_file(
        {**weights, "encoder_image3d.encoder.vision_encoder.cls_token": torch.zeros(1, 1, 32)},
        src / "model.safetensors",
    )
    with pytest.raises(
        MedMVLConversionError, match=r"match no row .*encoder_image3d\.encoder\.vision_encoder\.cls_token"
    ):
        build_medvl_model(src, llm=QWEN, vision=tmp_path / "clip-tiny", token_ids=ids)
    # a third MLP layer where config.json says mlp2x_gelu: mapped, but the model has no such weight
    save_file({**weights, "connector_image.connector.4.weight": torch.zeros(64, 64)}, src / "model.safetensors")
    with pytest.raises(MedMVLConversionError, match=r"unexpected \['image_connector\.mlp\.4\.weight'\]"):
        build_medvl_model(src, llm=QWEN, vision=tmp_path / "clip-tiny", token_ids=ids)


def test_a_new_layout_is_table_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2D tower type MedM-VL never shipped (DINOv2) converts after one ENCODER_TYPES entry, no code branch."""
    from transformers import Dinov2Config, Dinov2Model

    from medvl.convert.medmvl import MedMVLConversionError, convert_medmvl
    from medvl.convert.medmvl.layout import ENCODER_TYPES, EncoderType
    from medvl.inference import load_model

    vision = tmp_path / "dinov2-tiny"
    vision.mkdir()
    vcfg = Dinov2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    vcfg.save_pretrained(vision)
    (vision / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}})
    )
    torch.manual_seed(7)
    tower = Dinov2Model(vcfg)
    weights = _llm_weights(8)
    weights.update({"encoder_image.encoder." + k: v for k, v in tower.state_dict().items()})  # no vision_model. level
    weights.update(_connector_weights("connector_image.", 32, 64))
    config = {
        **_NULL_3D,
        "lvlm_llm_type": "qwen2",
        "lvlm_llm_name_or_path": str(QWEN),
        "lvlm_encoder_image_type": "dinov2",
        "lvlm_encoder_image_name_or_path": str(vision),
        "lvlm_encoder_image_select_layer": -1,
        "lvlm_encoder_image_select_feature": "patch",
        "lvlm_connector_image_type": "mlp",
        "lvlm_connector_image_name": "mlp2x_gelu",
    }
    src = _write(tmp_path / "ckpt", config, weights)
    with pytest.raises(MedMVLConversionError, match="lvlm_encoder_image_type='dinov2' is not supported"):
        convert_medmvl(src, tmp_path / "refused")
    monkeypatch.setitem(ENCODER_TYPES, "dinov2", EncoderType("image", image_processor="BitImageProcessorPil"))
    model, processor = load_model(convert_medmvl(src, tmp_path / "out"), device="cpu")
    assert type(model.vision_tower).__name__ == "Dinov2Model"
    assert type(processor.image_processor).__name__ == "BitImageProcessorPil"
    assert model.config.num_image_tokens == 16  # 4x4 patches, CLS dropped
    ours = model.vision_tower.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in tower.state_dict().items())
    torch.manual_seed(9)
    px = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # MedM-VL's rule: hidden_states[select_layer] (no final norm), CLS dropped, then the MLP
        features = tower(px, output_hidden_states=True).hidden_states[-1][:, 1:]
        w = {k: weights[f"connector_image.connector.{k}"] for k in ("0.weight", "0.bias", "2.weight", "2.bias")}
        hidden = torch.nn.functional.gelu(features @ w["0.weight"].T + w["0.bias"])
        expected = hidden @ w["2.weight"].T + w["2.bias"]
        got = model.get_image_features(px)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
