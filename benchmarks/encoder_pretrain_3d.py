"""Stage-0 search for the 3D quickstart: how fast does a from-scratch 3D stem learn the CT phantoms'
nodules as a multi-label classifier (max over tokens -> linear -> BCE)?

The data are the quickstart's own (``synthesize`` + the model's volume processor, 1500 cases at
64x64x32, 5.25 x 5.25 x 7.5 mm), preprocessed once into ``--data/tensors.pt``; the encoder is the
quickstart recipe's Vit3D with the stem under test. Each run prints validation accuracy per label
(``FINDING_LABELS`` order: nodule, 1/2/3 nodules, nodule left/right, effusion left/right, heart) and
the training-set nodule accuracies, every ``--eval-every`` steps.

    python benchmarks/encoder_pretrain_3d.py --data /tmp/d1500 --widths 8,16,32,64 --pool 2,1,1 \
        --batch 8 --steps 2000 --seed 2

Findings of 2026-11-28 (benchmarks/README.md, "Quickstart recipe"): nodule detection has an onset
(a plateau at the prior, then learning) that came after ~12-16 thousand samples; batch 8 reached
it in fewer seconds than 16 or 4; a 2-slice input max pool (``--pool 2,1,1``) came earlier than
the plain stem in both paired seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from medvl.build import ModelSpec, build_model  # noqa: E402
from medvl.tools.quickstart.recipe import RECIPES  # noqa: E402
from medvl.tools.quickstart.training import RunData, encoder_items, write_tokenizer_corpus  # noqa: E402
from medvl.utils.config import from_dict  # noqa: E402


def _spec(data: Path, widths: list[int], pool: list[int] | None) -> dict:
    spec = json.loads(json.dumps(RECIPES["3d"].model))
    spec["tokenizer"]["corpus"] = str(data / "corpus.txt")
    spec["volume"]["config"]["conv_stem"] = widths
    spec["volume"]["config"]["conv_stem_pool"] = pool
    return spec


def prepare(data: Path, n: int, seed: int) -> None:
    """Synthesize the quickstart's 3D set and keep its processed volumes and labels."""
    from medvl.tools.synth.dataset import synthesize

    recipe = RECIPES["3d"]
    synthesize("3d", n, seed, data / "data", geometry=recipe.geometry, workers=2, train_format="grouped")
    write_tokenizer_corpus(data / "data", data / "corpus.txt")
    _, processor = build_model(from_dict(ModelSpec, _spec(data, [8], None), prefix="spec."))
    run = RunData(data / "data", "3d", data / "data/train.jsonl", data / "data/validation.jsonl")
    tensors = {}
    for split in ("train", "validation"):
        load, labels = encoder_items(run, split, processor)
        tensors[split] = (load(range(labels.shape[0])).half(), labels)
    torch.save(tensors, data / "tensors.pt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder for the preprocessed set (made on first use)")
    p.add_argument("--n", type=int, default=1500)
    p.add_argument("--widths", default="8,16,32,64")
    p.add_argument("--pool", default="", help="stem input max pool, e.g. 2,1,1")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250)
    a = p.parse_args()
    torch.set_num_threads(1)
    data = Path(a.data)
    if not (data / "tensors.pt").exists():
        prepare(data, a.n, 0)
    tensors = torch.load(data / "tensors.pt")
    (x_train, y_train), (x_val, y_val) = tensors["train"], tensors["validation"]

    torch.manual_seed(a.seed)
    pool = [int(v) for v in a.pool.split(",")] if a.pool else None
    model, _ = build_model(
        from_dict(ModelSpec, _spec(data, [int(v) for v in a.widths.split(",")], pool), prefix="spec.")
    )
    encoder = model.volume_encoder
    head = nn.Linear(encoder.config.hidden_size, y_train.shape[1])
    nn.init.normal_(head.weight, 0, 0.02)
    nn.init.zeros_(head.bias)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    warmup = 30  # as medvl.train.encoder_pretrain: linear warm-up, cosine to 10 %
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.1 + 0.45 * (1 + math.cos(math.pi * min(1, (s - warmup) / max(1, a.steps - warmup))))
        ),
    )

    def features(x: torch.Tensor) -> torch.Tensor:
        return encoder(x, output_hidden_states=True).hidden_states[0].max(dim=1).values

    @torch.no_grad()
    def accuracy(x: torch.Tensor, y: torch.Tensor) -> list[float]:
        encoder.eval()
        correct = torch.zeros(y.shape[1])
        for b in range(0, len(y), 64):
            correct += ((head(features(x[b : b + 64].float())) > 0) == (y[b : b + 64] > 0.5)).float().sum(0)
        encoder.train()
        return [round(float(c) / len(y), 3) for c in correct]

    rng, order, start = random.Random(a.seed), [], time.time()
    for step in range(a.steps):
        if len(order) < a.batch:
            more = list(range(len(y_train)))
            rng.shuffle(more)
            order += more
        idx, order = order[: a.batch], order[a.batch :]
        loss = nn.functional.binary_cross_entropy_with_logits(head(features(x_train[idx].float())), y_train[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            print(
                json.dumps(
                    {
                        "step": step + 1,
                        "s": round(time.time() - start),
                        "loss": round(loss.item(), 3),
                        "val": accuracy(x_val, y_val),
                        "train_nodule": accuracy(x_train[:300], y_train[:300])[:6],
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
