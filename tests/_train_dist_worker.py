"""Worker for the multi-process training tests (run under torchrun; not collected by pytest).

Usage: torchrun --nproc_per_node 2 tests/_train_dist_worker.py CKPT OUT DEEPSPEED_JSON|none DUMMY(1|0)

Rank 0 sees only samples with an image, rank 1 only text-only samples: without dummy media the
ranks run different modules and ZeRO-3 hangs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments

from medvl.commands.train import leave_process_group
from medvl.train.config import LoraSettings, PartConfig, PartsConfig
from medvl.train.lora import load_auto_model
from medvl.train.parts import apply_parts
from medvl.train.run import save_final_model
from medvl.train.trainer import MedVLTrainer, cpu_distributed_kwargs


class RankData(torch.utils.data.Dataset):
    """Image samples on rank 0, text-only samples elsewhere."""

    def __init__(self, config, with_image: bool, n: int = 8):
        self.config, self.with_image, self.n = config, with_image, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        body = [11 + i % 5, 12, 13, 14]
        item = {}
        if self.with_image:
            ids = [5] + [cfg.image_token_id] * cfg.num_image_tokens + body
            size = cfg.vision_config.image_size
            item["pixel_values"] = torch.full((1, 3, size, size), 0.1 * (i % 3))
        else:
            ids = [5, 6] + body
        ids = torch.tensor(ids)
        labels = torch.full_like(ids, -100)
        labels[-3:] = ids[-3:]
        item.update(input_ids=ids, labels=labels)
        return item


def collate(samples):
    length = max(len(s["input_ids"]) for s in samples)
    out = {"input_ids": [], "labels": [], "attention_mask": []}
    for s in samples:
        pad = length - len(s["input_ids"])
        out["input_ids"].append(torch.cat([s["input_ids"], torch.zeros(pad, dtype=torch.long)]))
        out["labels"].append(torch.cat([s["labels"], torch.full((pad,), -100)]))
        out["attention_mask"].append(
            torch.cat([torch.ones(len(s["input_ids"]), dtype=torch.long), torch.zeros(pad, dtype=torch.long)])
        )
    batch = {k: torch.stack(v) for k, v in out.items()}
    if "pixel_values" in samples[0]:
        batch["pixel_values"] = torch.cat([s["pixel_values"] for s in samples])
    return batch


def main() -> None:
    ckpt, out, ds_config, dummy = sys.argv[1:5]
    torch.manual_seed(0)
    model = load_auto_model(ckpt)
    parts = PartsConfig(llm=PartConfig("full"), vision=PartConfig("full"), connector=PartConfig("full", lr=1e-3))
    model = apply_parts(model, parts, LoraSettings())
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=2,
        learning_rate=1e-4,
        max_steps=3,
        save_steps=3,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        deepspeed=None if ds_config == "none" else ds_config,
        ddp_timeout=60,
        seed=0,
        **cpu_distributed_kwargs(deepspeed=ds_config != "none"),
    )
    rank = int(os.environ.get("RANK", "0"))
    trainer = MedVLTrainer(
        model=model,
        args=args,
        train_dataset=RankData(model.config, with_image=rank == 0),
        data_collator=collate,
        parts=parts,
    )
    if dummy == "0":
        trainer._media_slots = []  # reproduce the hang the dummy media prevent
    trainer.train()
    save_final_model(trainer, None, Path(out), None)  # gathers the ZeRO-3 shards
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"losses": losses, "world_size": args.world_size}, f)
    leave_process_group()  # as `medvl train` does: no gloo threads left to interpreter teardown


if __name__ == "__main__":
    main()
