"""``train.compile=true``: the LLM decoder is torch.compiled in place and training gives the same
losses as eager training (fp32 rounding), with checkpoint names unchanged."""

from __future__ import annotations

import json

import pytest
import torch

try:  # tests/ as a package or as a plain folder on sys.path
    from tests._train_toy import write_bright_dark
except ImportError:
    from _train_toy import write_bright_dark
from medvl.train.config import TrainConfig
from medvl.train.run import run_training
from medvl.utils.config import from_dict


def _compile_usable() -> str | None:
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(2))
    except Exception as err:  # no C++ compiler, unsupported platform, ...
        return f"torch.compile is unusable here: {type(err).__name__}: {err}"
    return None


@pytest.mark.slow
def test_compiled_llm_trains_to_the_same_losses(tmp_path, tiny_model_dir, monkeypatch):
    reason = _compile_usable()
    if reason:
        pytest.skip(reason)
    import medvl.train.run as run_module
    from medvl.train.parts import unwrap_model

    compile_calls = []  # per compile_llm call: did the decoder really get a compiled forward?
    real_compile_llm = run_module.compile_llm

    def spy(model):
        real_compile_llm(model)
        compile_calls.append(getattr(unwrap_model(model).get_decoder(), "_compiled_call_impl", None) is not None)

    monkeypatch.setattr(run_module, "compile_llm", spy)
    data = write_bright_dark(tmp_path / "data", 8)
    losses = {}
    for compiled in (False, True):
        out = tmp_path / f"run_{compiled}"
        cfg = from_dict(
            TrainConfig,
            {
                "model": {"path": str(tiny_model_dir)},
                "data": {"train": [str(data)], "max_length": 128},
                "train": {
                    "lr": 5e-3,
                    "batch_size": 4,
                    "max_steps": 2,
                    "logging_steps": 1,
                    "report_to": [],
                    "progress_bar": False,
                    "save_steps": 1000,
                    "compile": compiled,
                },
                "output": {"dir": str(out)},
            },
        )
        run_training(cfg)
        history = json.loads((out / "metrics.json").read_text())["log_history"]
        losses[compiled] = [h["loss"] for h in history if "loss" in h]
        # in-place compile: the saved weights keep their names (no "_orig_mod.")
        index = out / "model" / "model.safetensors"
        assert index.is_file()
        from safetensors import safe_open

        with safe_open(str(index), "pt") as fh:
            assert not any("_orig_mod" in k for k in fh.keys())
    assert compile_calls == [True]  # the eager run never compiled, the compiled one did
    assert len(losses[False]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
