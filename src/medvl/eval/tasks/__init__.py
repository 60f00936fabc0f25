"""Benchmark tasks: ``get_task(name)``, ``available_tasks()``.

=================  ========  =============  =================================================
task               kind      protocol       release read
=================  ========  =============  =================================================
vqa_rad            vqa       llava_med_v1   OSF ``VQA_RAD Dataset Public.json`` + images
slake              vqa       exact_norm     ``Slake1.0/test.json`` (en + zh, per language)
slake_en/slake_zh  vqa       exact_norm     same, one language
pathvqa            vqa       llava_med_v1   ``pvqa/qas/test/test_qa.pkl`` + images
pmc_vqa            vqa       mcq            ``test_2.csv`` + ``images/``
omnimedvqa         vqa       mcq            ``QA_information/Open-access/*.json`` + ``Images/``
mimic_cxr          report    report         R2Gen ``annotation.json`` + ``images/``
iu_xray            report    report         R2Gen ``annotation.json`` + ``images/`` (2 views)
ct_rate            report    report         reports CSV + ``metadata/`` CSV (rescale, spacing) + volumes
m3d_vqa_closed     vqa       m3d            ``M3D_VQA_test.csv`` + 0..1 ``.npy`` volumes (intensity unit)
m3d_vqa_open       vqa       m3d            same, open-ended
m3d_cap            report    report         ``M3D_Cap.json`` + ``.npy`` + ``.txt``
synth_vqa          vqa       exact_norm     ``medvl data synth`` output (en + zh)
synth_report       report    report         ``medvl data synth`` output
=================  ========  =============  =================================================

Layouts, fields, value conventions and where each was checked: ``docs/benchmarks.md``.
"""

from __future__ import annotations

from functools import partial

from medvl.eval.tasks import m3d, mcq, reports, synth, vqa2d
from medvl.eval.tasks.base import TaskSpec, data_fingerprint, make_record

_SHORT = {"max_new_tokens": 32, "do_sample": False}
_MCQ = {"max_new_tokens": 16, "do_sample": False}
_LONG = {"max_new_tokens": 256, "do_sample": False}

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            "vqa_rad",
            "vqa",
            "llava_med_v1",
            vqa2d.load_vqa_rad,
            "VQA_RAD",
            generation=_SHORT,
            source="https://osf.io/89kps/ (CC0 1.0)",
        ),
        TaskSpec(
            "slake",
            "vqa",
            "exact_norm",
            vqa2d.load_slake,
            "Slake1.0",
            generation=_SHORT,
            bilingual=True,
            source="https://www.med-vqa.com/slake/ (CC BY 4.0 per the dataset card)",
        ),
        TaskSpec(
            "slake_en",
            "vqa",
            "exact_norm",
            partial(vqa2d.load_slake, language="en"),
            "Slake1.0",
            generation=_SHORT,
            source="https://www.med-vqa.com/slake/ (CC BY 4.0 per the dataset card)",
        ),
        TaskSpec(
            "slake_zh",
            "vqa",
            "exact_norm",
            partial(vqa2d.load_slake, language="zh"),
            "Slake1.0",
            generation=_SHORT,
            source="https://www.med-vqa.com/slake/ (CC BY 4.0 per the dataset card)",
        ),
        TaskSpec(
            "pathvqa",
            "vqa",
            "llava_med_v1",
            vqa2d.load_pathvqa,
            "pvqa",
            generation=_SHORT,
            source="https://github.com/UCSD-AI4H/PathVQA (MIT)",
        ),
        TaskSpec(
            "pmc_vqa",
            "vqa",
            "mcq",
            mcq.load_pmc_vqa,
            "PMC-VQA",
            default_split="test_2",
            generation=_MCQ,
            source="https://huggingface.co/datasets/xmcmic/PMC-VQA (CC BY-SA 4.0)",
        ),
        TaskSpec(
            "omnimedvqa",
            "vqa",
            "mcq",
            mcq.load_omnimedvqa,
            "OmniMedVQA",
            default_split="open-access",
            generation=_MCQ,
            source="https://huggingface.co/datasets/foreverbeliever/OmniMedVQA (per source set)",
        ),
        TaskSpec(
            "mimic_cxr",
            "report",
            "report",
            reports.load_mimic_cxr,
            "mimic_cxr",
            generation=_LONG,
            source="https://physionet.org/content/mimic-cxr-jpg/ (PhysioNet Credentialed Health Data License 1.5.0)",
        ),
        TaskSpec(
            "iu_xray",
            "report",
            "report",
            reports.load_iu_xray,
            "iu_xray",
            generation=_LONG,
            source="https://openi.nlm.nih.gov/ (Open-i; CC BY-NC-ND 4.0)",
        ),
        TaskSpec(
            "ct_rate",
            "report",
            "report",
            reports.load_ct_rate,
            "CT-RATE/dataset",
            default_split="validation",
            generation=_LONG,
            source="https://huggingface.co/datasets/ibrahimhamamci/CT-RATE (CC BY-NC-SA 4.0)",
        ),
        TaskSpec(
            "m3d_vqa_closed",
            "vqa",
            "m3d",
            m3d.load_m3d_vqa_closed,
            "M3D",
            generation=_SHORT,
            source="https://huggingface.co/datasets/GoodBaiBai88/M3D-VQA (Apache-2.0 per the card)",
        ),
        TaskSpec(
            "m3d_vqa_open",
            "vqa",
            "m3d",
            m3d.load_m3d_vqa_open,
            "M3D",
            generation=_LONG,
            source="https://huggingface.co/datasets/GoodBaiBai88/M3D-VQA (Apache-2.0 per the card)",
        ),
        TaskSpec(
            "m3d_cap",
            "report",
            "report",
            m3d.load_m3d_cap,
            "M3D",
            generation=_LONG,
            source="https://huggingface.co/datasets/GoodBaiBai88/M3D-Cap (Apache-2.0 per the card)",
        ),
        TaskSpec(
            "synth_vqa",
            "vqa",
            "exact_norm",
            synth.load_synth_vqa,
            "synth",
            generation=_SHORT,
            bilingual=True,
            source="medvl data synth (generated locally)",
        ),
        TaskSpec(
            "synth_report",
            "report",
            "report",
            synth.load_synth_report,
            "synth",
            generation=_LONG,
            source="medvl data synth (generated locally)",
        ),
    ]
}


def available_tasks() -> list[str]:
    """Names of the benchmark tasks."""
    return sorted(TASKS)


def get_task(name: str) -> TaskSpec:
    """The task called ``name``.

    Args:
        name: task name.

    Raises:
        ValueError: unknown name (lists the valid ones).
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(available_tasks())}") from None


__all__ = ["TASKS", "TaskSpec", "available_tasks", "data_fingerprint", "get_task", "make_record"]
