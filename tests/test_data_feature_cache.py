"""Frozen-encoder feature cache: the same batches, loss and gradients as encoding the media at every
step, with the encoders never run in training; and the configurations it must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

try:  # tests/ as a package or as a plain folder on sys.path
    from tests._train_toy import write_bright_dark
except ImportError:
    from _train_toy import write_bright_dark
from medvl.data.collator import PaddedCollator
from medvl.data.dataset import ConversationDataset
from medvl.data.feature_cache import build_feature_cache, lazy_feature_cache
from medvl.data.records import load_records
from medvl.tools.synth.dataset import synthesize
from medvl.tools.synth.phantoms import Geometry3D
from medvl.train.config import TrainConfig, validate
from medvl.train.run import attach_feature_cache, run_training
from medvl.utils.config import from_dict


@pytest.fixture(scope="module")
def mixed_records(tmp_path_factory):
    """2D bright/dark records plus synthetic CT records (volumes the tiny model's shape)."""
    root = tmp_path_factory.mktemp("feature_cache")
    images = load_records(write_bright_dark(root / "2d", 6))
    synthesize("3d", 4, 0, root / "3d", geometry=Geometry3D(shape=(64, 64, 16), spacing=(5.25, 5.25, 7.5)))
    volumes = load_records(root / "3d" / "train.jsonl")[:6]
    return images + volumes


def _frozen_encoders(model):
    model.train()
    for module in (model.vision_tower, model.volume_encoder):
        module.requires_grad_(False)
    return model


def test_cached_features_give_the_same_loss_and_gradients(tiny_model_dir, tiny_processor, mixed_records):
    from medvl.models import MedVLForConditionalGeneration

    model = _frozen_encoders(MedVLForConditionalGeneration.from_pretrained(tiny_model_dir))
    dataset = ConversationDataset(mixed_records, tiny_processor, max_length=512)
    collate = PaddedCollator(pad_token_id=tiny_processor.tokenizer.pad_token_id)
    direct = collate([dataset[i] for i in range(len(dataset))])
    assert {"pixel_values", "volume_values"} <= set(direct)

    cache = build_feature_cache(model, [dataset], ["image", "volume"], batch_size=4)
    assert len(cache.features["image"]) == 6 and len(cache.features["volume"]) == len(
        {r.volumes[0] for r in mixed_records if r.volumes}
    )
    dataset.feature_cache = cache
    cached = collate([dataset[i] for i in range(len(dataset))])
    assert "pixel_values" not in cached and "volume_values" not in cached
    assert torch.equal(cached["input_ids"], direct["input_ids"]) and torch.equal(cached["labels"], direct["labels"])

    results = []
    for batch in (direct, cached):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and any("connector" in n for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6)
    assert not any("vision_tower" in n or "volume_encoder" in n for n in grads_a)  # frozen


def test_cache_refuses_a_training_encoder(tiny_model_dir, tiny_processor, mixed_records):
    from medvl.models import MedVLForConditionalGeneration

    model = MedVLForConditionalGeneration.from_pretrained(tiny_model_dir)
    dataset = ConversationDataset(mixed_records[:2], tiny_processor, max_length=512)
    with pytest.raises(ValueError, match="image encoder trains in this stage"):
        build_feature_cache(model, [dataset], ["image"])
    with pytest.raises(ValueError, match="valid choices: image, volume"):
        build_feature_cache(model, [dataset], ["audio"])


def test_config_needs_a_frozen_encoder(tiny_model_dir):
    cfg = from_dict(
        TrainConfig,
        {
            "model": {"path": str(tiny_model_dir)},
            "data": {"train": ["x.jsonl"], "cache_encoder_features": True},
            "train": {"parts": {"vision": {"mode": "full"}, "volume": {"mode": "lora"}}},
        },
    )
    with pytest.raises(ValueError, match="needs a frozen encoder"):
        validate(cfg)


def test_cache_is_refused_with_zero3(tmp_path, tiny_model_dir, tiny_processor, mixed_records):
    from medvl.models import MedVLForConditionalGeneration

    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    cfg = from_dict(
        TrainConfig,
        {
            "model": {"path": str(tiny_model_dir)},
            "data": {"train": ["x.jsonl"], "cache_encoder_features": True},
            "train": {"deepspeed": str(zero3)},
        },
    )
    model = _frozen_encoders(MedVLForConditionalGeneration.from_pretrained(tiny_model_dir))
    dataset = ConversationDataset(mixed_records[:2], tiny_processor, max_length=512)
    with pytest.raises(ValueError, match="not supported with DeepSpeed ZeRO-3"):
        attach_feature_cache(cfg, model, [dataset, None])
    assert dataset.feature_cache is None


def _losses(out: Path) -> list[float]:
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def test_training_with_the_cache_matches_training_without(tmp_path, tiny_model_dir):
    data = write_bright_dark(tmp_path / "data", 16)
    runs = {}
    for cached in (False, True):
        out = tmp_path / f"run_{cached}"
        cfg = from_dict(
            TrainConfig,
            {
                "model": {"path": str(tiny_model_dir)},
                "data": {
                    "train": [str(data)],
                    "max_length": 128,
                    "cache_encoder_features": cached,
                    "eval_fraction": 0.25,
                },
                "train": {
                    "parts": {"llm": {"mode": "full"}, "vision": {"mode": "frozen"}, "connector": {"mode": "full"}},
                    "lr": 5e-3,
                    "batch_size": 4,
                    "max_steps": 6,
                    "logging_steps": 1,
                    "report_to": [],
                    "progress_bar": False,
                    "save_steps": 1000,
                },
                "output": {"dir": str(out)},
            },
        )
        run_training(cfg)
        runs[cached] = (_losses(out), json.loads((out / "metrics.json").read_text())["eval"]["eval_loss"])
    (losses_direct, eval_direct), (losses_cached, eval_cached) = runs[False], runs[True]
    assert len(losses_direct) == 6
    assert losses_cached == pytest.approx(losses_direct, rel=1e-4, abs=1e-5)
    assert eval_cached == pytest.approx(eval_direct, rel=1e-4, abs=1e-5)


def test_lazy_cache_encodes_each_file_once_and_serves_the_eager_features(tiny_model_dir, tiny_processor, mixed_records):
    from medvl.models import MedVLForConditionalGeneration

    model = _frozen_encoders(MedVLForConditionalGeneration.from_pretrained(tiny_model_dir))
    dataset = ConversationDataset(mixed_records, tiny_processor, max_length=512)
    eager = build_feature_cache(model, [dataset], ["image", "volume"], batch_size=4)
    calls = {"image": 0, "volume": 0}
    model.vision_tower.register_forward_hook(lambda *_: calls.__setitem__("image", calls["image"] + 1))
    model.volume_encoder.register_forward_hook(lambda *_: calls.__setitem__("volume", calls["volume"] + 1))
    lazy = lazy_feature_cache(model, ["image", "volume"])
    dataset.feature_cache = lazy
    assert len(lazy) == 0  # nothing is encoded up front
    first = [dataset[i] for i in range(len(dataset))]
    files = {
        "image": len({p for r in mixed_records for p in r.images}),
        "volume": len({p for r in mixed_records for p in r.volumes}),
    }
    assert lazy.encoded == len(lazy) == sum(files.values())
    assert calls["image"] <= len([r for r in mixed_records if r.images]) and calls["volume"] >= 1
    seen = dict(calls)
    second = [dataset[i] for i in range(len(dataset))]  # a later epoch: no encoder forward at all
    assert calls == seen and lazy.encoded == sum(files.values())
    for a, b, rec in zip(first, second, mixed_records):
        key = "image_encoder_features" if rec.images else "volume_encoder_features"
        assert "pixel_values" not in a and "volume_values" not in a
        assert torch.equal(a[key], b[key])
        table = eager.features["image" if rec.images else "volume"]
        expected = torch.stack([table[p] for p in (rec.images or rec.volumes)])
        torch.testing.assert_close(a[key], expected, rtol=1e-5, atol=1e-5)  # one file at a time vs batches of 4
    # the encoder is left as it was (train mode) and never records autograd
    assert model.vision_tower.training and first[0]["image_encoder_features"].grad_fn is None


def test_attach_is_lazy_without_workers_and_eager_with_them(tiny_model_dir, tiny_processor, mixed_records, monkeypatch):
    from medvl.models import MedVLForConditionalGeneration

    model = _frozen_encoders(MedVLForConditionalGeneration.from_pretrained(tiny_model_dir))
    images = [r for r in mixed_records if r.images]
    # (workers, WORLD_SIZE) -> files encoded before training: none (single process, lazy), the first
    # one (multi-process: the feature shape of the dummy media), every file (workers: eager)
    for workers, world, filled in ((0, "1", 0), (0, "2", 1), (2, "1", len(images))):
        monkeypatch.setenv("WORLD_SIZE", world)
        cfg = from_dict(
            TrainConfig,
            {
                "model": {"path": str(tiny_model_dir)},
                "data": {"train": ["x.jsonl"], "cache_encoder_features": True, "num_workers": workers},
            },
        )
        dataset = ConversationDataset(images, tiny_processor, max_length=512)
        shapes = attach_feature_cache(cfg, model, [dataset, None])
        assert dataset.feature_cache is not None and len(dataset.feature_cache) == filled
        if filled:
            assert shapes["pixel_values"] == (model.config.num_image_tokens, model.config.image_feature_size())


def test_unset_cache_is_on_only_where_it_cannot_cost(tiny_model_dir, tiny_processor, mixed_records, monkeypatch):
    """data.cache_encoder_features unset (the default): lazy cache for a frozen encoder without
    workers; silently off with workers, a training encoder, or features over the memory budget."""
    from medvl.models import MedVLForConditionalGeneration
    from medvl.train import run as run_module

    model = _frozen_encoders(MedVLForConditionalGeneration.from_pretrained(tiny_model_dir))
    images = [r for r in mixed_records if r.images]

    def attach(data: dict, parts: dict | None = None):
        cfg = from_dict(
            TrainConfig,
            {
                "model": {"path": str(tiny_model_dir)},
                "data": {"train": ["x.jsonl"], **data},
                "train": {"parts": parts or {}},
            },
        )
        assert cfg.data.cache_encoder_features is None
        dataset = ConversationDataset(images, tiny_processor, max_length=512)
        return attach_feature_cache(cfg, model, [dataset]), dataset

    shapes, dataset = attach({})
    assert dataset.feature_cache is not None and len(dataset.feature_cache) == 1 and shapes
    assert attach({"num_workers": 2})[1].feature_cache is None
    assert attach({}, {"vision": {"mode": "full"}, "volume": {"mode": "full"}})[1].feature_cache is None
    monkeypatch.setattr(run_module, "AUTO_FEATURE_CACHE_BYTES", 1024)
    shapes, dataset = attach({})
    assert dataset.feature_cache is None and shapes == {}
