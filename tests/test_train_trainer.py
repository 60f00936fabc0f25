"""MedVLTrainer on a tiny stock LLaVA: learning, per-part learning rates, frozen parts, atomic
checkpoints under a crash while saving, LoRA checkpoints and exact resume."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

try:  # tests/ as a package or as a plain folder on sys.path
    from tests._train_toy import ToySet, collate, tiny_llava
except ImportError:
    from _train_toy import ToySet, collate, tiny_llava
from medvl.train.checkpoint import clean_staging
from medvl.train.config import LoraSettings, PartConfig, PartsConfig
from medvl.train.parts import apply_parts, snapshot
from medvl.train.trainer import MedVLTrainer


def _args(out, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        max_steps=8,
        save_steps=4,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        warmup_steps=0.25,
        lr_scheduler_type="cosine",
        seed=7,
    )
    base.update(kw)
    return TrainingArguments(**base)


def _trainer(out, parts, lora=None, trainer_cls=MedVLTrainer, **kw):
    model = apply_parts(tiny_llava(), parts, lora or LoraSettings(r=4, alpha=8, dropout=0.1))
    return trainer_cls(model=model, args=_args(out, **kw), train_dataset=ToySet(64), data_collator=collate, parts=parts)


def test_learns_and_keeps_frozen_parts_and_part_lrs(tmp_path):
    parts = PartsConfig(llm=PartConfig("full"), vision=PartConfig("frozen"), connector=PartConfig("full", lr=1e-2))
    trainer = _trainer(tmp_path, parts, max_steps=40, save_steps=100)
    seen = []

    class RecordLr(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            seen.append({g["part"]: g["lr"] for g in optimizer.param_groups})

    trainer.add_callback(RecordLr())
    vision_before = snapshot(trainer.model, "vision")
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3
    vision_after = snapshot(trainer.model, "vision")
    assert all(torch.equal(vision_before[n], vision_after[n]) for n in vision_before)
    # the schedule scales every group alike: the connector keeps 1e-2 / 3e-3 times the LLM's rate
    by_part = {g["part"]: g for g in trainer.optimizer.param_groups}
    assert by_part["connector"]["initial_lr"] == pytest.approx(1e-2)
    assert by_part["llm"]["initial_lr"] == pytest.approx(3e-3)
    assert "vision" not in by_part
    # warm-up then cosine decay, every group scaled alike
    mid = seen[20]
    assert 0 < mid["llm"] < 3e-3 and mid["connector"] / mid["llm"] == pytest.approx(1e-2 / 3e-3)
    assert max(s["llm"] for s in seen) == pytest.approx(3e-3)


class _CrashOnSecondSave(MedVLTrainer):
    """Fault injection: the process dies after the model was written, before the optimizer state."""

    def _save_optimizer_and_scheduler(self, output_dir):
        if self.state.global_step == 8:
            raise KeyboardInterrupt("simulated crash while saving")
        super()._save_optimizer_and_scheduler(output_dir)


def test_crash_while_saving_leaves_no_complete_looking_checkpoint(tmp_path):
    parts = PartsConfig(llm=PartConfig("full"), connector=PartConfig("full"))
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path, parts, trainer_cls=_CrashOnSecondSave).train()
    names = sorted(os.listdir(tmp_path))
    assert "checkpoint-4" in names and "checkpoint-8" not in names
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "model.safetensors"} <= set(
        os.listdir(tmp_path / "checkpoint-4")
    )
    assert [p.name for p in clean_staging(tmp_path)] == [".staging-checkpoint-8"]


def test_lora_checkpoint_resume_matches_uninterrupted_run(tmp_path):
    parts = PartsConfig(llm=PartConfig("lora"), connector=PartConfig("full", lr=1e-2))
    full = _trainer(tmp_path / "a", parts)
    full.train()
    ref = [h["loss"] for h in full.state.log_history if "loss" in h]

    ckpt = tmp_path / "a" / "checkpoint-4"
    files = set(os.listdir(ckpt))
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt"} <= files
    assert "model.safetensors" not in files  # adapters, not a merged copy
    from safetensors import safe_open

    with safe_open(str(ckpt / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in k for k in keys) and any("multi_modal_projector" in k for k in keys)

    resumed = _trainer(tmp_path / "a", parts)  # fresh random init; everything comes from the checkpoint
    resumed.train(resume_from_checkpoint=str(ckpt))
    after = [h["loss"] for h in resumed.state.log_history if "loss" in h]
    assert after[-4:] == pytest.approx(ref[-4:], rel=1e-4)


def test_gradient_checkpointing_bf16_with_frozen_llm_trains_connector(tmp_path):
    # Stage 1: frozen LLM (and embeddings), checkpointed layers; the connector still gets gradients.
    parts = PartsConfig(llm=PartConfig("frozen"), vision=PartConfig("frozen"), connector=PartConfig("full"))
    trainer = _trainer(
        tmp_path,
        parts,
        max_steps=3,
        save_steps=100,
        bf16=True,
        use_cpu=True,
        activation_checkpointing=True,
        activation_checkpointing_kwargs={"use_reentrant": False},
    )
    connector = snapshot(trainer.model, "connector")
    llm = snapshot(trainer.model, "llm")
    trainer.train()
    assert trainer.model.is_activation_checkpointing
    after = snapshot(trainer.model, "connector")
    assert all(not torch.equal(connector[n], after[n]) for n in connector if n.endswith("weight"))
    assert all(torch.equal(llm[n], p) for n, p in snapshot(trainer.model, "llm").items())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    # Every supervised token weighs the same (num_items_in_batch): 2 x 4 accumulated == 1 x 8.
    parts = PartsConfig(llm=PartConfig("full"), connector=PartConfig("full"))
    results = []
    for batch, accum in ((8, 1), (4, 2)):
        trainer = _trainer(
            tmp_path / f"{batch}x{accum}",
            parts,
            max_steps=3,
            save_steps=100,
            warmup_steps=0,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accum,
        )
        trainer.train()
        results.append(snapshot(trainer.model, "connector"))
    assert all(torch.allclose(results[0][n], results[1][n], atol=1e-5) for n in results[0])


def test_a_batch_whose_samples_were_all_skipped_is_stepped_over(tmp_path):
    """data.on_error=skip drops bad samples; a batch left with zero rows gives a zero loss that
    reaches every trainable parameter (zero gradients) instead of crashing the model."""
    from medvl.data.collator import PaddedCollator

    parts = PartsConfig(llm=PartConfig("full"), vision=PartConfig("frozen"), connector=PartConfig("full"))
    trainer = _trainer(tmp_path, parts)
    empty = PaddedCollator(pad_token_id=0)([None, None])
    loss = trainer.compute_loss(trainer.model, empty)
    assert float(loss) == 0.0
    loss.backward()
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for p in trainable)
