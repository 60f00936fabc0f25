"""``medvl infer MODEL --data FILE --out preds.jsonl``: batch inference over a dataset file.

Reads native or MedM-VL/LLaVA records; the prompt is each record's conversation up to (excluding)
a trailing assistant turn (for MedM-VL inference files: the last human turn), rendered with the
model's own chat template. Writes one JSON line per sample: ``id``, ``prediction``, ``reference``
(``answer`` of MedM-VL files, else the trailing assistant turn, else null) and ``run`` (a
fingerprint of the model and the generation settings).

Lines are appended and flushed batch by batch. Running the same command again continues after the
last complete line; an ``--out`` holding another model's or another file's predictions is refused,
as is an ``--out`` that is the input file or lies inside the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the verbs import the model code lazily: `medvl --help` stays fast
    from medvl.data.records import Record
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

HELP = "batch inference: generate answers for a dataset file and write JSONL predictions"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl infer``.

    Args:
        parser: the verb's sub-parser.
    """
    parser.add_argument("model", help="medvl checkpoint folder")
    parser.add_argument("--data", required=True, help="records file (native or MedM-VL/LLaVA JSON/JSONL)")
    parser.add_argument("--root", help="folder media paths are relative to (default: the data file's folder)")
    parser.add_argument("--out", required=True, help="output JSONL (id, prediction, reference)")
    parser.add_argument(
        "--on-overlong",
        choices=("error", "skip"),
        default="error",
        help="a prompt longer than the model's positions: stop with an error naming it (default), or "
        "skip it (its line gets prediction null and skipped: overlong) and count it",
    )
    parser.add_argument(
        "--window",
        help="intensity window of the 2D images: CENTER,WIDTH in the file's units, a "
        'preset (lung, mediastinum, abdomen, bone, wide) or minmax; a record\'s own "window" wins',
    )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept media paths that leave the data root (refused by default)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--min-new-tokens", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, help="sampling temperature (with --do-sample)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (with --do-sample)")
    parser.add_argument("--num-beams", type=int, help="beam search width")
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--limit", type=int, help="only the first N records")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: float32 on CPU")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_window(text: str) -> list[float] | str:
    """``--window`` text: ``"C,W"`` -> [C, W]; a preset name, ``custom:C,W`` or ``minmax`` as given.

    Args:
        text: the option's value.
    """
    parts = text.split(",")
    if len(parts) == 2:
        try:
            return [float(parts[0]), float(parts[1])]
        except ValueError:
            pass
    from medvl.errors import MedVLDataError
    from medvl.imaging.image2d import record_window

    try:
        record_window({"window": text})  # invalid names fail here, listing the valid ones
    except MedVLDataError as err:
        raise ValueError(f"--window: {err}") from None
    return text


def generation_options(args: argparse.Namespace) -> dict:
    """Optional generation settings given on the command line (shared with ``medvl chat``).

    Args:
        args: parsed arguments.
    """
    names = {
        "temperature": "temperature",
        "top_p": "top_p",
        "num_beams": "num_beams",
        "repetition_penalty": "repetition_penalty",
    }
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr, None) is not None}


def _resume_point(out: Path, records: list, run_key: str) -> int:
    """How many leading records ``out`` already answers for this run (0 for a new file).

    A line cut by an interruption is dropped; lines from another model, other generation settings
    or other records are refused rather than mixed with new ones.
    """
    if not out.exists() or out.stat().st_size == 0:
        return 0
    raw = out.read_bytes()
    lines = raw.split(b"\n")
    kept, good_bytes = 0, 0
    for i, line in enumerate(lines):
        if not line.strip():
            good_bytes += len(line) + (i < len(lines) - 1)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 or all(not x.strip() for x in lines[i + 1 :]):
                break  # the last line, cut by Ctrl-C or a full disk: generate it again
            raise ValueError(
                f"--out {out}: line {i + 1} is not valid JSON; it is not a predictions file of "
                "medvl infer: choose another --out"
            ) from None
        if not isinstance(row, dict) or row.get("run") != run_key:
            raise ValueError(
                f"--out {out} already holds predictions of another model, other generation settings or "
                "another data file (or is not a medvl infer output); choose another --out, or delete it "
                "to start afresh"
            )
        if kept >= len(records) or row.get("id") != records[kept].id:
            raise ValueError(
                f"--out {out}: line {i + 1} (id {row.get('id')!r}) does not match record {kept + 1} of "
                "--data; it holds predictions of other records: choose another --out"
            )
        kept += 1
        good_bytes += len(line) + 1
    if good_bytes < len(raw):
        with out.open("r+b") as f:
            f.truncate(good_bytes)
    return kept


def _generate_part(
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    part: list[Record],
    args: argparse.Namespace,
    options: dict[str, Any],
    skipped: list[str],
) -> list[str | None]:
    """Predictions of one batch; with ``--on-overlong skip`` an over-long prompt gets None (counted)."""
    from medvl.data.labels import OverlongSampleError
    from medvl.inference import generate

    try:
        whole: list[str | None] = list(
            generate(model, processor, part, batch_size=args.batch_size, progress=False, **options)
        )
        return whole
    except OverlongSampleError:
        if args.on_overlong != "skip":
            raise
    texts: list[str | None] = []
    for rec in part:  # find the over-long ones: one record at a time
        try:
            texts += generate(model, processor, [rec], batch_size=1, progress=False, **options)
        except OverlongSampleError as err:
            logger.warning("skipping: %s", err)
            skipped.append(rec.id)
            texts.append(None)
    return texts


def run(args: argparse.Namespace) -> int:
    """Generate for every record, appending the predictions batch by batch (resumable).

    Args:
        args: parsed arguments.
    """
    from tqdm.auto import tqdm

    from medvl.data.records import load_records
    from medvl.inference import load_model, reference_of
    from medvl.utils.paths import model_fingerprint, refuse_output_over_inputs, settings_fingerprint

    out = Path(args.out)
    refuse_output_over_inputs(out, inputs=[args.data], folders=[args.model])
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    records = load_records(args.data, root=args.root, allow_outside_root=args.allow_outside_root)
    if args.limit is not None:
        records = records[: args.limit]
    if args.window:
        window = parse_window(args.window)
        for rec in records:
            rec.meta.setdefault("window", window)
    if not records:
        raise ValueError(f"--data {args.data}: the file holds no records")
    options = dict(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        do_sample=args.do_sample,
        **generation_options(args),
    )
    run_key = settings_fingerprint(model=model_fingerprint(args.model), generation=options)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = _resume_point(out, records, run_key)
    if start:
        logger.info("%s: resuming after %d of %d predictions already written", out, start, len(records))
    if start < len(records):
        model, processor = load_model(args.model, dtype=args.dtype, device=args.device)
    written = start
    skipped: list[str] = []
    bar = tqdm(total=len(records), initial=start, desc="infer", unit="sample", disable=args.no_progress)
    try:
        # one batch at a time, appended and flushed: an error, Ctrl-C or a full disk keeps what was written
        with out.open("a", encoding="utf-8") as f:
            for begin in range(start, len(records), args.batch_size):
                part = records[begin : begin + args.batch_size]
                texts = _generate_part(model, processor, part, args, options, skipped)
                f.write(
                    "".join(
                        json.dumps(
                            {
                                "id": rec.id,
                                "prediction": pred,
                                "reference": reference_of(rec),
                                "run": run_key,
                                **({"skipped": "overlong"} if pred is None else {}),
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                        for rec, pred in zip(part, texts)
                    )
                )
                f.flush()
                written += len(part)
                bar.update(len(part))
    except BaseException:
        if written:
            logger.error(
                "%d of %d predictions are saved in %s; rerun the same command to continue", written, len(records), out
            )
        raise
    finally:
        bar.close()
    if skipped:
        logger.warning(
            "%d over-long prompt(s) skipped (prediction null): %s",
            len(skipped),
            ", ".join(repr(r) for r in skipped[:10]) + (" ..." if len(skipped) > 10 else ""),
        )
    print(
        f"wrote {len(records)} predictions to {out}"
        + (f" ({len(skipped)} over-long prompts skipped)" if skipped else "")
    )
    return 0
