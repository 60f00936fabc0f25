"""The quickstart's training runs: stage 0 (encoder pretraining) then instruction tuning.

Both stages go through :func:`medvl.train.run_training`, exactly what ``medvl train`` runs: stage 0
(``train.stage: encoder_pretrain``) pretrains the encoder on the training cases' findings (the label
tables ``medvl data synth`` writes) as a multi-label classifier; instruction tuning starts from
that checkpoint (``model.path``) with the LLM and connector trained and the encoder frozen and run
once per image/volume (``data.cache_encoder_features``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvl.tools.quickstart.blind import blank_name
from medvl.tools.quickstart.recipe import Recipe

if TYPE_CHECKING:
    import torch

    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor
    from medvl.train.config import TrainConfig

logger = logging.getLogger(__name__)


def write_tokenizer_corpus(data_dir: Path, path: Path) -> None:
    """Questions, answers and reports of the training split, one per line (the tokenizer's corpus).

    Args:
        data_dir: the synthetic set (its ``train.jsonl`` is read).
        path: the text file to write.
    """
    lines = []
    for line in (data_dir / "train.jsonl").read_text(encoding="utf-8").splitlines():
        for m in json.loads(line)["messages"]:
            lines.append(m["content"].replace("<image>", "").replace("<volume>", "").strip())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


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


def train_run_in_worker(job: tuple[Recipe, dict[str, Any], RunData, Path, int, int, bool]) -> str:
    """Run :func:`train_run` in a worker process with its own thread count (parallel mode).

    Args:
        job: (recipe, spec, data, out_dir, seed, torch threads, progress bar).
    """
    recipe, spec, data, out_dir, seed, threads, progress = job
    import torch

    from medvl.utils.logging import setup_logging

    setup_logging()
    torch.set_num_threads(threads)
    return str(train_run(recipe, spec, data, out_dir, seed, progress=progress))


def encoder_items(
    data: RunData, split: str, processor: MedVLProcessor
) -> tuple[Callable[[Sequence[int]], torch.Tensor], torch.Tensor]:
    """(load_media, labels) of one split's cases, media preprocessed by the model's own processor and
    held in memory as float16: the stage-0 search harness's input (benchmarks/encoder_pretrain_3d.py).
    The quickstart itself trains stage 0 through ``run_training`` (:func:`stage0_config`).

    Args:
        data: the run's data (``blank`` puts the blank file in place of every case).
        split: "train", "validation" or "test".
        processor: the model's ``MedVLProcessor``.
    """
    import torch

    from medvl.tools.synth.findings import CaseFindings

    cases = [json.loads(line) for line in (data.data_dir / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    cases = [c for c in cases if c["split"] == split]
    labels = torch.tensor([CaseFindings.from_dict(c["findings"]).labels() for c in cases], dtype=torch.float32)
    image_processor, volume_processor = processor.image_processor, processor.volume_processor
    if data.kind == "2d":
        from medvl.imaging import load_image

        if image_processor is None:
            raise ValueError("the quickstart's 2D model has no image processor")

        def prepare(path: Path) -> torch.Tensor:
            return image_processor([load_image(path)], return_tensors="pt")["pixel_values"][0]
    else:
        from medvl.imaging import load_volume

        if volume_processor is None:
            raise ValueError("the quickstart's 3D model has no volume processor")

        cache = None
        if data.volume_cache is not None:
            from medvl.data.prepare import VolumeCache

            cache = VolumeCache(data.volume_cache)
            cache.check_processor(volume_processor)

        def prepare(path: Path) -> torch.Tensor:
            cached = cache.get(str(path)) if cache is not None else None
            if cached is not None:
                return cached
            return volume_processor([load_volume(path)])["volume_values"][0]

    if data.blank:
        one = prepare(data.data_dir / blank_name(data.kind)).half()
        media = one.unsqueeze(0).expand(len(cases), *one.shape)
    else:
        media = torch.stack([prepare(data.data_dir / c["file"]).half() for c in cases])
    return (lambda idx: media[list(idx)].float()), labels


def stage0_config(
    recipe: Recipe, spec: dict[str, Any], data: RunData, out_dir: Path, seed: int, progress: bool = True
) -> TrainConfig:
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

    if recipe.encoder_pretrain is None:
        raise ValueError("recipe.encoder_pretrain is None: this recipe has no stage 0")
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


def train_run(
    recipe: Recipe, spec: dict[str, Any], data: RunData, out_dir: Path, seed: int, progress: bool = True
) -> Path:
    """Stage 0 (encoder pretraining, if the recipe has it) then instruction tuning, both through
    :func:`medvl.train.run_training` (what ``medvl train`` runs).

    Args:
        recipe: the quickstart recipe.
        spec: the model's build spec (a ``medvl.build.ModelSpec`` as a mapping).
        data: what the run reads (``blank`` for the blind baseline).
        out_dir: the run's folder (``stage0/``, the tuning output, ``encoder_pretrain.json``).
        seed: training seed.
        progress: show progress bars.

    Returns:
        the instruction-tuning output folder (its checkpoint is ``out_dir / "model"``).
    """
    from medvl.build import ModelSpec, build_model
    from medvl.train.config import TrainConfig
    from medvl.train.run import final_model_dir, run_training
    from medvl.utils.config import from_dict

    model: MedVLForConditionalGeneration | None
    processor: MedVLProcessor | None
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
        model = processor = None  # instruction tuning loads the stage-0 checkpoint instead
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


def prepare_volume_cache(spec: dict[str, Any], data_dir: Path, record_files: Sequence[Path]) -> Path:
    """Preprocess every volume of the records once, with the model's own volume processor
    (``medvl data prepare``); both stages of every run read the cache.

    Args:
        spec: the model's build spec.
        data_dir: the synthetic set (the cache goes to ``data_dir / "volume_cache"``).
        record_files: records files whose volumes are cached.
    """
    from medvl.build import ModelSpec, build_model
    from medvl.data.prepare import prepare_volumes
    from medvl.data.records import load_records
    from medvl.utils.config import from_dict

    _, processor = build_model(from_dict(ModelSpec, spec, prefix="model.spec."))
    records = [r for f in record_files for r in load_records(f)]
    cache = data_dir / "volume_cache"
    if processor.volume_processor is None:
        raise ValueError("the quickstart's 3D model has no volume processor")
    summary = prepare_volumes(records, processor.volume_processor, cache, dtype="float16", progress=False)
    logger.info("volume cache: %s", summary)
    return cache
