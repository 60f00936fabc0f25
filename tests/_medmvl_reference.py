"""Independent re-implementation of MedM-VL (commit 225fc0f) numerics, used as the test oracle.

Written from the fixture READMEs in ``tests/fixtures/medmvl/`` (no MedM-VL code, no medvl code):
the ``qwen2`` (Vicuna-style) template, chunk-wise tokenisation around the markers with sentinel ids
-200/-201, the label rule, 2D and CT preprocessing, encoder feature selection, the connectors
(mlp, attn_pooling with 8 heads, spatial_pooling), and the merge + LLM forward. The tests check this
oracle against the fixtures' ``expected/`` arrays, then compare medvl's converted models against it on
layouts the fixtures do not cover (CLIP select_layer -2/patch, MedM-CLIP + spatial pooling).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

IMAGE_ID = -200
IMAGE3D_ID = -201
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
EOT = "<|im_end|>"


# ----------------------------------------------------------------------------- text
def prompt_text(conversations: list[dict[str, str]], mode: str) -> str:
    """MedM-VL ``qwen2`` template: train mode renders every round, eval mode only the human question."""
    humans = [c["value"] for c in conversations if c["from"] == "human"]
    gpts = [c["value"] for c in conversations if c["from"] == "gpt"]
    if mode == "eval":
        return f"{SYSTEM} USER: {humans[-1].strip()} ASSISTANT:"
    text = SYSTEM + " "
    for q, a in zip(humans, gpts):
        text += f"USER: {q} ASSISTANT: {a}{EOT}"
    return text


def tokenize_chunks(tokenizer: Any, text: str) -> list[int]:
    """Split at ``<image>``/``<image3d>``; tokenise each chunk alone; the marker is one sentinel id."""
    ids: list[int] = []
    for part in re.split(r"(<image3d>|<image>)", text):
        if part == "<image>":
            ids.append(IMAGE_ID)
        elif part == "<image3d>":
            ids.append(IMAGE3D_ID)
        elif part:
            ids.extend(tokenizer(part, add_special_tokens=False)["input_ids"])
    return ids


def train_labels(tokenizer: Any, text: str, ids: list[int]) -> list[int]:
    """MedM-VL's label rule: mask each round's instruction part; supervise answer + its ``<|im_end|>``."""
    labels = list(ids)
    rounds = text.split(EOT)
    pos = 0
    for rnd in rounds:
        if not rnd:
            break
        instruction = rnd.split(" ASSISTANT:")[0] + " ASSISTANT:"
        n_round = len(tokenize_chunks(tokenizer, rnd))
        n_instr = len(tokenize_chunks(tokenizer, instruction))
        labels[pos : pos + n_instr] = [-100] * n_instr
        pos += n_round + 1
    labels[pos:] = [-100] * (len(labels) - pos)
    return labels


# ----------------------------------------------------------------------------- pixels
def preprocess_image(path: str | Path, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """PIL RGB -> bicubic resize to size x size -> /255 -> (x - mean) / std, as (1, 3, S, S) float32."""
    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    return _rescale_normalize(np.asarray(img)[None].transpose(0, 3, 1, 2), mean, std)


def _rescale_normalize(u8: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    x = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    m = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    s = np.asarray(std, dtype=np.float32)[None, :, None, None]
    return torch.from_numpy(((x - m) / s).astype(np.float32))


def preprocess_ct_slices(hu: np.ndarray, size: int, depth: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """CT through the 2D tower: HU -> 0..255, foreground crop, trilinear resize, uint8 truncation.

    Returns (1, 3, depth, size, size) float32.
    """
    v = (np.clip(hu.astype(np.float64), -1000, 1000) + 1000) / 2000 * 255
    nz = np.argwhere(v > 0)
    lo, hi = nz.min(0), nz.max(0) + 1
    v = v[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    t = torch.from_numpy(v.astype(np.float32))[None, None]
    t = F.interpolate(t, size=(depth, size, size), mode="trilinear", align_corners=False)[0, 0]
    u8 = t.to(torch.uint8).numpy()  # truncation toward zero
    slices = np.repeat(u8[:, None], 3, axis=1)  # (D, 3, S, S)
    px = _rescale_normalize(slices, mean, std)  # (D, 3, S, S)
    return px.permute(1, 0, 2, 3)[None].contiguous()


# ----------------------------------------------------------------------------- model
@dataclass
class RefModel:
    """MedM-VL's model pieces, filled from a checkpoint's state dict."""

    llm: torch.nn.Module
    encoder: torch.nn.Module | None  # HF vision tower (2D) or the 3D ViT callable
    encoder_kind: str  # "hf" | "medmclip"
    select_layer: int
    select_feature: str
    connector: dict[str, torch.Tensor]
    connector_type: str
    volume_through_2d: bool

    @torch.no_grad()
    def encode(self, pixel: torch.Tensor, is_3d: bool) -> torch.Tensor:
        if is_3d and self.volume_through_2d:
            b, c, d, h, w = pixel.shape
            flat = pixel.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
            feats = self._select(self.encoder(flat, output_hidden_states=True).hidden_states)
            return feats.reshape(b, d, *feats.shape[1:])
        if self.encoder_kind == "medmclip":
            return self._select(self.encoder(pixel))
        return self._select(self.encoder(pixel, output_hidden_states=True).hidden_states)

    def _select(self, hidden: Any) -> torch.Tensor:
        h = hidden[self.select_layer]
        return h[:, 1:] if self.select_feature == "patch" else h

    @torch.no_grad()
    def connect(self, feats: torch.Tensor, grid: tuple[int, int, int] | None = None) -> torch.Tensor:
        p = self.connector
        if self.connector_type == "attn_pooling":
            x = feats.reshape(feats.shape[0], -1, feats.shape[-1])
            dim = x.shape[-1]
            mha = torch.nn.MultiheadAttention(dim, 8, batch_first=True)
            mha.load_state_dict(
                {
                    "in_proj_weight": p["attn.in_proj_weight"],
                    "in_proj_bias": p["attn.in_proj_bias"],
                    "out_proj.weight": p["attn.out_proj.weight"],
                    "out_proj.bias": p["attn.out_proj.bias"],
                }
            )
            mha.eval()
            q = p["query"][None].expand(x.shape[0], -1, -1)
            x = mha(q, x, x, need_weights=False)[0]
        elif self.connector_type == "spatial_pooling":
            assert grid is not None, "spatial_pooling needs the patch grid"
            b, n, dim = feats.shape
            x = feats.transpose(1, 2).reshape(b, dim, *grid)
            x = F.avg_pool3d(x, kernel_size=2, stride=2)
            x = x.flatten(2).transpose(1, 2)
        else:
            x = feats
        i = 0
        while f"connector.{i}.weight" in p:
            x = F.linear(x, p[f"connector.{i}.weight"], p[f"connector.{i}.bias"])
            if f"connector.{i + 2}.weight" in p:
                x = F.gelu(x)
            i += 2
        return x

    @torch.no_grad()
    def merge(self, ids: list[int], media: torch.Tensor) -> torch.Tensor:
        """Replace the single sentinel id by ``media`` (N, H); embed the rest."""
        emb = self.llm.get_input_embeddings()
        parts = []
        chunk: list[int] = []
        for t in ids:
            if t < 0:
                if chunk:
                    parts.append(emb(torch.tensor(chunk)))
                parts.append(media)
                chunk = []
            else:
                chunk.append(t)
        if chunk:
            parts.append(emb(torch.tensor(chunk)))
        return torch.cat(parts, 0)

    @torch.no_grad()
    def logits(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.llm(inputs_embeds=embeds[None], use_cache=False).logits[0]

    @torch.no_grad()
    def greedy(self, embeds: torch.Tensor, n: int) -> list[int]:
        """Greedy decoding without a cache (slow, plain): argmax, append its embedding, repeat."""
        out = []
        emb = self.llm.get_input_embeddings()
        x = embeds
        for _ in range(n):
            nxt = int(self.logits(x)[-1].argmax())
            out.append(nxt)
            x = torch.cat([x, emb(torch.tensor([nxt]))], 0)
        return out

    @torch.no_grad()
    def loss(self, embeds: torch.Tensor, merged_labels: list[int]) -> float:
        logits = self.logits(embeds)
        lab = torch.tensor(merged_labels)
        return float(F.cross_entropy(logits[:-1], lab[1:], ignore_index=-100))


def merged_labels(ids: list[int], labels: list[int], n_media: int) -> list[int]:
    out: list[int] = []
    for t, lab in zip(ids, labels):
        out.extend([-100] * n_media if t < 0 else [lab])
    return out


def load_ref_model(ckpt: Path, llm_dir: Path, vision_dir: Path | None, medmclip: Any = None) -> RefModel:
    """Build the LLM and tower from their config folders and fill them from ``ckpt``'s weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionModel, SiglipVisionModel

    cfg = json.loads((ckpt / "config.json").read_text())
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        sd.update(load_file(f))
    llm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(llm_dir))
    llm_sd = {k[4:]: v for k, v in sd.items() if k.startswith("llm.")}
    if "lm_head.weight" not in llm_sd:
        llm_sd["lm_head.weight"] = llm_sd["model.embed_tokens.weight"]
    llm.load_state_dict(llm_sd, strict=True)
    llm.eval()
    volume_through_2d = cfg.get("lvlm_encoder_image3d_type") is None
    if cfg.get("lvlm_encoder_image_type"):
        etype = cfg["lvlm_encoder_image_type"]
        vcfg = AutoConfig.from_pretrained(vision_dir)
        vcfg = getattr(vcfg, "vision_config", vcfg)
        enc = (SiglipVisionModel if etype == "siglip" else CLIPVisionModel)(vcfg)
        # transformers 5 vision models have no ``vision_model.`` wrapper level any more
        enc_sd = {
            k[len("encoder_image.encoder.") :].removeprefix("vision_model."): v
            for k, v in sd.items()
            if k.startswith("encoder_image.")
        }
        missing, unexpected = enc.load_state_dict(enc_sd, strict=False)
        assert not missing and not unexpected, (missing, unexpected)
        enc.eval()
        prefix, layer, feat, kind = (
            "connector_image.",
            cfg["lvlm_encoder_image_select_layer"],
            cfg["lvlm_encoder_image_select_feature"],
            "hf",
        )
        ctype = cfg["lvlm_connector_image_type"]
    else:
        enc = medmclip
        prefix, layer, feat, kind = (
            "connector_image3d.",
            cfg["lvlm_encoder_image3d_select_layer"],
            cfg["lvlm_encoder_image3d_select_feature"],
            "medmclip",
        )
        ctype = cfg["lvlm_connector_image3d_type"]
    conn = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return RefModel(llm, enc, kind, layer, feat, conn, ctype, volume_through_2d)


def load_tokenizer(ckpt: Path) -> Any:
    """The slow-format Qwen2 tokenizer saved in the checkpoint (vocab.json + merges.txt)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpt)


# ----------------------------------------------------------------------------- 3D encoders
class MedMClipViT(torch.nn.Module):
    """MedM-CLIP's vision encoder as its README/code describe it (vit-pytorch style, no final norm).

    Patch vector order (ph, pw, pd, c); LayerNorm -> Linear -> LayerNorm; CLS token prepended, then a
    position embedding over n+1 rows; torch ``TransformerEncoderLayer`` blocks (post-norm, ReLU);
    returns the list of block outputs (no embedding entry).
    """

    def __init__(self, frames: int, size: int, fp: int, p: int, dim: int, depth: int, heads: int, mlp: int):
        super().__init__()
        self.fp, self.p = fp, p
        patch_dim = fp * p * p
        n = (frames // fp) * (size // p) ** 2
        self.to_patch_embedding = torch.nn.Sequential(
            torch.nn.Identity(), torch.nn.LayerNorm(patch_dim), torch.nn.Linear(patch_dim, dim), torch.nn.LayerNorm(dim)
        )
        self.pos_embedding = torch.nn.Parameter(torch.randn(1, n + 1, dim))
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.transformer_layers = torch.nn.ModuleList(
            [
                torch.nn.TransformerEncoderLayer(dim, heads, dim_feedforward=mlp, dropout=0.0, batch_first=True)
                for _ in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, c, d, h, w = x.shape
        fp, p = self.fp, self.p
        # b c (f pf) (h p1) (w p2) -> b (f h w) (p1 p2 pf c)
        x = x.reshape(b, c, d // fp, fp, h // p, p, w // p, p).permute(0, 2, 4, 6, 5, 7, 3, 1)
        x = x.reshape(b, (d // fp) * (h // p) * (w // p), p * p * fp * c)
        x = self.to_patch_embedding(x)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], 1) + self.pos_embedding
        out = []
        for layer in self.transformer_layers:
            x = layer(x)
            out.append(x)
        return out


def monai_vit_hidden_states(vit: torch.nn.Module):
    """Wrap a MONAI ``ViT`` (M3D-CLIP's vision encoder) to return its block outputs (no final norm)."""

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return vit(x)[1]

    return run
