"""CTViT (CT-CLIP's 3D encoder): equivalence with the original on the fixture, build, save/load, training.

The reference values in ``tests/fixtures/ctclip`` were computed by CT-CLIP's own ``CTViT`` (see its
README); nothing here re-derives them with medvl code.
"""

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
import yaml
from safetensors.torch import load_file

from medvl.build import build_model, load_ctclip_folder, load_model_spec, save_checkpoint
from medvl.models import MedVLForConditionalGeneration, MedVLProcessor
from medvl.models.ctvit import CTCLIP_RELEASED_KWARGS, CTViTConfig, CTViTModel
from tests.conftest import fixture_path

FIXTURE = fixture_path("ctclip")
GRID = (4, 6, 6)  # fixture token grid (t, h, w): 16 slices / 4, 48 / 8, 48 / 8
TINY_LLM = [
    "llm.config.model_type=qwen2",
    "llm.config.hidden_size=32",
    "llm.config.intermediate_size=64",
    "llm.config.num_hidden_layers=1",
    "llm.config.num_attention_heads=2",
    "llm.config.num_key_value_heads=1",
    "tokenizer.source=train",
    "tokenizer.vocab_size=400",
]


def _npy(name: str) -> np.ndarray:
    return np.load(FIXTURE / f"{name}.npy")


def _inputs() -> torch.Tensor:
    return torch.from_numpy(_npy("inputs"))


def _fixture_encoder() -> CTViTModel:
    config = CTViTConfig.from_ctclip_kwargs(json.loads((FIXTURE / "config.json").read_text()), num_frames=16)
    model = CTViTModel(config).eval()
    model.load_state_dict(torch.load(FIXTURE / "ctvit_state_dict.pt", weights_only=True), strict=True)
    return model


def _weights_folder(tmp_path: Path, name: str, files: tuple[str, ...] = ("ctvit_state_dict.pt", "config.json")) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for file in files:
        shutil.copy(FIXTURE / file, folder / file)
    return folder


def _ctvit_spec(folder: Path | None, *extra: str):
    path = [f"volume.path={folder}"] if folder is not None else []
    return load_model_spec(
        None,
        [
            *TINY_LLM,
            "volume.encoder=ctvit",
            *path,
            "volume.config.num_frames=16",
            "volume.connector.type=spatial_pool",
            "volume.connector.pool_stride=[2,2,2]",
            *extra,
        ],
    )


# ---------------------------------------------------------------------------- equivalence with CT-CLIP
def test_tokens_equal_ctclip_for_the_batch_and_for_sample_0_alone():
    model = _fixture_encoder()
    with torch.no_grad():
        batch = model(_inputs())
        alone = model(_inputs()[:1])
    expected = _npy("expected_tokens")  # (2, t, h, w, dim)
    np.testing.assert_allclose(batch.last_hidden_state.numpy().reshape(expected.shape), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        alone.last_hidden_state.numpy().reshape(1, *expected.shape[1:]),
        _npy("expected_tokens_sample0_alone"),
        atol=1e-5,
        rtol=0,
    )
    np.testing.assert_array_equal(batch.codebook_indices.numpy().reshape(2, *GRID), _npy("expected_codebook_indices"))
    # the encoded tokens are the stored (un-normalised) codebook rows
    codebook = model.vq._codebook.embed[0]
    assert torch.equal(batch.last_hidden_state, codebook[batch.codebook_indices])


def test_intermediates_match_ctclip_stage_by_stage():
    model = _fixture_encoder()
    x = _inputs()
    with torch.no_grad():
        patch = model.to_patch_emb(x)
        np.testing.assert_allclose(patch.numpy(), _npy("intermediate_patch_emb"), atol=1e-5, rtol=0)
        np.testing.assert_allclose(
            model.spatial_rel_pos_bias(6, 6).numpy(), _npy("intermediate_spatial_attn_bias"), atol=1e-6, rtol=0
        )
        n, t, h, w, d = patch.shape
        peg = model.enc_spatial_transformer.layers[0][0](patch.reshape(n * t, h * w, d), (n, t, h, w))
        np.testing.assert_allclose(
            peg.reshape(n, t, h, w, d).numpy(), _npy("intermediate_spatial_layer0_peg_out"), atol=1e-5, rtol=0
        )
        np.testing.assert_allclose(model.encode(x).numpy(), _npy("intermediate_temporal_out_pre_vq"), atol=1e-5, rtol=0)
        # the temporal PEG sees the (b*h*w, t, d) layout reshaped to (b, t, h, w, d) without a permute
        spatial = torch.from_numpy(_npy("intermediate_spatial_out"))
        temporal_in = spatial.permute(0, 2, 3, 1, 4).reshape(n * h * w, t, d)
        peg_t = model.enc_temporal_transformer.layers[0][0](temporal_in, (n, t, h, w))
        np.testing.assert_allclose(
            peg_t.reshape(n, h, w, t, d).permute(0, 3, 1, 2, 4).numpy(),
            _npy("intermediate_temporal_layer0_peg_out"),
            atol=1e-5,
            rtol=0,
        )


def test_safetensors_and_pt_hold_the_same_weights_and_keys_match_ctclip():
    model = _fixture_encoder()
    pt = torch.load(FIXTURE / "ctvit_state_dict.pt", weights_only=True)
    st = load_file(str(FIXTURE / "model.safetensors"))
    assert list(model.state_dict()) == list(pt) and set(st) == set(pt)  # key for key, same order as CT-CLIP's
    assert all(torch.equal(st[k], pt[k]) for k in pt)


def test_batch_independence_on_random_volumes():
    model = _fixture_encoder()
    x = torch.from_numpy(np.random.default_rng(5).uniform(-1, 1, (3, 1, 16, 48, 48)).astype(np.float32))
    with torch.no_grad():
        together = model(x)
        for i in range(3):
            alone = model(x[i : i + 1])
            torch.testing.assert_close(alone.pre_quantization, together.pre_quantization[i : i + 1], atol=1e-5, rtol=0)
            assert torch.equal(alone.codebook_indices, together.codebook_indices[i : i + 1])


def test_ctclip_kwargs_and_config_errors():
    config = CTViTConfig.from_ctclip_kwargs({**CTCLIP_RELEASED_KWARGS, "use_vgg_and_gan": False})
    assert (config.dim, config.heads, config.dim_head, config.num_frames) == (512, 8, 32, 240)
    assert config.grid_size == (24, 24, 24) and config.ff_inner_dim == 1365 and config.hidden_size == 512
    # CTViT's own class default for dim_head is 64 (the released model passes 32)
    assert (
        CTViTConfig.from_ctclip_kwargs({k: v for k, v in CTCLIP_RELEASED_KWARGS.items() if k != "dim_head"}).dim_head
        == 64
    )
    with pytest.raises(ValueError, match="lack \\['codebook_size'\\]"):
        CTViTConfig.from_ctclip_kwargs({k: v for k, v in CTCLIP_RELEASED_KWARGS.items() if k != "codebook_size"})
    with pytest.raises(ValueError, match="unknown CTViT constructor argument.*'heads_'"):
        CTViTConfig.from_ctclip_kwargs({**CTCLIP_RELEASED_KWARGS, "heads_": 4})
    with pytest.raises(ValueError, match="does not divide num_frames"):
        CTViTConfig(num_frames=235)
    with pytest.raises(ValueError, match="CTViT expects volumes"):
        _fixture_encoder()(torch.zeros(1, 1, 16, 40, 48))


# ---------------------------------------------------------------------------- medvl build
@pytest.mark.parametrize("files", [("ctvit_state_dict.pt", "config.json"), ("model.safetensors", "config.json")])
def test_build_from_ctclip_weights_folder_is_bit_for_bit(tmp_path, files):
    folder = _weights_folder(tmp_path, "ctclip", files)
    model, processor = build_model(_ctvit_spec(folder))
    reference = torch.load(FIXTURE / "ctvit_state_dict.pt", weights_only=True)
    own = model.volume_encoder.state_dict()
    assert set(own) == set(reference) and all(torch.equal(own[k], v) for k, v in reference.items())
    assert model.config.volume_encoder == "ctvit" and model.config.num_volume_tokens == 2 * 3 * 3
    with torch.no_grad():
        tokens = model.encode_volumes(_inputs())
    assert tokens.shape == (2, 4 * 6 * 6, 64)  # (N, t*h*w, dim) in (t, h, w) order
    np.testing.assert_allclose(tokens.numpy().reshape(2, *GRID, 64), _npy("expected_tokens"), atol=1e-5, rtol=0)
    assert processor.volume_processor.mode == "ct_clip" and processor.volume_processor.output_shape == (1, 16, 48, 48)


def test_medvl_build_cli_writes_ctclip_weights_bit_for_bit(tmp_path):
    from medvl.cli import main

    folder = _weights_folder(tmp_path, "ctclip", ("model.safetensors", "config.json"))
    spec = tmp_path / "ct.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "llm": {
                    "config": {
                        "model_type": "qwen2",
                        "hidden_size": 32,
                        "intermediate_size": 64,
                        "num_hidden_layers": 1,
                        "num_attention_heads": 2,
                        "num_key_value_heads": 1,
                    }
                },
                "volume": {
                    "encoder": "ctvit",
                    "path": str(folder),
                    "config": {"num_frames": 16},
                    "connector": {"type": "attn_pool", "num_queries": 4, "num_heads": 4},
                },
                "tokenizer": {"source": "train", "vocab_size": 400},
            }
        )
    )
    assert main(["build", str(spec), "--out", str(tmp_path / "out")]) == 0
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    reference = load_file(str(FIXTURE / "model.safetensors"))
    assert all(torch.equal(saved[f"volume_encoder.{k}"], v) for k, v in reference.items())
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["volume_encoder"] == "ctvit" and config["volume_config"]["model_type"] == "medvl_ctvit"
    assert config["num_volume_tokens"] == 4


def test_build_takes_the_visual_transformer_of_a_full_ctclip_state_dict(tmp_path):
    folder = tmp_path / "full"
    folder.mkdir()
    shutil.copy(FIXTURE / "config.json", folder / "config.json")
    weights = {
        f"visual_transformer.{k}": v for k, v in torch.load(FIXTURE / "ctvit_state_dict.pt", weights_only=True).items()
    }
    weights["text_transformer.embeddings.word_embeddings.weight"] = torch.zeros(3, 4)
    weights["to_visual_latent.weight"] = torch.zeros(4, 4)
    torch.save(weights, folder / "CT_CLIP_zeroshot.pt")
    model, _ = build_model(_ctvit_spec(folder, "volume.feature_select=pre_vq"))
    with torch.no_grad():
        tokens = model.encode_volumes(_inputs())
    np.testing.assert_allclose(
        tokens.numpy().reshape(2, *GRID, 64), _npy("intermediate_temporal_out_pre_vq"), atol=1e-5, rtol=0
    )


def test_weights_folder_without_config_uses_released_ctclip_arguments(tmp_path):
    folder = _weights_folder(tmp_path, "noconfig", ("model.safetensors",))
    config, state_dict = load_ctclip_folder(folder)
    assert {
        k: getattr(config, k)
        for k in ("dim", "codebook_size", "temporal_patch_size", "spatial_depth", "temporal_depth", "dim_head", "heads")
    } == {k: v for k, v in CTCLIP_RELEASED_KWARGS.items() if k not in ("image_size", "patch_size")}
    assert config.image_size == [480, 480] and config.patch_size == [20, 20] and config.num_frames == 240
    assert "vq._codebook.embed" in state_dict
    # the fixture's tiny weights do not fit the released architecture: a clear error, not a silent load
    with pytest.raises(ValueError, match="has shape \\(64,\\) in the file but \\(512,\\) .*is config.json right"):
        build_model(load_model_spec(None, [*TINY_LLM, "volume.encoder=ctvit", f"volume.path={folder}"]))


def test_a_saved_medvl_ctvit_folder_loads_too(tmp_path):
    _fixture_encoder().save_pretrained(tmp_path / "saved")
    config, state_dict = load_ctclip_folder(tmp_path / "saved", {"num_frames": 32})
    assert config.num_frames == 32 and config.dim == 64 and config.dim_head == 16
    reference = torch.load(FIXTURE / "ctvit_state_dict.pt", weights_only=True)
    assert set(state_dict) == set(reference) and all(torch.equal(state_dict[k], v) for k, v in reference.items())


def test_weights_folder_errors(tmp_path):
    both = _weights_folder(tmp_path, "both", ("ctvit_state_dict.pt", "model.safetensors", "config.json"))
    with pytest.raises(ValueError, match="several weights files"):
        load_ctclip_folder(both)
    empty = _weights_folder(tmp_path, "empty", ("config.json",))
    with pytest.raises(FileNotFoundError, match="no CT-CLIP weights file"):
        load_ctclip_folder(empty)
    with pytest.raises(ValueError, match="volume_feature_select.*'cls'.*valid choices: 'patch', 'pre_vq'"):
        build_model(
            _ctvit_spec(
                None,
                "volume.config.image_size=48",
                "volume.config.patch_size=8",
                "volume.config.temporal_patch_size=4",
                "volume.feature_select=cls",
            )
        )


@pytest.mark.parametrize("connector", ["spatial_pool", "attn_pool"])
def test_connectors_work_on_the_thw_grid(tmp_path, connector):
    folder = _weights_folder(tmp_path, "ctclip")
    extra = ["volume.connector.num_queries=5", "volume.connector.num_heads=4"] if connector == "attn_pool" else []
    model, _ = build_model(_ctvit_spec(folder, f"volume.connector.type={connector}", *extra))
    with torch.no_grad():
        tokens = model.encode_volumes(_inputs())
        features = model.get_volume_features(_inputs())
    expected_count = 2 * 3 * 3 if connector == "spatial_pool" else 5
    assert model.config.num_volume_tokens == expected_count
    assert features.shape == (2, expected_count, model.config.text_config.hidden_size)
    if connector == "spatial_pool":
        # average over 2x2x2 blocks of the (t, h, w) grid, then the MLP
        grid = tokens.reshape(2, *GRID, 64).permute(0, 4, 1, 2, 3)
        pooled = torch.nn.functional.avg_pool3d(grid, 2).flatten(2).transpose(1, 2)
        torch.testing.assert_close(features, model.volume_connector.mlp(pooled), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------- save / load / train
REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, os, sys
    # drop every path that provides medvl (this source tree, an editable install of another checkout)
    sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or ".", "medvl", "__init__.py"))]
    assert importlib.util.find_spec("medvl") is None, "medvl must not be importable here"
    import numpy as np, torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
    with torch.no_grad():
        tokens = model.encode_volumes(torch.from_numpy(np.load(sys.argv[2])))
    hu = np.random.default_rng(3).normal(-300, 500, (40, 36, 6)).astype(np.float32)
    processed = processor.volume_processor({"array": hu, "affine": np.diag([1.2, 1.2, 5.0, 1.0])})["volume_values"]
    assert not any(name == "medvl" or name.startswith("medvl.") for name in sys.modules), "medvl was imported"
    np.save(sys.argv[3], tokens.numpy())
    np.save(sys.argv[3].replace("tokens", "processed"), processed.numpy())
    print(type(model.volume_encoder).__module__)
    """
)


def test_trust_remote_code_round_trip_gives_equal_tokens(tmp_path):
    model, processor = build_model(_ctvit_spec(_weights_folder(tmp_path, "ctclip")))
    ckpt = save_checkpoint(model, processor, tmp_path / "ckpt")
    assert (ckpt / "ctvit.py").is_file()
    loaded = MedVLForConditionalGeneration.from_pretrained(ckpt).eval()
    reference = torch.load(FIXTURE / "ctvit_state_dict.pt", weights_only=True)
    own = loaded.volume_encoder.state_dict()
    assert all(torch.equal(own[k], v) for k, v in reference.items())  # buffers included (beta, codebook)
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
        [sys.executable, "-I", str(script), str(ckpt), str(FIXTURE / "inputs.npy"), str(tmp_path / "tokens.npy")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout and "ctvit" in result.stdout
    np.testing.assert_allclose(
        np.load(tmp_path / "tokens.npy").reshape(2, *GRID, 64), _npy("expected_tokens"), atol=1e-5, rtol=0
    )
    # the checkpoint's copy of the volume processor applies CT-CLIP's preprocessing like medvl's
    assert MedVLProcessor.from_pretrained(ckpt).volume_processor == processor.volume_processor
    hu = np.random.default_rng(3).normal(-300, 500, (40, 36, 6)).astype(np.float32)
    local = processor.volume_processor({"array": hu, "affine": np.diag([1.2, 1.2, 5.0, 1.0])})["volume_values"]
    assert local.shape == (1, 1, 16, 48, 48)
    np.testing.assert_array_equal(np.load(tmp_path / "processed.npy"), local.numpy())


def test_gradients_reach_ctvit_when_it_trains(tmp_path):
    model, processor = build_model(_ctvit_spec(_weights_folder(tmp_path, "ctclip")))
    model.train()
    prompt = (
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "volume"}, {"type": "text", "text": "Findings?"}]}],
            add_generation_prompt=True,
        )
        + "Clear lungs."
    )
    batch = processor(text=[prompt], volumes=[np.zeros((4, 4, 4), np.float32)])
    batch["volume_values"] = _inputs()[:1]
    labels = batch["input_ids"].clone()
    labels[:, :-3] = -100
    model(**batch, labels=labels).loss.backward()
    grads = {n: p.grad for n, p in model.volume_encoder.named_parameters() if p.grad is not None}
    for name in (
        "to_patch_emb.2.weight",
        "enc_spatial_transformer.layers.0.1.to_q.weight",
        "enc_spatial_transformer.layers.0.0.dsconv.weight",
        "spatial_rel_pos_bias.net.0.0.weight",
        "enc_temporal_transformer.layers.1.3.4.weight",
        "enc_temporal_transformer.norm_out.gamma",
    ):
        assert name in grads and grads[name].abs().sum() > 0, name
    # the codebook is a buffer (CT-CLIP's VQ moves it by EMA, never by gradients)
    assert "vq._codebook.embed" not in dict(model.volume_encoder.named_parameters())


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    folder = _weights_folder(tmp_path, "ctclip")
    grads = []
    for checkpointing in (False, True):
        model, _ = build_model(_ctvit_spec(folder))
        model.train()
        calls = []
        if checkpointing:
            model.activation_checkpointing_enable()
            spatial = model.volume_encoder.enc_spatial_transformer
            wrapped = spatial._gradient_checkpointing_func
            spatial._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or wrapped(*a, **k)
        model.get_volume_features(_inputs()).square().mean().backward()
        assert len(calls) == (2 if checkpointing else 0)  # one per spatial layer
        grads.append({n: p.grad.clone() for n, p in model.volume_encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "enc_temporal_transformer.layers.0.1.to_q.weight" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_dummy_volumes_for_a_ctvit_model_keep_the_loss(tmp_path):
    from medvl.data.collator import PaddedCollator
    from medvl.train.dummy_media import add_dummy_media, media_slots

    model, _ = build_model(_ctvit_spec(_weights_folder(tmp_path, "ctclip")))
    model.train()
    slot = {s.key: s for s in media_slots(model.config)}["volume_values"]
    assert slot.shape == (1, 16, 48, 48) and slot.num_tokens == model.config.num_volume_tokens
    ids = torch.arange(10, 19)
    batch = PaddedCollator(pad_token_id=0)([{"input_ids": ids, "labels": torch.where(ids > 14, ids, -100)}])
    plain = model(**batch).loss
    with_dummy = add_dummy_media(batch, [slot])
    loss = model(**with_dummy).loss
    assert loss.item() == pytest.approx(plain.item(), rel=1e-5)
    loss.backward()
    grad = model.volume_encoder.to_patch_emb[2].weight.grad
    assert grad is not None and not grad.any()  # CTViT ran in the graph, with a zero gradient


def _write_ct_records(folder: Path, n: int = 4) -> Path:
    import nibabel as nib

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        hu = rng.normal(-600 if i % 2 else 40, 100, (16, 16, 4)).astype(np.int16)  # (i, j, k) as CT-RATE's NIfTI
        nib.save(nib.Nifti1Image(hu, np.diag([0.75, 0.75, 1.5, 1.0])), folder / f"ct{i}.nii.gz")
        lines.append(
            json.dumps(
                {
                    "id": f"ct{i}",
                    "volumes": [f"ct{i}.nii.gz"],
                    "messages": [
                        {"role": "user", "content": "<volume>\nIs this lung?"},
                        {"role": "assistant", "content": "yes" if i % 2 else "no"},
                    ],
                }
            )
        )
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_one_training_step_end_to_end_on_a_toy_ctvit(tmp_path):
    from medvl.data.records import load_records
    from medvl.inference import generate
    from medvl.train.config import load_train_config
    from medvl.train.run import final_model_dir, run_training

    toy = [
        "volume.config.image_size=16",
        "volume.config.patch_size=8",
        "volume.config.temporal_patch_size=2",
        "volume.config.num_frames=4",
        "volume.config.dim=32",
        "volume.config.codebook_size=16",
        "volume.config.spatial_depth=1",
        "volume.config.temporal_depth=1",
        "volume.config.dim_head=8",
        "volume.config.heads=2",
    ]
    spec = load_model_spec(None, [*TINY_LLM, "volume.encoder=ctvit", *toy, "volume.connector.type=mlp"])
    model, processor = build_model(spec)
    assert processor.volume_processor.output_shape == (1, 4, 16, 16)
    ckpt = save_checkpoint(model, processor, tmp_path / "toy")
    data = _write_ct_records(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(ckpt)},
                "data": {"train": [str(data)], "max_length": 128},
                "train": {
                    "parts": {"llm": {"mode": "frozen"}, "volume": {"mode": "full"}, "connector": {"mode": "full"}},
                    "lr": 1e-2,
                    "warmup_ratio": 0.0,
                    "batch_size": 2,
                    "max_steps": 1,
                    "logging_steps": 1,
                    "report_to": [],
                    "progress_bar": False,
                },
                "output": {"dir": str(tmp_path / "run")},
            }
        )
    )
    out = run_training(load_train_config(recipe))
    before = load_file(str(ckpt / "model.safetensors"))
    after = load_file(str(final_model_dir(out) / "model.safetensors"))
    changed = [k for k in before if k.startswith("volume_encoder.") and not torch.equal(before[k], after[k])]
    assert "volume_encoder.to_patch_emb.2.weight" in changed
    assert torch.equal(before["volume_encoder.vq._codebook.embed"], after["volume_encoder.vq._codebook.embed"])
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("language_model."))
    # the trained checkpoint answers through the one inference path (NIfTI -> ct_clip processor -> CTViT)
    trained = MedVLForConditionalGeneration.from_pretrained(final_model_dir(out)).eval()
    texts = generate(
        trained,
        MedVLProcessor.from_pretrained(final_model_dir(out)),
        load_records(data)[:2],
        max_new_tokens=3,
        min_new_tokens=3,
        progress=False,
    )
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
