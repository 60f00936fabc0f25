"""``medvl eval``: generate answers for benchmark tasks, score them, write results.

For each task the runner loads the release (:mod:`medvl.eval.tasks`), generates the missing
predictions through ``medvl.inference.generate`` (or an injected ``generate_fn``), scores them with
the task's protocol and writes, under ``out_dir``::

    predictions/<task>.jsonl   one line per sample (id, prediction, reference, answer_type,
                               language, data fingerprint), appended batch by batch
    scores/<task>.json         the full ScoreResult (per-item values, notes, versions)
    results.json               one entry per (task, language, metric): task, metric, protocol,
                               value, n, model, data_fingerprint, split, language, versions
    results.md                 markdown table of the headline metrics
    results.png                bar chart of the headline metrics

Resuming: predictions already in ``predictions/<task>.jsonl`` for the same data fingerprint are
kept and only the missing samples are generated, so an interrupted run continues where it
stopped. Lines from another fingerprint (changed data, split, prompt or ``limit``) are discarded.
Each line also carries ``run``, a fingerprint of the model (config + weights) and the generation
settings: lines of another model or other settings are never reused nor mixed in; the run is
refused until another ``--out`` is chosen. Sample ids must be unique within a task (an id matches a
prediction to its reference).
Tasks with several languages (SLAKE, synthetic sets) are also scored per language.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvl.eval.results import ScoreResult, library_versions

if TYPE_CHECKING:
    from medvl.data.records import Record
    from medvl.eval.tasks.base import TaskSpec

logger = logging.getLogger(__name__)

# Record fields a release labels its samples with; every value with items gets its own scores.
# (Answer type is covered by the protocols' closed_/open_ metrics, language by the language groups.)
SUBGROUP_KEYS = ("modality", "organ", "question_type")

GenerateFn = Callable[..., list[str]]

# Metrics shown in the markdown table and chart (results.json has every aggregate).
HEADLINE: dict[str, tuple[str, ...]] = {
    "llava_med_v1": ("closed_accuracy", "open_recall", "open_accuracy"),
    "exact_norm": ("accuracy", "closed_accuracy", "open_accuracy"),
    "medevalkit": ("accuracy", "closed_accuracy", "open_accuracy"),
    "mcq": ("accuracy",),
    "m3d": ("closed_accuracy", "bleu1", "rouge1", "meteor", "bert_f1"),
    "uni_med": ("closed_accuracy", "open_bleu1", "accuracy"),
    "report": (
        "bleu_1",
        "bleu_4",
        "rouge_l",
        "meteor",
        "cider",
        "f1_chexbert_micro_f1_5",
        "f1_chexbert_accuracy",
        "radgraph_partial",
        "ratescore",
    ),
}


@dataclass
class EvalConfig:
    """Settings of one evaluation run.

    Args:
        tasks: task names.
        out_dir: output folder.
        data: task name -> release folder (overrides ``data_root``).
        data_root: folder holding each release under the task's ``default_dir``.
        split: split to evaluate (default: each task's default split).
        limit: evaluate only the first N samples of each task.
        batch_size: generation batch size.
        chunk_batches: batches generated between two appends to the predictions file.
        generation: overrides of the tasks' generation settings (e.g. ``max_new_tokens``).
        protocols: task name -> VQA protocol replacing the task's default (e.g. SLAKE scored
            ``llava_med_v1`` to compare with LLaVA-Med's table).
        bertscore_model: local model folder for BERTScore (m3d protocol, report metrics).
        meteor: compute METEOR (Java for reports, WordNet for m3d).
        tokenization: pycocoevalcap tokenisation for report tasks (auto = PTB when Java is present).
        progress: show progress bars.
        clinical: report tasks: clinical metric name -> local model folder (F1-CheXbert, RadGraph, RaTEScore).
        bootstrap_resamples: resamples of the bootstrap 95% intervals (0: none).
        bootstrap_seed: seed of the bootstrap.
    """

    tasks: Sequence[str]
    out_dir: str | Path
    data: dict[str, str] = field(default_factory=dict)
    data_root: str | Path | None = None
    split: str | None = None
    limit: int | None = None
    batch_size: int = 8
    chunk_batches: int = 4
    generation: dict[str, Any] = field(default_factory=dict)
    protocols: dict[str, str] = field(default_factory=dict)
    bertscore_model: str | None = None
    meteor: bool = True
    tokenization: str = "auto"
    progress: bool = True
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    clinical: dict[str, str] = field(default_factory=dict)


def model_generate_fn(
    model_path: str | Path, *, batch_size: int = 8, dtype: str | None = None, device: str | None = None
) -> GenerateFn:
    """A ``generate_fn`` answering with a medvl checkpoint through ``medvl.inference.generate``.

    Args:
        model_path: checkpoint folder.
        batch_size: generation batch size.
        dtype: model dtype (default: float32 on CPU).
        device: device (default: CUDA when available).
    """
    from medvl.inference import generate, load_model

    model, processor = load_model(model_path, dtype=dtype, device=device)

    def fn(records: list[Record], **gen: Any) -> list[str]:
        return generate(model, processor, records, batch_size=batch_size, progress=False, **gen)

    return fn


def _task_root(name: str, spec: TaskSpec, cfg: EvalConfig) -> Path:
    if name in cfg.data:
        return Path(cfg.data[name])
    if cfg.data_root is None:
        raise ValueError(
            f"task {name!r}: no data folder; pass --data {name}=DIR or --data-root DIR "
            f"(expects DIR/{spec.default_dir}; source: {spec.source})"
        )
    return Path(cfg.data_root) / spec.default_dir


def _read_done(path: Path, fingerprint: str, wanted: set[str], run_key: str | None = None) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    stale = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            stale += 1  # a line cut by an interruption: regenerate that sample
            continue
        if run_key is not None and isinstance(row, dict) and row.get("run") != run_key:
            # another model's answers must never be scored under this model's name
            raise ValueError(
                f"{path} holds predictions of another model or other generation settings "
                f"(run {row.get('run')!r}, this run {run_key!r}); choose another --out, or delete the "
                "file to start this task afresh"
            )
        if row.get("data_fingerprint") == fingerprint and row.get("id") in wanted:
            done[row["id"]] = row
        else:
            stale += 1
    if stale:
        logger.warning("%s: %d stale or partial prediction lines discarded", path, stale)
        _write_rows(path, list(done.values()))
    return done


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def _prediction_row(
    rec: Record, prediction: str, task: str, fingerprint: str, run_key: str | None = None
) -> dict[str, Any]:
    meta = rec.meta
    row = {
        "id": rec.id,
        "task": task,
        "prediction": prediction,
        "reference": meta.get("reference"),
        "answer_type": meta.get("answer_type", "OPEN"),
        "language": meta.get("language"),
        "question": meta.get("question", ""),
        "data_fingerprint": fingerprint,
    }
    for key in ("options", "answer_choice", *SUBGROUP_KEYS):
        if meta.get(key) is not None:
            row[key] = meta[key]
    if run_key is not None:  # model + generation settings: resume never mixes two runs
        row["run"] = run_key
    return row


def generate_predictions(
    name: str,
    records: list[Record],
    generate_fn: GenerateFn,
    gen: dict[str, Any],
    path: Path,
    fingerprint: str,
    cfg: EvalConfig,
    run_key: str | None = None,
) -> list[dict[str, Any]]:
    """Predictions for ``records`` in order, generating only those not already in ``path``.

    Args:
        name: task name.
        records: the task's records.
        generate_fn: ``generate_fn(records, **gen) -> list[str]``.
        gen: generation settings.
        path: predictions JSONL (appended chunk by chunk).
        fingerprint: data fingerprint of ``records``.
        cfg: run settings.
        run_key: fingerprint of the model and generation settings; lines with another key are refused.
    """
    from tqdm.auto import tqdm

    done = _read_done(path, fingerprint, {r.id for r in records}, run_key)
    todo = [r for r in records if r.id not in done]
    if done:
        logger.info("%s: resuming, %d of %d samples already predicted", name, len(done), len(records))
    chunk = max(1, cfg.batch_size * cfg.chunk_batches)
    bar = tqdm(total=len(records), initial=len(done), desc=name, unit="sample", disable=not cfg.progress)
    try:
        with open(path, "a", encoding="utf-8") as fh:
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                texts = generate_fn(part, **gen)
                if len(texts) != len(part):
                    raise RuntimeError(f"generate_fn returned {len(texts)} texts for {len(part)} records")
                for rec, text in zip(part, texts):
                    row = _prediction_row(rec, text, name, fingerprint, run_key)
                    done[rec.id] = row
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                bar.update(len(part))
    finally:
        bar.close()
    return [done[r.id] for r in records]


def score_rows(spec: TaskSpec, rows: list[dict[str, Any]], cfg: EvalConfig) -> ScoreResult:
    """Score prediction rows with the task's protocol.

    Args:
        spec: the TaskSpec.
        rows: prediction rows (see :func:`generate_predictions`).
        cfg: run settings.
    """
    if spec.kind == "report":
        from medvl.eval.report_metrics import score_reports

        return score_reports(
            [r["id"] for r in rows],
            [r["prediction"] for r in rows],
            [str(r["reference"]) for r in rows],
            meteor=cfg.meteor,
            tokenization=cfg.tokenization,
            bertscore_model=cfg.bertscore_model,
            clinical=cfg.clinical or None,
            bootstrap_resamples=cfg.bootstrap_resamples,
            bootstrap_seed=cfg.bootstrap_seed,
        )
    from medvl.eval.vqa import VQAItem, score_vqa

    items = [
        VQAItem(
            id=r["id"],
            prediction=r["prediction"],
            reference=str(r["reference"]),
            answer_type=r["answer_type"],
            question=r.get("question", ""),
            options=r.get("options"),
            answer_choice=r.get("answer_choice"),
            language=r.get("language"),
        )
        for r in rows
    ]
    options = dict(spec.protocol_options)
    if spec.protocol == "m3d":
        options.setdefault("bertscore_model", cfg.bertscore_model)
        options.setdefault("with_meteor", cfg.meteor)
    return score_vqa(items, spec.protocol, **options)


def _refuse_duplicate_ids(name: str, records: list[Record], root: Path) -> None:
    """Predictions are matched to references by id: two samples with one id would be scored wrongly."""
    from collections import Counter

    from medvl.errors import MedVLDataError

    dups = [i for i, n in Counter(r.id for r in records).items() if n > 1]
    if dups:
        shown = ", ".join(repr(d) for d in dups[:5]) + (f" and {len(dups) - 5} more" if len(dups) > 5 else "")
        files = sorted({str(r.source_file) for r in records if r.id in dups[:5] and r.source_file})
        raise MedVLDataError(
            f"task {name!r}: duplicate sample id(s) {shown}{' in ' + ', '.join(files) if files else ''}; "
            "every sample needs its own id (predictions are matched to references by id)",
            path=str(root),
        )


def evaluate(
    cfg: EvalConfig,
    *,
    model: str | Path | None = None,
    generate_fn: GenerateFn | None = None,
    model_name: str | None = None,
) -> list[dict[str, Any]]:
    """Run every task of ``cfg``: generate (resumably), score, write the outputs.

    Args:
        cfg: run settings.
        model: checkpoint folder (used when ``generate_fn`` is None).
        generate_fn: ``fn(records, **generation) -> list[str]``; overrides ``model``.
        model_name: name written into the results (default: the model path).

    Returns:
        the results entries (also written to ``results.json``).
    """
    specs = task_specs(cfg)  # unknown names fail before any work
    out = Path(cfg.out_dir)
    # a checkpoint is known by its config + weights; an injected generate_fn only by an explicit model_name
    # (without one, resuming trusts the caller to pass the same function)
    model_key = model_name
    if generate_fn is None:
        if model is None:
            raise ValueError("evaluate() needs a model path or a generate_fn")
        from medvl.utils.paths import model_fingerprint, refuse_output_over_inputs

        refuse_output_over_inputs(out, folders=[model], flag="--out")
        model_key = model_fingerprint(model)
        generate_fn = model_generate_fn(model, batch_size=cfg.batch_size)
    if not model_name:
        model_name = str(model) if model is not None else str(getattr(generate_fn, "__name__", "custom"))
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    (out / "scores").mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for name, spec in specs.items():
        results += evaluate_task(name, spec, cfg, generate_fn, model_key=model_key, model_name=model_name)
    write_results(out, cfg, model_name, results)
    return results


def task_specs(cfg: EvalConfig) -> dict[str, TaskSpec]:
    """The tasks of ``cfg`` by name, with the protocols ``cfg.protocols`` puts in place of their own.

    Args:
        cfg: run settings.

    Raises:
        ValueError: an unknown task or protocol, a protocol for a task not run or for a report task.
    """
    from medvl.eval.tasks import get_task
    from medvl.eval.vqa import get_protocol

    specs = {name: get_task(name) for name in cfg.tasks}
    for name, protocol in cfg.protocols.items():
        if name not in specs:
            raise ValueError(f"protocol given for task {name!r}, which is not among --tasks ({', '.join(specs)})")
        if specs[name].kind != "vqa":
            raise ValueError(f"task {name!r} is a report task; only VQA tasks take another protocol")
        get_protocol(protocol)  # unknown protocol names fail here, listing the valid ones
        specs[name] = dataclasses.replace(specs[name], protocol=protocol, protocol_options={})
    return specs


def evaluate_task(
    name: str,
    spec: TaskSpec,
    cfg: EvalConfig,
    generate_fn: GenerateFn,
    *,
    model_key: str | None,
    model_name: str,
) -> list[dict[str, Any]]:
    """One task: load its records, generate the missing predictions, score every group, write its scores.

    Args:
        name: task name.
        spec: the task (protocol already chosen, see :func:`task_specs`).
        cfg: run settings.
        generate_fn: ``fn(records, **generation) -> list[str]``.
        model_key: what identifies the model in resumable predictions (None: trust the caller).
        model_name: name written into the results.

    Returns:
        the task's results entries, one per (group, metric).
    """
    from medvl.eval.tasks import data_fingerprint
    from medvl.utils.paths import settings_fingerprint

    out = Path(cfg.out_dir)
    split = cfg.split or spec.default_split
    root = _task_root(name, spec, cfg)
    records = spec.load(root, split, cfg.limit)
    _refuse_duplicate_ids(name, records, root)
    fingerprint = data_fingerprint(records)
    gen = {**spec.generation, **cfg.generation}
    run_key = settings_fingerprint(model=model_key, generation=gen)
    rows = generate_predictions(
        name, records, generate_fn, gen, out / "predictions" / f"{name}.jsonl", fingerprint, cfg, run_key
    )
    scores: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for (language, subgroup), group_rows in score_groups(rows).items():
        res = score_rows(spec, group_rows, cfg)
        scores[language if subgroup == "all" else subgroup] = res.to_dict()
        for metric, value in res.aggregate.items():
            entry = {
                "task": name,
                "metric": metric,
                "protocol": res.protocol,
                "value": value,
                "n": len(group_rows),
                "language": language,
                "subgroup": subgroup,
                "model": model_name,
                "data_fingerprint": fingerprint,
                "split": split,
                "generation": gen,
                "versions": res.versions,
            }
            entry.update(confidence_interval(res, metric, cfg))
            results.append(entry)
    (out / "scores" / f"{name}.json").write_text(
        json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    logger.info("%s: scored %d samples (%s)", name, len(rows), spec.protocol)
    return results


def write_results(out: Path, cfg: EvalConfig, model_name: str, results: list[dict[str, Any]]) -> None:
    """Write ``results.json`` (entries + run metadata), ``results.md`` and ``results.png``.

    Args:
        out: the run's output folder.
        cfg: run settings.
        model_name: name of the model evaluated.
        results: every task's results entries.
    """
    meta = {
        "model": model_name,
        "tasks": list(cfg.tasks),
        "bootstrap": {"confidence": 0.95, "n_resamples": cfg.bootstrap_resamples, "seed": cfg.bootstrap_seed},
        "versions": library_versions(["torch", "transformers", "nltk", "pycocoevalcap", "rouge-score", "sacrebleu"]),
    }
    (out / "results.json").write_text(
        json.dumps({**meta, "results": results}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "results.md").write_text(markdown_table(results), encoding="utf-8")
    bar_chart(results, out / "results.png", title=model_name)


def score_groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The row groups scored separately: (language, subgroup) -> rows.

    ``("all", "all")`` is every row; each language of a multilingual task adds ``(lang, "all")``; each
    value of a ``SUBGROUP_KEYS`` field that takes at least two values adds ``("all", "field=value")``.

    Args:
        rows: prediction rows.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {("all", "all"): rows}
    languages = sorted({r["language"] for r in rows if r.get("language")})
    if len(languages) > 1:
        groups.update({(lang, "all"): [r for r in rows if r.get("language") == lang] for lang in languages})
    for key in SUBGROUP_KEYS:
        values = sorted({str(r[key]).strip() for r in rows if r.get(key) not in (None, "")})
        if len(values) > 1:
            for value in values:
                groups[("all", f"{key}={value}")] = [r for r in rows if str(r.get(key, "")).strip() == value]
    return groups


def confidence_interval(result: ScoreResult, metric: str, cfg: EvalConfig) -> dict[str, Any]:
    """``ci95`` ([low, high]) and ``bootstrap`` (method, resamples, seed) of one metric, or a note why not.

    Args:
        result: the group's scores.
        metric: aggregate key.
        cfg: run settings (``bootstrap_resamples``, ``bootstrap_seed``).
    """
    from medvl.eval.results import bootstrap_ci, item_values

    if cfg.bootstrap_resamples <= 0:
        return {}
    if metric in result.intervals:  # computed by the scorer (corpus BLEU from per-report n-gram counts)
        return {
            "ci95": list(result.intervals[metric]),
            "bootstrap": {
                "method": "percentile, reports resampled, corpus value recomputed from per-report counts",
                "n_resamples": cfg.bootstrap_resamples,
                "seed": cfg.bootstrap_seed,
                "n_items": len(result.per_item),
            },
        }
    values = item_values(result, metric)
    if values is None:
        return {
            "ci95": None,
            "bootstrap": {
                "note": "no interval: not a mean over items (corpus-level metric) or no "
                "per-item column registered in medvl.eval.results.ITEM_MEANS"
            },
        }
    low, high = bootstrap_ci(values, n_resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed)
    return {
        "ci95": [low, high],
        "bootstrap": {
            "method": "percentile, items resampled with replacement",
            "n_resamples": cfg.bootstrap_resamples,
            "seed": cfg.bootstrap_seed,
            "n_items": len(values),
        },
    }


def headline(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries shown in the table and chart (see ``HEADLINE``).

    Args:
        results: results entries.
    """
    return [r for r in results if r["metric"] in HEADLINE.get(r["protocol"], ())]


def markdown_table(results: list[dict[str, Any]]) -> str:
    """A markdown table (task, language, protocol, metric, value, n) of the headline metrics.

    Args:
        results: results entries.
    """
    lines = ["| task | language | protocol | metric | value | n |", "|---|---|---|---|---|---|"]
    rows = headline(results)
    for r in rows:
        if r.get("subgroup", "all") == "all":
            lines.append(
                f"| {r['task']} | {r['language']} | {r['protocol']} | {r['metric']} | {r['value']:.4f} | {r['n']} |"
            )
    intervals = [r for r in rows if r.get("ci95")]
    if intervals:
        lines += [
            "",
            "Bootstrap 95% intervals (percentile; resamples and seed in results.json):",
            "",
            "| task | language | subgroup | metric | value | 95% CI | n |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in intervals:
            lo, hi = r["ci95"]
            lines.append(
                f"| {r['task']} | {r['language']} | {r.get('subgroup', 'all')} | {r['metric']} | "
                f"{r['value']:.4f} | {lo:.4f}-{hi:.4f} | {r['n']} |"
            )
    return "\n".join(lines) + "\n"


def bar_chart(results: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Horizontal bar chart of the headline metrics (matplotlib, Agg backend).

    Args:
        results: results entries.
        path: PNG to write.
        title: chart title (the model).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in headline(results) if r.get("subgroup", "all") == "all"]
    labels = [
        f"{r['task']}{'' if r['language'] == 'all' else ' [' + r['language'] + ']'} · {r['metric']}" for r in rows
    ]
    values = [float(r["value"]) for r in rows]
    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.35 * len(rows) + 1)))
    ax.barh(range(len(rows)), values, color="#4472c4")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=7)
    ax.set_xlabel("score (CIDEr can exceed 1)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
