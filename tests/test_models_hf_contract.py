"""The Hugging Face contracts other libraries rely on: ``logits`` are (B, L, vocab) with labels too,
``base_model`` is the body without the LM head (``last_hidden_state``), content parts carry their
media, and TRL's ``SFTTrainer`` trains the tiny medvl model. medvl's own trainer still computes
logits at the supervised positions only."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

try:  # tests/ as a package or as a plain folder on sys.path
    from tests._train_toy import write_bright_dark
except ImportError:
    from _train_toy import write_bright_dark
from medvl.models import MedVLForConditionalGeneration, MedVLProcessor


def _conversation(bright: bool) -> tuple[Image.Image, list[dict]]:
    image = Image.fromarray(np.full((64, 64, 3), 220 if bright else 30, np.uint8))
    return image, [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "Is the image bright?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "yes" if bright else "no"}]},
    ]


def test_content_parts_carry_their_images(tiny_processor):
    image, conversation = _conversation(True)
    from_parts = tiny_processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, processor_kwargs={"padding": True}
    )
    explicit = tiny_processor(text=[tiny_processor.apply_chat_template(conversation)], images=[image], padding=True)
    assert torch.equal(from_parts["input_ids"], explicit["input_ids"])
    assert torch.equal(from_parts["pixel_values"], explicit["pixel_values"])


def test_base_model_is_the_body_without_the_head(tiny_model, tiny_processor):
    image, conversation = _conversation(False)
    batch = tiny_processor.apply_chat_template(conversation, tokenize=True)
    labels = batch["input_ids"].clone()
    with torch.no_grad():
        body = tiny_model.base_model(**batch, use_cache=False)
        out = tiny_model(**batch, labels=labels)
    assert body.last_hidden_state.shape == (*batch["input_ids"].shape, tiny_model.config.text_config.hidden_size)
    head = tiny_model.get_output_embeddings()
    torch.testing.assert_close(head(body.last_hidden_state), out.logits, atol=1e-5, rtol=1e-5)
    # the view owns no parameters: the model's state dict is unchanged by its existence
    assert not any(name.startswith("model.") for name in tiny_model.state_dict())


def test_trl_sft_trainer_trains_the_tiny_model(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = MedVLForConditionalGeneration.from_pretrained(tiny_model_dir)
    processor = MedVLProcessor.from_pretrained(tiny_model_dir)
    rows = []
    for i in range(8):
        image, conversation = _conversation(i % 2 == 0)
        del conversation[0]["content"][0]["image"]  # TRL's layout: images in "images", bare image parts
        rows.append({"images": [image], "messages": conversation})
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        seed=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)

    # TRL's loss (fused LM head over base_model's hidden states) equals medvl's own loss on a batch
    batch = trainer.data_collator([dict(r) for r in rows[:4]])
    assert batch["pixel_values"].shape[0] == 4
    with torch.no_grad():
        fused = model(**batch, fused_lm_head=True)
        ours = model(**batch)
    assert ours.logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)
    fused_loss = -fused.log_probs.sum() / fused.label_mask.sum()
    torch.testing.assert_close(fused_loss, ours.loss, atol=1e-5, rtol=1e-5)

    before = {n: p.detach().clone() for n, p in model.named_parameters() if "image_connector" in n}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def test_medvl_trainer_asks_for_supervised_logits_but_predict_gets_full_logits(tiny_model_dir, tmp_path):
    from transformers import TrainingArguments

    from medvl.data.collator import PaddedCollator
    from medvl.data.dataset import ConversationDataset
    from medvl.data.records import load_records
    from medvl.train.trainer import MedVLTrainer

    model = MedVLForConditionalGeneration.from_pretrained(tiny_model_dir)
    processor = MedVLProcessor.from_pretrained(tiny_model_dir)
    dataset = ConversationDataset(load_records(write_bright_dark(tmp_path / "data", 8)), processor)
    collator = PaddedCollator(pad_token_id=processor.tokenizer.pad_token_id)
    shapes: list[tuple[int, ...]] = []
    model.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.logits.shape)))
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = MedVLTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset, data_collator=collator)
    trainer.train()
    batch = collator([dataset[i] for i in range(4)])
    n_supervised = int((batch["labels"][:, 1:] != -100).sum())
    assert shapes == [(n_supervised, model.config.text_config.vocab_size)] * 2  # training: (K, vocab)

    shapes.clear()
    assert "eval_loss" in trainer.evaluate()  # loss only: supervised positions only again
    assert all(len(s) == 2 for s in shapes) and len(shapes) == 2
    shapes.clear()
    prediction = trainer.predict(dataset)  # logits wanted: the standard (B, L, vocab)
    assert prediction.predictions.ndim == 3
    assert prediction.predictions.shape[0] == len(dataset)
    assert prediction.predictions.shape[-1] == model.config.text_config.vocab_size
    assert all(len(s) == 3 for s in shapes)
