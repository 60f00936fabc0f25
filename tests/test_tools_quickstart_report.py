"""The quickstart's table: each metric of the model next to the blind baseline's, with its protocol."""

from __future__ import annotations

from medvl.tools.quickstart.report import quickstart_table


def _row(task, metric, n, model, blind, *, protocol="exact_norm", language="all", subgroup="all"):
    return {
        "task": task,
        "protocol": protocol,
        "metric": metric,
        "language": language,
        "subgroup": subgroup,
        "n": n,
        "model": model,
        **({} if blind is None else {"blind": blind}),
    }


def test_table_rows_in_reading_order_with_protocols():
    scores = [
        _row("synth_report", "sacrebleu", 2, 74.7391, 39.8924, protocol="report", language="en"),
        _row("synth_report", "bleu_4", 3, 0.6861, 0.3551, protocol="report"),
        _row("synth_vqa", "accuracy", 2, 0.5, 0.25, subgroup="question_type=nodule_size"),
        _row("synth_vqa", "accuracy", 2, 0.5, 0.25, subgroup="question_type=heart_size"),
        _row("synth_vqa", "closed_accuracy", 3, 1.0, 0.5),
        _row("synth_vqa", "accuracy_en", 3, 1.0, 0.5),  # in metrics.json, not in the table
    ]
    lines = quickstart_table({"scores": scores}).splitlines()
    assert lines[0].split() == ["task", "metric", "group", "n", "model", "blind", "protocol"]
    body = [line.split() for line in lines[2:]]
    assert body == [
        ["synth_vqa", "closed_accuracy", "all", "3", "1.000", "0.500", "exact_norm"],
        ["synth_vqa", "accuracy", "heart_size", "2", "0.500", "0.250", "exact_norm"],
        ["synth_vqa", "accuracy", "nodule_size", "(open)", "2", "0.500", "0.250", "exact_norm"],
        ["synth_report", "bleu_4", "all", "3", "0.686", "0.355", "report"],
        ["synth_report", "sacrebleu", "en", "2", "74.74", "39.89", "report"],  # BLEU on its 0-100 scale
    ]


def test_table_without_a_blind_run_leaves_the_column_empty():
    lines = quickstart_table({"scores": [_row("synth_vqa", "closed_accuracy", 3, 1.0, None)]}).splitlines()
    assert lines[2].split() == ["synth_vqa", "closed_accuracy", "all", "3", "1.000", "exact_norm"]
