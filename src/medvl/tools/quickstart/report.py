"""What the quickstart shows: a loss-curve PNG and a table of every metric next to the blind baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvl.tools.quickstart.evaluation import find_score
from medvl.tools.synth.text import CLOSED_TYPES, OPEN_TYPES

# Report metrics in the table: pycocoevalcap's (PTB tokens) over all reports, and per language the
# two computed with a tokenizer that splits Chinese (sacrebleu "zh", rouge-score with jieba).
REPORT_METRICS_ALL = ("bleu_4", "rouge_l", "meteor", "cider")
REPORT_METRICS_PER_LANGUAGE = ("sacrebleu", "rougeL")


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


def _table_keys(scores: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(task, metric, language, subgroup) of the rows shown, in reading order."""
    types = sorted({r["subgroup"].removeprefix("question_type=") for r in scores if r["subgroup"] != "all"})
    ordered = [q for q in CLOSED_TYPES + OPEN_TYPES if q in types] + [
        q for q in types if q not in CLOSED_TYPES + OPEN_TYPES
    ]
    keys = [("synth_vqa", "closed_accuracy", lang, "all") for lang in ("all", "en", "zh")]
    keys += [("synth_vqa", "accuracy", "all", f"question_type={q}") for q in ordered]
    keys += [("synth_vqa", "open_accuracy", lang, "all") for lang in ("all", "en", "zh")]
    keys += [("synth_report", m, "all", "all") for m in REPORT_METRICS_ALL]
    keys += [("synth_report", m, lang, "all") for m in REPORT_METRICS_PER_LANGUAGE for lang in ("en", "zh")]
    return keys


def quickstart_table(metrics: dict[str, Any]) -> str:
    """A plain-text table: each headline metric of the model next to the blind baseline's, with
    the ``medvl eval`` task and protocol that computed it (``metrics.json`` has every metric).

    Args:
        metrics: the quickstart's metrics (``scores``: rows of
            :func:`medvl.tools.quickstart.evaluation.compare_runs`).
    """
    header = f"{'task':<13} {'metric':<16} {'group':<26} {'n':>5} {'model':>8} {'blind':>8}  protocol"
    lines = [header, "-" * len(header)]
    for task, metric, language, subgroup in _table_keys(metrics["scores"]):
        row = find_score(metrics["scores"], task, metric, language=language, subgroup=subgroup)
        if row is None:
            continue
        group = subgroup.removeprefix("question_type=") if subgroup != "all" else language
        if subgroup != "all" and subgroup.removeprefix("question_type=") not in CLOSED_TYPES:
            group += " (open)"
        digits = 2 if metric == "sacrebleu" else 3  # sacrebleu is on a 0-100 scale
        model, blind = row.get("model"), row.get("blind")
        lines.append(
            f"{task:<13} {metric:<16} {group:<26} {row['n']:>5} "
            f"{'' if model is None else f'{model:.{digits}f}':>8} {'' if blind is None else f'{blind:.{digits}f}':>8}"
            f"  {row['protocol']}"
        )
    return "\n".join(lines)
