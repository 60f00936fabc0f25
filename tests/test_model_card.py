"""Model cards: every checkpoint medvl writes (build, train, convert, merge, export) carries a README.md
that says what the model is, how it was made, its data with their licences, its recipe and evaluation,
and that it is for research use only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

try:  # tests/ as a package or as a plain folder on sys.path
    from tests._train_toy import write_bright_dark
except ImportError:
    from _train_toy import write_bright_dark
from medvl.model_card import RESEARCH_NOTICE, data_licence, read_card_metadata
from tests.conftest import fixture_path

NOTICE = "Research use only, not for clinical decisions."


def _card(folder: Path) -> tuple[str, dict]:
    text = (Path(folder) / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL).group(1))
    return text, front


def test_known_data_licences():
    assert data_licence("data/VQA_RAD/train.jsonl")[1].endswith("(CC0 1.0)")
    assert data_licence("ct-rate-train")[0] == "ct_rate" and "CC BY-NC-SA 4.0" in data_licence("ct-rate-train")[1]
    assert "PhysioNet Credentialed Health Data License" in data_licence("mimic_cxr_reports.json")[1]
    assert data_licence("st-elsewhere-hospital.jsonl") is None


def test_build_writes_a_card(tiny_model_dir):
    text, front = _card(tiny_model_dir)  # the session checkpoint is written by build.save_checkpoint
    assert NOTICE in text and RESEARCH_NOTICE in text
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "image-text-to-text"
    assert "medvl build" in front["medvl"]["history"][0]
    # the parts, read from config.json
    assert "| LLM | `qwen2`, layers 2, hidden 64" in text
    assert "| 2D image encoder | `siglip_vision_model`" in text and "16 tokens per image" in text
    assert "| 3D volume encoder | native 3D ViT: `medvl_vit3d`" in text and "8 tokens per volume" in text
    assert "No training data recorded" in text and "No evaluation recorded" in text


def _recipe(tmp_path, model_dir, train, out, **train_section):
    cfg = {
        "model": {"path": str(model_dir)},
        "data": {"train": [str(t) for t in train], "max_length": 128},
        "train": {
            "parts": {"llm": {"mode": "full"}, "connector": {"mode": "full"}},
            "lr": 1e-3,
            "batch_size": 4,
            "logging_steps": 1,
            "report_to": [],
            "progress_bar": False,
            **train_section,
        },
        "output": {"dir": str(out)},
    }
    path = tmp_path / f"{Path(out).name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_merge_and_export_write_cards(tmp_path, tiny_model_dir):
    from medvl.cli import main as cli
    from medvl.train.config import load_train_config
    from medvl.train.run import final_model_dir, run_training

    records = write_bright_dark(tmp_path / "VQA_RAD", 8)  # a folder named like the VQA-RAD release
    registry = tmp_path / "datasets.yaml"
    registry.write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "ct-rate-train": {"path": str(records), "split": "train", "weight": 0.5},
                    "my-hospital": {"path": str(write_bright_dark(tmp_path / "ward7", 8)), "split": "train"},
                }
            }
        )
    )

    # full fine-tuning with a held-out split: final model and periodic checkpoint
    out = tmp_path / "full"
    run_training(
        load_train_config(
            _recipe(tmp_path, tiny_model_dir, [records, registry], out, max_steps=2, save_steps=2),
            ["data.eval_fraction=0.25", "data.weights=[1.0,2.0]"],
        )
    )
    for folder in (final_model_dir(out), out / "checkpoint-2"):
        text, front = _card(folder)
        meta = front["medvl"]
        assert NOTICE in text
        assert meta["history"][0].startswith("assembled with `medvl build`")  # carried over from the start checkpoint
        assert "medvl train" in meta["history"][-1]
        assert [(d["name"], d["file"], d["weight"]) for d in meta["data"]] == [
            ("train", "train.jsonl", 1.0),
            ("ct-rate-train", "train.jsonl", 1.0),
            ("my-hospital", "train.jsonl", 2.0),
        ]
        licences = [d["licence"] for d in meta["data"]]
        assert "(CC0 1.0)" in licences[0] and "CC BY-NC-SA 4.0" in licences[1]
        assert licences[2] is None and "unknown to medvl" in text
        assert meta["recipe"]["parts"]["llm"] == "full" and meta["recipe"]["length"] == "2 steps"
        assert meta["recipe"]["start"] == f"checkpoint {Path(tiny_model_dir).name}"
        assert str(tmp_path) not in text  # no machine paths in a card
    eval_loss = json.loads((out / "metrics.json").read_text())["eval"]["eval_loss"]
    evaluation = read_card_metadata(final_model_dir(out))["evaluation"]
    assert list(evaluation.values())[0]["loss"] == pytest.approx(eval_loss)
    assert f"| loss | {eval_loss:.4g} |" in _card(final_model_dir(out))[0]

    # LoRA from a spec: base_model, adapter, merged model
    out = tmp_path / "lora"
    recipe = _recipe(
        tmp_path,
        tiny_model_dir,
        [records],
        out,
        max_steps=1,
        save_steps=5,
        parts={"llm": {"mode": "lora"}, "connector": {"mode": "full"}},
        lora={"r": 2, "alpha": 4},
    )
    run_training(load_train_config(recipe))
    text, front = _card(final_model_dir(out))
    assert "a LoRA adapter" in text and "| adapter | LoRA r 2, alpha 4" in text and NOTICE in text
    assert front["medvl"]["recipe"]["lora"]["r"] == 2
    merged = tmp_path / "merged"
    assert cli(["export", str(final_model_dir(out)), "--merge-lora", str(merged)]) == 0
    text, front = _card(merged)
    assert front["medvl"]["history"][-1].startswith("LoRA adapter merged")
    assert front["medvl"]["data"][0]["file"] == "train.jsonl"  # carried over from the adapter's card
    assert "| LLM | `qwen2`" in text and NOTICE in text


def test_convert_and_export_llava_write_cards(tmp_path):
    from medvl.cli import main as cli
    from medvl.convert.medmvl import convert_medmvl

    converted = convert_medmvl(fixture_path("medmvl", "medmvl-2d-siglip-mlp", "checkpoint"), tmp_path / "converted")
    text, front = _card(converted)
    assert "converted from the MedM-VL checkpoint `checkpoint`" in front["medvl"]["history"][0]
    assert NOTICE in text and "| image connector | `mlp`, depth 2, activation gelu" in text

    llava = tmp_path / "llava"
    assert cli(["export", str(converted), "--as-llava", str(llava)]) == 0
    text, front = _card(llava)
    assert "stock Hugging Face LLaVA" in text and NOTICE in text
    assert [h.split(" ")[0] for h in front["medvl"]["history"]] == ["converted", "exported"]
