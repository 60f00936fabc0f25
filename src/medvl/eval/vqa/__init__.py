"""Medical VQA scoring protocols, each reproducing one reference implementation.

=================  ==========================================================================
``llava_med_v1``   LLaVA-Med v1.0.0 (``run_eval_batch.py``): closed accuracy = normalised
                   reference is a substring of the normalised prediction; open "recall" =
                   token recall with unclipped counts; open accuracy = substring hit.
``exact_norm``     lmms-eval SLAKE: exact match after its normaliser (Chinese yes/no synonyms).
``medevalkit``     MedEvalKit: yes/no XOR rule for closed, BLEU/ROUGE/P/R/F1 for open; its
                   precision/recall/F1 key mix-up reproduced with ``reference_prf_mixup=True``.
``m3d``            M3D-Bench: closed = "<letter>." in the output; open = per-sample BLEU-1,
                   ROUGE-1, METEOR (+ BERTScore given a local model), averaged.
``mcq``            option-letter extraction for multiple-choice sets, similarity fallback.
``uni_med``        Uni-Med (MedM-VL-2D's numbers): LLaVA-Med normaliser, substring closed
                   accuracy, sentence BLEU-1..4, token F1, classification exact match.
=================  ==========================================================================

Every result names its protocol. Aggregate keys of an answer type without items (e.g. the open
metrics of a closed-only set) are omitted rather than reported as 0.
"""

from medvl.eval.vqa.base import (
    VQAItem,
    available_protocols,
    get_protocol,
    normalize_answer_type,
    register_protocol,
    score_vqa,
)

__all__ = ["VQAItem", "available_protocols", "get_protocol", "normalize_answer_type", "register_protocol", "score_vqa"]
