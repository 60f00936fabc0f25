"""MedM-VL importer: the independent oracle, config/weight translation, and equivalence on the fixtures.

The fixtures in ``../shared/fixtures/medmvl/`` hold tiny checkpoints in MedM-VL's saved format with the
values MedM-VL's own code computed on them. ``tests/_medmvl_reference.py`` re-implements MedM-VL's
numerics from the fixture READMEs alone; it is checked against the fixtures here, and then serves as
the oracle for the layouts the fixtures do not cover.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import _medmvl_reference as R

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "medmvl"
if not FIXTURES.is_dir():  # repository checked out elsewhere: the shared folder next to /work/main
    FIXTURES = Path("/work/shared/fixtures/medmvl")
FOLDERS = ["medmvl-2d-siglip-mlp", "medmvl-ct-siglip-attnpool"]

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="MedM-VL fixtures not available")


def _expected(name: str) -> dict:
    return json.loads((FIXTURES / name / "expected.json").read_text())


def _inputs(name: str, which: str) -> dict:
    return json.loads((FIXTURES / name / "inputs" / f"{which}.json").read_text())[0]


@pytest.fixture(scope="module")
def reference_models() -> dict[str, R.RefModel]:
    torch.manual_seed(0)
    return {
        name: R.load_ref_model(
            FIXTURES / name / "checkpoint",
            FIXTURES / name / "components" / "qwen2-tiny",
            FIXTURES / name / "components" / "siglip-tiny",
        )
        for name in FOLDERS
    }


def _ref_pixels(name: str) -> tuple[torch.Tensor, bool]:
    item = _inputs(name, "infer")
    if "image" in item:
        return R.preprocess_image(FIXTURES / name / "inputs" / item["image"][0], 64, [0.5] * 3, [0.5] * 3), False
    hu = np.load(FIXTURES / name / "inputs" / item["image3d"][0])
    return R.preprocess_ct_slices(hu, 64, 32, [0.5] * 3, [0.5] * 3), True


@pytest.mark.parametrize("name", FOLDERS)
def test_reference_reproduces_fixture(name: str, reference_models: dict) -> None:
    """The oracle reproduces every value MedM-VL computed (so it can judge layouts without fixtures)."""
    exp = _expected(name)
    ref = reference_models[name]
    tok = R.load_tokenizer(FIXTURES / name / "checkpoint")
    item = _inputs(name, "infer")
    prompt = R.prompt_text(item["conversations"], "eval")
    assert prompt == exp["inference"]["prompt"]
    ids = R.tokenize_chunks(tok, prompt)
    assert ids == exp["inference"]["input_ids"]
    px, is_3d = _ref_pixels(name)
    stored = np.load(FIXTURES / name / "expected" / ("pixel_values_channel0.npy" if is_3d else "pixel_values.npy"))
    np.testing.assert_array_equal(px[:, :1].numpy() if is_3d else px.numpy(), stored)
    feats = ref.encode(px, is_3d)
    np.testing.assert_allclose(feats.numpy(), np.load(FIXTURES / name / "expected" / "encoder_features.npy"), atol=1e-5)
    media = ref.connect(feats)
    embeds = ref.merge(ids, media[0])
    assert embeds.shape[0] == exp["inference"]["merged_len"]
    logits = ref.logits(embeds)[-1]
    assert float((logits - torch.from_numpy(np.load(FIXTURES / name / "expected" / "logits_last.npy"))).abs().max()) <= 1e-4
    assert ref.greedy(embeds, 8) == exp["inference"]["greedy"]["ids"]

    train = _inputs(name, "train_case")
    text = R.prompt_text(train["conversations"], "train")
    tids = R.tokenize_chunks(tok, text)
    labels = R.train_labels(tok, text, tids)
    assert tids == exp["training"]["input_ids"] and labels == exp["training"]["labels"]
    merged = R.merged_labels(tids, labels, media.shape[1])
    assert merged == exp["training"]["merged_labels"]
    assert ref.loss(ref.merge(tids, media[0]), merged) == pytest.approx(exp["training"]["loss"], rel=1e-5)


# ----------------------------------------------------------------------------- converted fixtures
@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    from medvl.convert.medmvl import convert_medmvl
    from medvl.inference import load_model

    out = {}
    for name in FOLDERS:
        folder = convert_medmvl(FIXTURES / name / "checkpoint", tmp_path_factory.mktemp(name))
        out[name] = load_model(folder, device="cpu")
    return out


def _collapse(ids: list[int], token_id: int, sentinel: int) -> list[int]:
    """Runs of placeholder ids -> one MedM-VL sentinel id (-200/-201)."""
    out: list[int] = []
    for t in ids:
        if t == token_id:
            if not out or out[-1] != sentinel:
                out.append(sentinel)
        else:
            out.append(t)
    return out


@pytest.mark.parametrize("name", FOLDERS)
def test_converted_model_reproduces_medmvl(name: str, converted: dict) -> None:
    """Pixels, ids, merged length, last logits, greedy continuation and training loss equal MedM-VL's."""
    from medvl.data.labels import ConversationEncoder
    from medvl.data.records import load_records
    from medvl.inference import generate, prepare_batch

    exp = _expected(name)
    model, processor = converted[name]
    records = load_records(FIXTURES / name / "inputs" / "infer.json", root=FIXTURES / name / "inputs")
    batch = prepare_batch(model, processor, records)
    is_3d = "volume_values" in batch
    if is_3d:
        vol = batch["volume_values"]
        assert vol.shape == (1, 3, 32, 64, 64)
        np.testing.assert_array_equal(vol[:, :1].numpy(), np.load(FIXTURES / name / "expected" / "pixel_values_channel0.npy"))
        assert torch.equal(vol[:, 0], vol[:, 1]) and torch.equal(vol[:, 0], vol[:, 2])
        token_id, sentinel = model.config.volume_token_id, -201
    else:
        np.testing.assert_array_equal(batch["pixel_values"].numpy(), np.load(FIXTURES / name / "expected" / "pixel_values.npy"))
        token_id, sentinel = model.config.image_token_id, -200
    ids = batch["input_ids"][0].tolist()
    assert _collapse(ids, token_id, sentinel) == exp["inference"]["input_ids"]
    assert len(ids) == exp["inference"]["merged_len"]

    with torch.no_grad():
        logits = model(**batch).logits[0, -1]
    expected_logits = torch.from_numpy(np.load(FIXTURES / name / "expected" / "logits_last.npy"))
    assert float((logits - expected_logits).abs().max()) <= 1e-4

    greedy = exp["inference"]["greedy"]
    with torch.no_grad():
        seq = model.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert seq[0, len(ids) :].tolist() == greedy["ids"]
    assert generate(model, processor, records, max_new_tokens=8, progress=False) == [exp["inference"]["inference_py_output"]]

    # training: medvl's label rule gives MedM-VL's supervised tokens and loss
    train = load_records(FIXTURES / name / "inputs" / "train_case.json", root=FIXTURES / name / "inputs")[0]
    enc = ConversationEncoder.from_processor(processor).encode(train.messages, record=train.id)
    assert _collapse(enc.input_ids, token_id, sentinel) == exp["training"]["input_ids"]
    assert enc.labels == exp["training"]["merged_labels"]
    media = {"volume_values": batch["volume_values"]} if is_3d else {"pixel_values": batch["pixel_values"]}
    with torch.no_grad():
        out = model(input_ids=torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels]), **media)
    assert float(out.loss) == pytest.approx(exp["training"]["loss"], rel=1e-5)
    # logits only at the supervised positions: one per loss term MedM-VL counted
    assert out.logits.shape[0] == sum(label != -100 for label in exp["training"]["merged_labels"])
