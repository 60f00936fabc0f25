"""``medvl data check|prepare|synth``: inspect, cache and synthesise data sets."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medvl.models import MedVLProcessor

HELP = "data sets: check (report every problem), prepare (cache preprocessed volumes), synth (phantoms)"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands of ``medvl data``.

    Args:
        parser: the ``data`` verb's parser.
    """
    sub = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    check = sub.add_parser("check", help="read a data set or registry once and report every problem (exit 1 if any)")
    check.add_argument("source", help="records file (.json/.jsonl) or registry (.yaml)")
    check.add_argument(
        "--model", default=None, help="model folder: enables token counts (media included) and over-long checks"
    )
    check.add_argument("--template", default="auto", help="chat template (auto, chatml, llama3, vicuna, medmvl, plain)")
    check.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="token limit, media placeholders included (default with --model: the model's positions)",
    )
    check.add_argument("--split", default=None, help="registry split to check (default: all)")
    check.add_argument("--no-read-media", action="store_true", help="only check that media files exist")
    check.add_argument("--json", default=None, help="also write the full report as JSON here")
    check.add_argument("--max-issues", type=int, default=50, help="problems listed on screen (all are counted)")
    check.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept media paths that leave the data root (reported as outside_root otherwise)",
    )

    prep = sub.add_parser("prepare", help="cache preprocessed volumes (memory-mappable .npy + manifest)")
    prep.add_argument("source", help="records file (.json/.jsonl) or registry (.yaml)")
    prep.add_argument("--model", required=True, help="model folder whose volume processor is used")
    prep.add_argument("--out", required=True, help="cache folder")
    prep.add_argument(
        "--dtype",
        choices=("float16", "float32", "int16"),
        default="float16",
        help="float16/float32: final tensors; int16: HU after the spatial steps",
    )
    prep.add_argument("--split", default=None, help="registry split (default: all)")
    prep.add_argument("--skip-errors", action="store_true", help="skip unreadable volumes instead of stopping")
    prep.add_argument("--allow-outside-root", action="store_true", help="accept media paths that leave the data root")

    synth = sub.add_parser("synth", help="write a synthetic chest phantom data set (2D radiographs or 3D CT)")
    _add_synth_arguments(synth)


def _add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl data synth`` (:func:`medvl.tools.synth.dataset.synthesize`)."""
    from medvl.tools.synth.dataset import KINDS, TRAIN_FORMATS
    from medvl.tools.synth.findings import NODULE_DIAMETER_MM

    parser.add_argument("--kind", choices=KINDS, default="2d", help="2d radiographs or 3d CT volumes")
    parser.add_argument("--n", type=int, default=200, help="number of cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--dicom", action="store_true", help="2D: write DICOM DX instead of 16-bit PNG")
    parser.add_argument("--size", type=int, default=None, help="2D image size in pixels (default 256)")
    parser.add_argument("--spacing", type=float, default=None, help="2D pixel spacing in mm (default 1.4)")
    parser.add_argument(
        "--nodule-mm",
        default=None,
        metavar="MIN,MAX",
        help=f"nodule diameters in mm, drawn uniformly (default {NODULE_DIAMETER_MM[0]:g},{NODULE_DIAMETER_MM[1]:g})",
    )
    parser.add_argument("--workers", type=int, default=1, help="rendering processes (same output for any number)")
    parser.add_argument(
        "--train-format",
        choices=TRAIN_FORMATS,
        default="single",
        help="grouped: training records are conversations of independent questions (one per "
        "finding; reports alone); validation/test stay single questions",
    )


def _load_processor(model_dir: str) -> MedVLProcessor:
    from medvl.models import MedVLProcessor

    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"--model {model_dir}: not a folder")
    return MedVLProcessor.from_pretrained(model_dir)


def _model_positions(model_dir: str) -> int | None:
    """The model's position limit (its text config's ``max_position_embeddings``), if it has one."""
    from transformers import AutoConfig

    import medvl.models  # noqa: F401  (registers the medvl config with AutoConfig)

    config = AutoConfig.from_pretrained(model_dir)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "max_position_embeddings", None)


def _check(args: argparse.Namespace) -> int:
    from medvl.data.check import check_data

    processor = _load_processor(args.model) if args.model else None
    max_length = args.max_length
    if processor is not None and max_length is None:
        max_length = _model_positions(args.model)  # a longer prompt would be answered with garbage
    report = check_data(
        args.source,
        processor,
        template=args.template,
        max_length=max_length,
        split=args.split,
        read_media=not args.no_read_media,
        progress=sys.stderr.isatty(),
    )
    print(report.format(max_issues=args.max_issues))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    return 0 if report.ok else 1


def _prepare(args: argparse.Namespace) -> int:
    from medvl.data.prepare import prepare_volumes
    from medvl.data.registry import load_sources

    processor = _load_processor(args.model)
    if processor.volume_processor is None:
        print(f"error: the model in {args.model} has no volume processor", file=sys.stderr)
        return 2
    records = [r for _, recs in load_sources(args.source, split=args.split) for r in recs]
    summary = prepare_volumes(
        records,
        processor.volume_processor,
        args.out,
        dtype=args.dtype,
        on_error="skip" if args.skip_errors else "raise",
        progress=sys.stderr.isatty(),
    )
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed"] else 0


def _synth(args: argparse.Namespace) -> int:
    from medvl.tools.synth.dataset import synthesize
    from medvl.tools.synth.findings import NODULE_DIAMETER_MM
    from medvl.tools.synth.phantoms import Geometry2D

    geometry = None
    if args.kind == "2d" and (args.size or args.spacing):
        geometry = Geometry2D(size=args.size or 256, spacing=args.spacing or 1.4)
    sizes: tuple[float, ...] = NODULE_DIAMETER_MM
    if args.nodule_mm:
        try:
            sizes = tuple(float(v) for v in args.nodule_mm.split(","))
        except ValueError:
            sizes = ()
        if len(sizes) != 2:
            raise ValueError(f"--nodule-mm takes MIN,MAX in mm (e.g. 4,12), got {args.nodule_mm!r}")
    summary = synthesize(
        args.kind,
        args.n,
        args.seed,
        args.out,
        dicom=args.dicom,
        geometry=geometry,
        workers=args.workers,
        train_format=args.train_format,
        nodule_diameter_mm=(sizes[0], sizes[1]),
    )
    print(json.dumps(summary["splits"]))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``medvl data COMMAND``.

    Args:
        args: parsed arguments.
    """
    from medvl.data.records import outside_root_allowed

    if args.data_command in ("check", "prepare"):
        with outside_root_allowed(args.allow_outside_root):
            return _check(args) if args.data_command == "check" else _prepare(args)
    if args.data_command == "synth":
        return _synth(args)
    raise AssertionError(args.data_command)
