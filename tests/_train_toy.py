"""Tiny stock-transformers LLaVA model and a learnable toy set for the training tests.

The stock ``LlavaForConditionalGeneration`` has the same parts as medvl's model under other names
(``multi_modal_projector``, top-level ``lm_head``), which the default part map covers; training it
checks the trainer independently of medvl's model code.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_TOKEN = 63
NUM_IMAGE_TOKENS = 4  # 16 px image, 8 px patches, CLS dropped


def tiny_llava(seed: int = 0):
    """A ~50k-parameter LLaVA (Llama text model + CLIP vision tower + MLP projector)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    text = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=8
    )
    config = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=IMAGE_TOKEN,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
    )
    return LlavaForConditionalGeneration(config)


class ToySet(torch.utils.data.Dataset):
    """Image brightness decides the answer token (bright -> 10, dark -> 11): needs vision to learn.

    Args:
        n: number of samples.
        seed: data seed.
    """

    def __init__(self, n: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.bright = torch.randint(0, 2, (n,), generator=g)
        self.noise = torch.randn(n, 3, 16, 16, generator=g) * 0.1

    def __len__(self) -> int:
        return len(self.bright)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        answer = 10 if self.bright[i] else 11
        ids = torch.tensor([1] + [IMAGE_TOKEN] * NUM_IMAGE_TOKENS + [5, 6, answer, 2])
        labels = torch.full_like(ids, -100)
        labels[-2:] = ids[-2:]
        pixels = self.noise[i] + (1.0 if self.bright[i] else -1.0)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "pixel_values": pixels}


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack equal-length toy samples."""
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def write_bright_dark(folder, n: int = 32, size: int = 32) -> Path:
    """A native-format JSONL set: "Is the image bright?" answered yes/no from the image alone.

    Args:
        folder: where to write ``train.jsonl`` and the PNGs.
        n: number of records (alternating bright / dark).
        size: image side in pixels.
    """
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        bright = i % 2 == 0
        pixels = np.clip(rng.normal(200 if bright else 50, 20, (size, size)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").save(folder / f"img{i}.png")
        lines.append(
            json.dumps(
                {
                    "id": f"s{i}",
                    "images": [f"img{i}.png"],
                    "messages": [
                        {"role": "user", "content": "<image>\nIs the image bright?"},
                        {"role": "assistant", "content": "yes" if bright else "no"},
                    ],
                }
            )
        )
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
