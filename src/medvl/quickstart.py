"""``medvl quickstart``: synthetic data -> a small model from scratch -> training -> held-out evaluation.

What it does, in order (everything under ``--out``):

1. ``data/``: a synthetic phantom set (:mod:`medvl.data.synth`), train/validation/test by case; the
   training records are conversations of independent questions (``train_format="grouped"``).
2. A byte-level BPE tokenizer trained on the training corpus, a small SigLIP-style 2D tower with a
   convolutional stem (or a 3D ViT), a small Qwen2-style LLM and a max-pooling connector, all built
   from configs by :func:`medvl.build.build_model` (random weights; nothing is downloaded).
3. Stage 0 with :func:`medvl.train.run_training` (``train.stage: encoder_pretrain``, exactly what
   ``medvl train`` runs): the encoder is pretrained on the training cases' findings (the label
   tables ``synth`` writes) as a multi-label classifier; its checkpoint goes to ``run_*/stage0/model``.
4. Instruction tuning with :func:`medvl.train.run_training` from that checkpoint (``model.path``):
   LLM and connector trained, the encoder frozen and run once per image/volume
   (``data.cache_encoder_features``).
5. The *blind baseline*: the same model and both stages with every image replaced by a blank one.
   It measures what the questions give away without looking; the gap to it is what vision adds.
6. Evaluation on the held-out test split through :func:`medvl.inference.generate` (the same path
   as ``medvl infer``/``eval``): closed-question accuracy per question type and language, report
   BLEU/ROUGE-L; ``metrics.json``, ``loss_curve.png``, the checkpoint in ``model/``, a table.

Why the stem, stage 0 and max pooling: trained only through the LLM, a from-scratch encoder gets its
signal through attention that starts uniform over the image tokens, i.e. through a mean, and small
nodules (a few of 64 patches) stayed at chance for 1500 steps here and 3000 on a GPU. A classifier
head on the max over the tokens learns them in a few hundred steps, but only with a local detector
(a normalised convolutional stem: a 16 px linear patch embedding did not); the LLM then learns to
read 4 max-pooled tokens in a few hundred more. The recipe (model sizes, steps, learning rates)
lives in :data:`RECIPES`; ``benchmarks/quickstart_recipes.py`` is the search harness and
``benchmarks/README.md`` has the measurements.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medvl.data.synth import Geometry2D, Geometry3D, synthesize
from medvl.data.synth_text import CLOSED_TYPES

logger = logging.getLogger(__name__)

KINDS = ("2d", "3d")


@dataclass
class Recipe:
    """Everything the quickstart varies between 2D and 3D.

    Args:
        n_cases: synthetic cases (80/10/10 split).
        geometry: how the phantoms are rendered (pixel/voxel spacing in mm).
        model: a ``medvl.build.ModelSpec`` as a mapping (tokenizer corpus filled in at run time).
        max_steps: optimizer steps of each training run (the model and the blind baseline).
        batch_size: samples per step.
        lr: peak learning rate of instruction tuning (cosine schedule with warm-up).
        train_format: "grouped" (training conversations of independent questions, one image pass
            supervises up to three answers) or "single" (see ``medvl data synth --train-format``).
        encoder_pretrain: stage 0 (``train.stage: encoder_pretrain``) settings: steps, batch_size, lr,
            warmup_steps (default 30); or None to train the encoder only through the LLM. The head
            reads the model's own feature layer (an optional ``feature_layer`` must match it).
        encoder_mode: the encoder's mode in instruction tuning ("frozen" after stage 0, or "full").
        volume_cache: 3D: preprocess every volume once (``medvl data prepare``) for both stages.
    """

    n_cases: int
    geometry: Any
    model: dict[str, Any]
    max_steps: int
    batch_size: int = 16
    lr: float = 1e-3
    warmup_ratio: float = 0.03
    num_workers: int = 0
    train_format: str = "grouped"
    encoder_pretrain: dict[str, Any] | None = None
    encoder_mode: str = "frozen"
    volume_cache: bool = False


_LLM = {
    "model_type": "qwen2",
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}

RECIPES: dict[str, Recipe] = {
    # 128 px radiographs at 2.8 mm/px (a 36 cm field): a 5 mm nodule is ~2 px, a 30 mm one ~11 px. A
    # convolutional stem instead of the 16 px linear patch embedding (small nodules need a local
    # detector). Stage 0 pretrains the tower on the findings reading the stem's tokens (layer 0):
    # read after the transformer block, nodules stayed at chance in 800-1200 steps (0.52-0.55 vs
    # 0.86). Instruction tuning reads the same tokens, frozen, through a 4x4 max pool: 2x2 = 4
    # image tokens, the left and right lung apart.
    "2d": Recipe(
        n_cases=3000,
        geometry=Geometry2D(size=128, spacing=2.8),
        model={
            "llm": {"config": _LLM},
            "vision": {
                "config": {
                    "model_type": "siglip_vision_model",
                    "image_size": 128,
                    "patch_size": 16,
                    "hidden_size": 128,
                    "intermediate_size": 512,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 4,
                },
                "conv_stem": [16, 32, 64, 128],
                "feature_layer": 0,
                "connector": {"type": "spatial_pool", "pool_stride": [1, 4, 4], "pool": "max", "depth": 2},
            },
            "tokenizer": {"source": "train", "vocab_size": 1024},
        },
        max_steps=1400,
        encoder_pretrain={"steps": 1000, "batch_size": 16, "lr": 1e-3, "feature_layer": 0},
    ),
    # 64x64x32 volumes at 5.25 x 5.25 x 7.5 mm; the 3D ViT sees (D, H, W) = (32, 64, 64) through the 2D
    # recipe's design in 3D: a conv stem to a (8, 4, 4) token grid, stage 0, and a (8, 2, 2) max pool
    # to 2x2 tokens (W is the patient's left-right). The stem starts with a 2-slice maximum (a thin
    # slab MIP: small nodules keep their contrast) and is narrower than the 2D one (the 3D stem
    # costs ~8x per image): stage 0 then affords batch 8 x 2200 steps, and the nodule detector's
    # onset (a plateau, then learning) came in 1250-1500 steps in the runs measured. Volumes are
    # preprocessed once into a `medvl data prepare` cache, and instruction tuning reads the frozen
    # encoder's cached outputs (data.cache_encoder_features).
    "3d": Recipe(
        n_cases=1500,
        geometry=Geometry3D(shape=(64, 64, 32), spacing=(5.25, 5.25, 7.5)),
        model={
            "llm": {"config": _LLM},
            "volume": {
                "encoder": "vit3d",
                "config": {
                    "image_size": [32, 64, 64],
                    "patch_size": [4, 16, 16],
                    "in_channels": 1,
                    "hidden_size": 128,
                    "intermediate_size": 512,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 4,
                    "norm_first": True,
                    "final_norm": True,
                    "conv_stem": [8, 16, 32, 64],
                    "conv_stem_pool": [2, 1, 1],
                },
                "feature_layer": 0,
                "connector": {"type": "spatial_pool", "pool_stride": [8, 2, 2], "pool": "max", "depth": 2},
                "processor": {"window": "lung", "crop_foreground": False},
            },
            "tokenizer": {"source": "train", "vocab_size": 1024},
        },
        max_steps=800,
        encoder_pretrain={"steps": 2200, "batch_size": 8, "lr": 1e-3, "feature_layer": 0},
        volume_cache=True,
    ),
}


# ---------------------------------------------------------------------------- data
def _write_corpus(data_dir: Path, path: Path) -> None:
    """Questions, answers and reports of the training split, one per line (the tokenizer's corpus)."""
    lines = []
    for line in (data_dir / "train.jsonl").read_text(encoding="utf-8").splitlines():
        for m in json.loads(line)["messages"]:
            lines.append(m["content"].replace("<image>", "").replace("<volume>", "").strip())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def blank_name(kind: str) -> str:
    """File name of the blind baseline's blank image / volume inside the data folder.

    Args:
        kind: "2d" or "3d".
    """
    return "blank.png" if kind == "2d" else "blank.nii.gz"


def write_blind_split(data_dir: Path, split: str, kind: str) -> Path:
    """A copy of ``split.jsonl`` whose every image/volume is one blank file (same size and geometry),
    and likewise of the split's label table (``split_labels_blind.csv``) if there is one.

    Args:
        data_dir: the synthetic set.
        split: "train", "validation" or "test".
        kind: "2d" or "3d".
    """
    key = "images" if kind == "2d" else "volumes"
    records = [json.loads(line) for line in (data_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    blank = data_dir / blank_name(kind)
    if not blank.exists():
        template = data_dir / records[0][key][0]
        if kind == "2d":
            from PIL import Image

            size = Image.open(template).size
            Image.fromarray(np.zeros(size[::-1], dtype=np.uint16)).save(blank)
        else:
            import nibabel as nib

            img = nib.load(template)
            air = np.full(img.shape, -1000, dtype=np.int16)  # nothing but air: no anatomy at all
            nib.save(nib.Nifti1Image(air, img.affine, img.header), str(blank))
    out = data_dir / f"{split}_blind.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        for rec in records:
            rec[key] = [blank.name]
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    table = data_dir / f"{split}_labels.csv"
    if table.exists():  # stage 0's label table: the same labels, every row the blank file
        import csv

        with open(table, encoding="utf-8", newline="") as fh:
            header, *rows = list(csv.reader(fh))
        with open(data_dir / f"{split}_labels_blind.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows([blank.name, *row[1:]] for row in rows)
    return out


# ---------------------------------------------------------------------------- training
@dataclass
class RunData:
    """What one training run reads.

    Args:
        data_dir: the synthetic set (``cases.jsonl`` holds each case's findings and file).
        kind: "2d" or "3d".
        train_file / eval_file: the records of instruction tuning and of its validation loss.
        blank: the blind baseline: stage 0 sees the blank image/volume in place of every case.
        volume_cache: a ``medvl data prepare`` cache of the volumes (3D), or None.
    """

    data_dir: Path
    kind: str
    train_file: Path
    eval_file: Path
    blank: bool = False
    volume_cache: Path | None = None


def _train_job(job: tuple) -> str:
    """Run :func:`_train` in a worker process with its own thread count (parallel mode)."""
    recipe, spec, data, out_dir, seed, threads, progress = job
    import torch

    from medvl.utils.logging import setup_logging

    setup_logging()
    torch.set_num_threads(threads)
    return str(_train(recipe, spec, data, out_dir, seed, progress=progress))


def encoder_items(data: RunData, split: str, processor: Any) -> tuple[Any, Any]:
    """(load_media, labels) of one split's cases, media preprocessed by the model's own processor and
    held in memory as float16: the stage-0 search harness's input (benchmarks/encoder_pretrain_3d.py).
    The quickstart itself trains stage 0 through ``run_training`` (:func:`stage0_config`).

    Args:
        data: the run's data (``blank`` puts the blank file in place of every case).
        split: "train", "validation" or "test".
        processor: the model's ``MedVLProcessor``.
    """
    import torch

    from medvl.data.synth_text import CaseFindings

    cases = [json.loads(line) for line in (data.data_dir / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    cases = [c for c in cases if c["split"] == split]
    labels = torch.tensor([CaseFindings.from_dict(c["findings"]).labels() for c in cases], dtype=torch.float32)
    if data.kind == "2d":
        from medvl.imaging import load_image

        def prepare(path: Path) -> torch.Tensor:
            return processor.image_processor([load_image(path)], return_tensors="pt")["pixel_values"][0]
    else:
        from medvl.imaging import load_volume

        cache = None
        if data.volume_cache is not None:
            from medvl.data.prepare import VolumeCache

            cache = VolumeCache(data.volume_cache)
            cache.check_processor(processor.volume_processor)

        def prepare(path: Path) -> torch.Tensor:
            cached = cache.get(str(path)) if cache is not None else None
            if cached is not None:
                return cached
            return processor.volume_processor([load_volume(path)])["volume_values"][0]

    if data.blank:
        one = prepare(data.data_dir / blank_name(data.kind)).half()
        media = one.unsqueeze(0).expand(len(cases), *one.shape)
    else:
        media = torch.stack([prepare(data.data_dir / c["file"]).half() for c in cases])
    return (lambda idx: media[list(idx)].float()), labels


def stage0_config(
    recipe: Recipe, spec: dict[str, Any], data: RunData, out_dir: Path, seed: int, progress: bool = True
) -> Any:
    """The stage-0 ``TrainConfig`` of one run (what ``medvl train`` would read from a recipe file).

    Args:
        recipe: the quickstart recipe (``encoder_pretrain`` settings).
        spec: the model's build spec (its encoder's feature layer is what the head reads).
        data: the run's data (label tables of the train and validation split; blank ones for blind).
        out_dir: the stage-0 output folder.
        seed: training seed.
        progress: show a progress bar.
    """
    from medvl.train.config import TrainConfig
    from medvl.utils.config import from_dict

    settings = dict(recipe.encoder_pretrain)
    encoder_part = "vision" if data.kind == "2d" else "volume"
    layer = settings.pop("feature_layer", None)
    if layer is not None and layer != spec[encoder_part].get("feature_layer", -1):
        raise ValueError(
            f"recipe.encoder_pretrain.feature_layer={layer}: stage 0 reads the model's own feature "
            f"layer ({encoder_part}.feature_layer={spec[encoder_part].get('feature_layer', -1)})"
        )
    unknown = set(settings) - {"steps", "batch_size", "lr", "warmup_steps"}
    if unknown:
        raise ValueError(
            f"recipe.encoder_pretrain: unknown keys {sorted(unknown)}; valid keys: batch_size, "
            "feature_layer, lr, steps, warmup_steps"
        )
    steps = int(settings["steps"])
    suffix = "_blind" if data.blank else ""
    return from_dict(
        TrainConfig,
        {
            "data": {
                "train": [str(data.data_dir / f"train_labels{suffix}.csv")],
                "eval": [str(data.data_dir / f"validation_labels{suffix}.csv")],
                "volume_cache": str(data.volume_cache) if data.volume_cache is not None else None,
                "num_workers": recipe.num_workers,
            },
            "train": {
                "stage": "encoder_pretrain",
                "parts": {"llm": {"mode": "frozen"}, "connector": {"mode": "frozen"}, encoder_part: {"mode": "full"}},
                # preprocess each image/volume once, not at every step
                "encoder_pretrain": {"cache_media": True},
                "lr": float(settings.get("lr", 1e-3)),
                "max_steps": steps,
                "batch_size": int(settings.get("batch_size", 16)),
                "eval_batch_size": 64,
                "weight_decay": 0.0,
                "max_grad_norm": 1.0,
                # linear warm-up, then cosine decay to 10 % of the peak
                "warmup_ratio": min(1.0, int(settings.get("warmup_steps", 30)) / steps),
                "scheduler": "cosine",
                "hf_args": {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1}},
                "logging_steps": 100,
                "save_steps": 10**9,
                "eval_steps": 10**9,  # validation metrics once, at the end
                "save_total_limit": 1,
                "seed": seed,
                "report_to": [],
                "precision": "fp32",
                "progress_bar": progress,
            },
            "output": {"dir": str(out_dir), "overwrite": True},
        },
    )


def _train(
    recipe: Recipe, spec: dict[str, Any], data: RunData, out_dir: Path, seed: int, progress: bool = True
) -> Path:
    """Stage 0 (encoder pretraining, if the recipe has it) then instruction tuning, both through
    medvl.train.run_training (what ``medvl train`` runs); returns the instruction-tuning output folder."""
    from medvl.build import ModelSpec, build_model
    from medvl.train.config import TrainConfig
    from medvl.train.run import final_model_dir, run_training
    from medvl.utils.config import from_dict

    model, processor = build_model(from_dict(ModelSpec, spec, prefix="model.spec."))
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder_part = "vision" if data.kind == "2d" else "volume"
    model_section: dict[str, Any] = {}
    if recipe.encoder_pretrain:
        t0 = time.time()
        stage0 = run_training(
            stage0_config(recipe, spec, data, out_dir / "stage0", seed, progress), model=model, processor=processor
        )
        result = json.loads((stage0 / "metrics.json").read_text())
        stats = {
            "steps": result["global_step"],
            "seconds": round(time.time() - t0, 1),
            "final_loss": next((h["loss"] for h in reversed(result["log_history"]) if "loss" in h), None),
            "eval": result.get("eval_per_label", {}),
        }
        (out_dir / "encoder_pretrain.json").write_text(json.dumps(stats, indent=2) + "\n")
        logger.info("stage 0 (%s encoder pretraining): %s", "blind" if data.blank else "model", stats)
        # the next stage reads the stage-0 checkpoint, as a user's `medvl train` recipe would
        model_section = {"path": str(final_model_dir(stage0))}
        model = processor = None
    parts = {
        "llm": {"mode": "full"},
        "connector": {"mode": "full"},
        encoder_part: {"mode": recipe.encoder_mode if recipe.encoder_pretrain else "full"},
    }
    cfg = from_dict(
        TrainConfig,
        {
            "model": model_section,
            "data": {
                "train": [str(data.train_file)],
                "eval": [str(data.eval_file)],
                "max_length": 512,
                "num_workers": recipe.num_workers,
                "volume_cache": str(data.volume_cache) if data.volume_cache is not None else None,
                # the frozen encoder runs once per file instead of at every step
                "cache_encoder_features": parts[encoder_part]["mode"] == "frozen",
                # Packing is exact per step (losses equal to 1e-6 over the first 12 steps of this
                # recipe), but it sums in another order, and over 1400 steps that rounding moves a
                # run as a seed would (measured: closed 0.842 packed vs 0.861 padded). The recipe
                # keeps the numerics it was measured with, so `make quickstart` gives the README's numbers.
                "packing": False,
            },
            "train": {
                "stage": "quickstart",
                "parts": parts,
                "lr": recipe.lr,
                "max_steps": recipe.max_steps,
                "batch_size": recipe.batch_size,
                "eval_batch_size": 64,
                "warmup_ratio": recipe.warmup_ratio,
                "scheduler": "cosine",
                "logging_steps": 25,
                "save_steps": 10**9,
                "eval_steps": recipe.max_steps,  # validation loss at the end
                "save_total_limit": 1,
                "seed": seed,
                "report_to": [],
                "precision": "fp32",
                "progress_bar": progress,
            },
            "output": {"dir": str(out_dir), "overwrite": True},
        },
    )
    return run_training(cfg, model=model, processor=processor)


def _prepare_volume_cache(spec: dict[str, Any], data_dir: Path, runs: dict[str, tuple]) -> Path:
    """Preprocess every volume of every run's records once, with the model's own volume processor."""
    from medvl.build import ModelSpec, build_model
    from medvl.data.prepare import prepare_volumes
    from medvl.data.records import load_records
    from medvl.utils.config import from_dict

    _, processor = build_model(from_dict(ModelSpec, spec, prefix="model.spec."))
    records = [r for files in runs.values() for f in files for r in load_records(f)]
    cache = data_dir / "volume_cache"
    summary = prepare_volumes(records, processor.volume_processor, cache, dtype="float16", progress=False)
    logger.info("volume cache: %s", summary)
    return cache


# ---------------------------------------------------------------------------- evaluation
def _normalise(text: str) -> str:
    return text.strip().strip(".。!！ ").lower()


def evaluate_split(model_dir: Path, test_file: Path, *, batch_size: int = 64) -> dict[str, Any]:
    """Answer every test question with ``medvl.inference.generate`` and score it.

    Args:
        model_dir: a checkpoint folder.
        test_file: records (``meta.question_type``, ``meta.answer_type``, ``meta.reference``).
        batch_size: generation batch size.

    Returns:
        per-record predictions and the aggregate scores.
    """
    from medvl.data.records import load_records
    from medvl.inference import generate, load_model

    model, processor = load_model(model_dir)
    records = load_records(test_file)
    closed = [r for r in records if r.meta.get("answer_type") == "CLOSED"]
    reports = [r for r in records if r.meta.get("question_type") == "report"]
    other_open = [
        r for r in records if r.meta.get("answer_type") != "CLOSED" and r.meta.get("question_type") != "report"
    ]
    answers = generate(model, processor, closed + other_open, batch_size=batch_size, max_new_tokens=12, progress=False)
    report_texts = generate(model, processor, reports, batch_size=batch_size, max_new_tokens=96, progress=False)
    rows = []
    for rec, pred in zip(closed + other_open + reports, answers + report_texts):
        ref = rec.meta["reference"]
        rows.append(
            {
                "id": rec.id,
                "question_type": rec.meta["question_type"],
                "answer_type": rec.meta["answer_type"],
                "language": rec.meta["language"],
                "question": rec.messages[0]["content"],
                "reference": ref,
                "prediction": pred,
                "correct": _normalise(pred) == _normalise(ref),
            }
        )
    return {"rows": rows, **score_rows(rows)}


def score_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Closed accuracy (overall, per question type, per language), open exact match, report metrics.

    Args:
        rows: dicts with question_type, answer_type, language, reference, prediction, correct.
    """
    closed = [r for r in rows if r["answer_type"] == "CLOSED"]
    out: dict[str, Any] = {
        "closed_accuracy": float(np.mean([r["correct"] for r in closed])) if closed else None,
        "n_closed": len(closed),
        "per_question_type": {},
        "per_language": {},
    }
    for qtype in sorted({r["question_type"] for r in rows} - {"report"}):
        items = [r["correct"] for r in rows if r["question_type"] == qtype]
        out["per_question_type"][qtype] = {"accuracy": float(np.mean(items)), "n": len(items)}
    for lang in sorted({r["language"] for r in closed}):
        items = [r["correct"] for r in closed if r["language"] == lang]
        out["per_language"][lang] = {"closed_accuracy": float(np.mean(items)), "n": len(items)}
    reports = [r for r in rows if r["question_type"] == "report"]
    out["report"] = report_metrics(reports)
    return out


def report_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """BLEU-4 (sacrebleu, ``zh`` tokenizer for Chinese) and ROUGE-L (rouge-score, jieba for Chinese)
    per language and overall (the mean over items).

    Args:
        rows: report rows (reference, prediction, language).
    """
    from medvl.eval.report_metrics import rouge_score_metrics, sacrebleu_metrics

    result: dict[str, Any] = {"n": len(rows)}
    if not rows:
        return result
    totals = {"bleu4": 0.0, "rougeL": 0.0}
    for lang in sorted({r["language"] for r in rows}):
        items = [r for r in rows if r["language"] == lang]
        preds, refs = [r["prediction"] for r in items], [r["reference"] for r in items]
        bleu = sacrebleu_metrics(preds, refs, tokenize="zh" if lang == "zh" else None)["corpus_bleu"]
        rouge = rouge_score_metrics(preds, refs, lang=lang)["rougeL"]
        result[lang] = {"bleu4": float(bleu), "rougeL": float(rouge), "n": len(items)}
        totals["bleu4"] += bleu * len(items)
        totals["rougeL"] += rouge * len(items)
    # languages weighted by their number of reports
    result.update({k: float(v / len(rows)) for k, v in totals.items()})
    return result


# ---------------------------------------------------------------------------- reporting
def plot_loss_curves(histories: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Training (and validation) loss of each run against the step, one PNG.

    Args:
        histories: run name -> ``trainer.state.log_history``.
        path: output PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, hist), colour in zip(histories.items(), ("tab:blue", "tab:grey", "tab:green")):
        train = [(h["step"], h["loss"]) for h in hist if "loss" in h and "step" in h]
        evals = [(h["step"], h["eval_loss"]) for h in hist if "eval_loss" in h]
        if train:
            ax.plot(*zip(*train), color=colour, label=f"{name} train")
        if evals:
            ax.plot(*zip(*evals), "o--", color=colour, label=f"{name} validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text table: accuracy and blind accuracy per closed question type, then reports.

    Args:
        metrics: the quickstart metrics dict.
    """
    lines = [f"{'question type':<20} {'n':>5} {'accuracy':>9} {'blind':>7}", "-" * 44]
    blind = metrics.get("blind", {}).get("per_question_type", {})
    per_type = metrics["per_question_type"]
    # closed types first (they make up closed_accuracy), then the open ones scored by exact match
    ordered = [q for q in CLOSED_TYPES if q in per_type] + [q for q in per_type if q not in CLOSED_TYPES]
    for qtype in ordered:
        v = per_type[qtype]
        b = blind.get(qtype, {}).get("accuracy")
        name = qtype if qtype in CLOSED_TYPES else f"{qtype} (open)"
        lines.append(f"{name:<20} {v['n']:>5} {v['accuracy']:>9.3f} {'' if b is None else f'{b:.3f}':>7}")
    lines.append("-" * 44)
    b = metrics.get("blind_closed_accuracy")
    lines.append(
        f"{'closed (all)':<20} {metrics['n_closed']:>5} {metrics['closed_accuracy']:>9.3f} "
        f"{'' if b is None else f'{b:.3f}':>7}"
    )
    rep = metrics.get("report", {})
    if rep.get("n"):
        lines.append(f"{'report BLEU-4':<20} {rep['n']:>5} {rep['bleu4']:>9.2f}")
        lines.append(f"{'report ROUGE-L':<20} {rep['n']:>5} {rep['rougeL']:>9.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- entry point
def run_quickstart(
    kind: str = "2d",
    out: str | Path = "runs/quickstart",
    *,
    n_cases: int | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    blind: bool = True,
    workers: int | None = None,
    recipe: Recipe | None = None,
    parallel: bool | None = None,
) -> dict[str, Any]:
    """Run the whole quickstart and return the metrics (also written to ``out/metrics.json``).

    Args:
        kind: "2d" (radiographs) or "3d" (CT volumes).
        out: output folder (``data/``, ``model/``, ``metrics.json``, ``loss_curve.png``, runs).
        n_cases: override the recipe's number of synthetic cases.
        max_steps: override the recipe's optimizer steps per training run.
        seed: data and training seed.
        blind: also train and evaluate the blind baseline.
        workers: rendering processes (default: the CPU count, at most 4).
        recipe: a whole custom recipe (n_cases / max_steps still override it).
        parallel: train the model and the blind baseline at the same time in two processes with
            half the CPU threads each (default: when there is a blind run and >= 2 CPUs). Models
            this small use one core far better than two, so this nearly halves the wall time. The
            workers are spawned: a calling script needs the ``if __name__ == "__main__":`` guard.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid choices: {', '.join(KINDS)}")
    recipe = recipe or RECIPES[kind]
    recipe = replace(recipe, n_cases=n_cases or recipe.n_cases, max_steps=max_steps or recipe.max_steps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    timings: dict[str, float] = {}

    data_dir = out / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    workers = workers or min(4, os.cpu_count() or 1)
    summary = synthesize(
        kind,
        recipe.n_cases,
        seed,
        data_dir,
        geometry=recipe.geometry,
        workers=workers,
        train_format=recipe.train_format,
    )
    timings["data_s"] = time.time() - t_start

    corpus = out / "tokenizer_corpus.txt"
    _write_corpus(data_dir, corpus)
    spec = json.loads(json.dumps(recipe.model))
    spec["tokenizer"]["corpus"] = str(corpus)
    spec["seed"] = seed

    runs = {"model": (data_dir / "train.jsonl", data_dir / "validation.jsonl", data_dir / "test.jsonl")}
    if blind:
        runs["blind"] = tuple(write_blind_split(data_dir, s, kind) for s in ("train", "validation", "test"))
    cache = None
    if kind == "3d" and recipe.volume_cache:
        t1 = time.time()
        cache = _prepare_volume_cache(spec, data_dir, runs)
        timings["volume_cache_s"] = time.time() - t1
    results: dict[str, dict[str, Any]] = {}
    histories: dict[str, list] = {}
    cpus = os.cpu_count() or 1
    parallel = (len(runs) > 1 and cpus >= 2) if parallel is None else parallel
    t0 = time.time()
    if parallel:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, cpus // len(runs))
        jobs = [
            (
                recipe,
                spec,
                RunData(data_dir, kind, files[0], files[1], blank=name == "blind", volume_cache=cache),
                out / f"run_{name}",
                seed,
                threads,
                name == "model",
            )
            for name, files in runs.items()
        ]
        # spawn, not fork: the parent may already have started torch's thread pools
        with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            run_dirs = dict(zip(runs, (Path(d) for d in pool.map(_train_job, jobs))))
        timings["train_s"] = time.time() - t0
    else:
        run_dirs = {}
        for name, files in runs.items():
            t1 = time.time()
            run_dirs[name] = _train(
                recipe,
                spec,
                RunData(data_dir, kind, files[0], files[1], blank=name == "blind", volume_cache=cache),
                out / f"run_{name}",
                seed,
            )
            timings[f"train_{name}_s"] = time.time() - t1
    for name, (_, _, test_file) in runs.items():
        histories[name] = json.loads((run_dirs[name] / "metrics.json").read_text())["log_history"]
        t1 = time.time()
        results[name] = evaluate_split(run_dirs[name] / "model", test_file)
        timings[f"eval_{name}_s"] = time.time() - t1

    final = out / "model"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(out / "run_model" / "model", final)
    plot_loss_curves(histories, out / "loss_curve.png")

    main = results["model"]
    metrics: dict[str, Any] = {
        "kind": kind,
        "closed_accuracy": main["closed_accuracy"],
        "blind_closed_accuracy": results["blind"]["closed_accuracy"] if blind else None,
        "n_closed": main["n_closed"],
        "per_question_type": main["per_question_type"],
        "per_language": main["per_language"],
        "report": main["report"],
    }
    if blind:
        metrics["blind"] = {
            k: results["blind"][k] for k in ("closed_accuracy", "per_question_type", "per_language", "report")
        }
    example = next((r for r in main["rows"] if r["question_type"] == "report"), main["rows"][0])
    metrics["example"] = {k: example[k] for k in ("id", "question", "reference", "prediction")}
    metrics["recipe"] = {
        "n_cases": recipe.n_cases,
        "max_steps": recipe.max_steps,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "train_format": recipe.train_format,
        "encoder_pretrain": recipe.encoder_pretrain,
        "encoder_mode": recipe.encoder_mode,
        "geometry": recipe.geometry.__dict__,
        "model": spec,
    }
    stage0 = {name: run_dirs[name] / "encoder_pretrain.json" for name in runs}
    metrics["encoder_pretrain"] = {name: json.loads(p.read_text()) for name, p in stage0.items() if p.exists()}
    metrics["data"] = summary["splits"]
    metrics["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    metrics["wall_s"] = round(time.time() - t_start, 1)
    metrics["torch_threads"] = _torch_threads()
    metrics["parallel_training"] = parallel
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for name, res in results.items():
            for row in res["rows"]:
                fh.write(json.dumps({"run": name, **row}, ensure_ascii=False) + "\n")
    return metrics


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


__all__ = ["RECIPES", "Recipe", "run_quickstart", "evaluate_split", "score_rows", "format_table", "write_blind_split"]
