"""``medvl train CONFIG.yaml [key=value ...]``: train or fine-tune a model from a YAML recipe.

Multi-process: ``torchrun --nproc_per_node N -m medvl train CONFIG.yaml`` (DDP), add
``train.deepspeed=configs/deepspeed/zero3.json`` for DeepSpeed ZeRO, or pass FSDP settings through
``train.hf_args``.
"""

from __future__ import annotations

import argparse
import logging
import os

HELP = "train or fine-tune a model from a YAML recipe (stages, full/LoRA, resume, multi-process)"

EXAMPLES = r"""examples:
  medvl train configs/medm-vl-2d/finetune_lora.yaml model.path=ckpt/MedM-VL-2D data.train=[my.jsonl]
  medvl train medm-vl-2d/finetune_lora train.deepspeed=null ...   # a shipped recipe by name, without DeepSpeed
  medvl train run.yaml train.resume=true                      # continue from the last checkpoint
  medvl train configs/from-scratch/2d-stage0.yaml data.train=[my.jsonl]   # stage 0: encoder as a finding classifier
  medvl train run.yaml train.parts.vision.mode=lora train.parts.connector.lr=1e-4
  medvl train run.yaml 'train.hf_args={dataloader_pin_memory: false}'   # any TrainingArguments field
  torchrun --nproc_per_node 8 -m medvl train run.yaml train.deepspeed=configs/deepspeed/zero3.json
  torchrun --nproc_per_node 8 -m medvl train run.yaml train.deepspeed=null train.gradient_checkpointing=false \
      'train.hf_args={fsdp: true, fsdp_config: {transformer_layer_cls_to_wrap: [Qwen2DecoderLayer], activation_checkpointing: true}}'
  medvl export RUN/model --merge-lora RUN/merged                # LoRA runs: a self-contained checkpoint

The output folder holds config.yaml (resolved), env.json (versions, git revision), checkpoint-N/,
runs/ (TensorBoard), metrics.json, loss.png and the final model in model/ (an adapter folder for
LoRA runs). DeepSpeed is an optional extra (pip install 'medvl[deepspeed]') and needs a launcher
(torchrun), also for one process.
"""

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl train``.

    Args:
        parser: the verb's sub-parser.
    """
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument(
        "config",
        help="YAML recipe with sections model, data, train, output: a path, or the name "
        "of a recipe shipped with medvl (e.g. medm-vl-2d/finetune_lora)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. train.lr=2e-4 train.parts.llm.mode=lora output.dir=runs/x train.resume=true",
    )


def run(args: argparse.Namespace) -> int:
    """Load the recipe and train; prints the output folder.

    Args:
        args: parsed arguments.
    """
    from medvl.train.config import load_train_config, unfilled_placeholders
    from medvl.train.run import final_model_dir, run_training

    try:
        cfg = load_train_config(args.config, args.overrides)
        unfilled = unfilled_placeholders(cfg)
        if unfilled:
            raise ValueError(
                "the recipe still has placeholder paths; fill them in (in the YAML or as key=value "
                "overrides): " + ", ".join(unfilled)
            )
    except (ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    out = run_training(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per torchrun process
        print(f"output: {out}\nmodel:  {final_model_dir(out)}")
    leave_process_group()
    return 0


def leave_process_group() -> None:
    """Destroy the torch.distributed process group of a torchrun process, if one was started.

    Neither the HF Trainer nor DeepSpeed does it; a gloo group left to interpreter teardown can
    abort a rank after a finished run ("terminate called without an active exception").
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
