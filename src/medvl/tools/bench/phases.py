"""Per-phase profiles of the MedM-VL workloads, taken with timing hooks (no profiler, no code changes).

Module forward pre-hook / hook pairs time the model, its encoder and its connector
(:class:`ModuleTimer`); a ``TrainerCallback`` splits each training step into data, forward parts,
backward and optimizer (:class:`TrainPhaseTimer`); :class:`DecodePhaseTimer` splits ``generate`` calls
into preprocessing, prefill, decode forwards and the time between them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

if TYPE_CHECKING:
    from medvl.models import MedVLForConditionalGeneration

# the phases of a training step, in the order of the table (see TrainPhaseTimer)
TRAIN_PHASES = ("data", "encoder", "connector", "llm_forward", "backward", "optimizer", "other")


class ModuleTimer:
    """Wall time spent inside the forward of some modules (forward pre-hook / hook pairs).

    Args:
        modules: name -> module to time (None: not present, counted as 0 s).
    """

    def __init__(self, modules: dict[str, torch.nn.Module | None]):
        self.seconds: dict[str, float] = {name: 0.0 for name in modules}
        self.calls: dict[str, list[tuple[float, float]]] = {name: [] for name in modules}
        self._start: dict[str, float] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for name, module in modules.items():
            if module is None:
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name), always_call=True))

    def _pre(self, name: str) -> Callable[[torch.nn.Module, Any], None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name: str) -> Callable[[torch.nn.Module, Any, Any], None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            end = time.perf_counter()
            start = self._start.pop(name, end)
            self.seconds[name] += end - start
            self.calls[name].append((start, end))

        return hook

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()


def media_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module | None]:
    """The modules a workload's profile times: ``model``, its media ``encoder`` and ``connector``.

    Args:
        model: a ``MedVLForConditionalGeneration``, possibly wrapped (PEFT, DDP).
    """
    from medvl.train.parts import unwrap_model

    base = cast("MedVLForConditionalGeneration", unwrap_model(model))
    encoder = base.vision_tower if base.vision_tower is not None else base.volume_encoder
    connector = base.image_connector if base.vision_tower is not None else base.volume_connector
    return {"model": base, "encoder": encoder, "connector": connector}


class TrainPhaseTimer(TrainerCallback):
    """Per-step phases of the HF Trainer loop: data (batch fetch + collate, between steps),
    forward (model, with encoder / connector / LLM from module hooks), backward + clip,
    optimizer step; plus the loop's start and end."""

    def __init__(self) -> None:
        self.modules: ModuleTimer | None = None
        self.train_begin = self.train_end = 0.0
        self.steps: list[dict[str, float]] = []
        self._last = 0.0
        self._begin = 0.0
        self._pre_opt = 0.0
        self._step: dict[str, float] = {}
        self._forward_mark: dict[str, float] = {}

    def _module_seconds(self) -> dict[str, float]:
        assert self.modules is not None, "on_train_begin installs the module timer"
        return self.modules.seconds

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kw: Any,
    ) -> None:
        assert model is not None, "the Trainer passes its model to callbacks"
        self.modules = ModuleTimer(media_modules(model))
        self._forward_mark = dict(self.modules.seconds)
        self.train_begin = self._last = time.perf_counter()

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        now = time.perf_counter()
        seconds = self._module_seconds()
        # a lazy feature cache encodes new files while the batch is fetched: part of "data"
        data_encoder = seconds["encoder"] - self._forward_mark.get("encoder", 0.0)
        self._step = {"start": self._last, "data": now - self._last, "data_encoder": data_encoder}
        self._begin = now
        self._forward_mark = dict(seconds)

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        now = time.perf_counter()
        seconds = self._module_seconds()
        fwd = {k: seconds[k] - self._forward_mark[k] for k in self._forward_mark}
        self._step.update(
            encoder=fwd["encoder"],
            connector=fwd["connector"],
            llm_forward=fwd["model"] - fwd["encoder"] - fwd["connector"],
            backward=(now - self._begin) - fwd["model"],
        )
        self._pre_opt = now

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._step["optimizer"] = time.perf_counter() - self._pre_opt

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        now = time.perf_counter()
        self._step["step"] = now - self._step["start"]
        self._step["other"] = self._step["step"] - sum(
            self._step.get(k, 0.0) for k in ("data", "encoder", "connector", "llm_forward", "backward", "optimizer")
        )
        self.steps.append(self._step)
        self._last = now
        self._forward_mark = dict(self._module_seconds())

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.train_end = time.perf_counter()
        if self.modules is not None:
            self.modules.remove()


def summarize_train_steps(steps: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Totals and fractions per phase over the steps (``backward`` includes gradient clipping;
    ``other``: scheduler, zero_grad, logging).

    Args:
        steps: :attr:`TrainPhaseTimer.steps`.
    """
    total = sum(s["step"] for s in steps)
    phases = {p: sum(s.get(p, 0.0) for s in steps) for p in TRAIN_PHASES}
    return {
        "seconds": phases,
        "fraction": {p: (v / total if total else None) for p, v in phases.items()},
        # encoder forwards of a lazy feature cache during batch fetching (included in "data")
        "data_encoder_seconds": sum(s.get("data_encoder", 0.0) for s in steps),
        "step_seconds": [s["step"] for s in steps],
        "median_step_seconds": statistics.median(s["step"] for s in steps),
    }


class DecodePhaseTimer:
    """Phases of ``generate`` calls (one per batch, appended to ``batches`` as ``{"start", "wall",
    "calls"}``): preprocessing (prompt rendering, image loading and processing, outside
    any forward), prefill forward (media encoding included), decode forwards, and the time between
    decode forwards (sampling, stopping criteria, cache bookkeeping: "outside the forward").

    Args:
        model: the model whose forwards are timed.
    """

    def __init__(self, model: torch.nn.Module):
        self.modules = ModuleTimer(media_modules(model))
        self.batches: list[dict[str, Any]] = []

    def __enter__(self) -> DecodePhaseTimer:
        self.batches = []
        return self

    def __exit__(self, *exc: object) -> None:
        self.modules.remove()

    def summary(self, new_tokens_per_row: int, rows: int) -> dict[str, Any]:
        """Seconds per phase and per generated token.

        Args:
            new_tokens_per_row: tokens generated per prompt.
            rows: prompts generated.
        """
        pre = prefill = decode = between = tail = 0.0
        decode_steps = 0
        for b in self.batches:
            calls = b["calls"]
            if not calls:
                continue
            pre += calls[0][0] - b["start"]
            prefill += calls[0][1] - calls[0][0]
            for (_, e0), (s1, e1) in zip(calls, calls[1:]):
                between += s1 - e0
                decode += e1 - s1
                decode_steps += 1
            tail += b["start"] + b["wall"] - calls[-1][1]
        total = sum(b["wall"] for b in self.batches)
        tokens = new_tokens_per_row * rows
        return {
            "seconds": {
                "preprocess": pre,
                "prefill": prefill,
                "decode_forward": decode,
                "outside_forward_between_steps": between,
                "after_last_forward": tail,
                "total": total,
            },
            "decode_steps": decode_steps,
            "decode_forward_ms_per_step": 1e3 * decode / decode_steps if decode_steps else None,
            "outside_forward_ms_per_step": 1e3 * between / decode_steps if decode_steps else None,
            "outside_forward_ms_per_token": 1e3 * (between + tail) / tokens if tokens else None,
        }
