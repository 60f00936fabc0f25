"""rename_keys: the first row whose regex matches a key whole renames it; None drops; the rest is reported."""

from __future__ import annotations

from medvl.models.key_mapping import rename_keys

ROWS = [
    (r"encoder\.(?:vision_model\.)?(.+)", r"vision_tower.\1"),
    (r"connector\.(\d+)\.(weight|bias)", r"connector.mlp.\1.\2"),
    (r"connector\.(query)", r"connector.\1"),
    (r"text\..+", None),
    (r"connector\..+", r"never.used"),  # a later row: never reached by keys an earlier row matches
]


def test_first_whole_match_wins_and_groups_expand():
    source = {
        "encoder.vision_model.embeddings.weight": 1,
        "encoder.post_layernorm.bias": 2,
        "connector.0.weight": 3,
        "connector.query": 4,
        "connector.attn.in_proj_weight": 5,
    }
    renamed, unmapped = rename_keys(source, ROWS)
    assert renamed == {
        "vision_tower.embeddings.weight": 1,
        "vision_tower.post_layernorm.bias": 2,
        "connector.mlp.0.weight": 3,
        "connector.query": 4,
        "never.used": 5,
    }
    assert unmapped == []


def test_dropped_and_unmapped_keys():
    renamed, unmapped = rename_keys(
        {"text.encoder.layer.0.weight": 1, "xconnector.0.weight": 2, "vision_model.embeddings.weight": 3}, ROWS
    )
    assert renamed == {}  # the text row drops on purpose; the others match no row WHOLE
    assert unmapped == ["xconnector.0.weight", "vision_model.embeddings.weight"]
