"""Recipe search for ``medvl quickstart``: how well does a from-scratch model learn the phantoms
in a fixed number of optimizer steps?

Steps are the currency: the quickstart's wall-clock budget on 2 CPU cores buys a known number of
steps of a given architecture (measure the per-step time with ``--time-steps``), and the accuracy
reached after that many steps does not depend on the hardware the search ran on (fp32, TF32 off).

The model is medvl's own ``MedVLForConditionalGeneration`` (built from configs, random weights),
the data medvl's synthetic phantoms rendered in memory; only the loop is a plain one here.

    python benchmarks/quickstart_recipes.py --kind 2d --steps 1200 --img 128 --patch 8 --pool 2

The 2D recipe of 2026-11-28 (conv stem, stage-0 encoder pretraining, frozen tower, 4 max-pooled
tokens, grouped conversations) was found with this harness; ``benchmarks/README.md`` ("Quickstart
recipe") lists those runs, e.g.::

    python benchmarks/quickstart_recipes.py --n 2000 --group --steps 600 --eval-every 200 \
        --stem 16,32,64,128 --lr 1e-3 --pool 4 --pool-mode max --pretrain-steps 800 \
        --pretrain-layer 0 --feature-layer 0 --freeze-vision

Earlier findings (benchmarks/results/, H200 in fp32 for the accuracy curves; CPU timing with 2 threads on
the same machine's CPU; phantoms before nodules got their display mapping and density gain):

* One conversation per case (all questions of an image in one sample, ``--single`` off) was worse
  per step AND 2.8x slower per step than single-turn records: 0.46 vs 0.60 closed accuracy at
  1600 steps (p16). The quickstart trains on the single-turn records as written.
* Heart size and effusion are learned (0.9-1.0 by 2000-2500 steps); nodule presence, count and
  side stayed at chance in every 2D and 3D variant (patch 8 + 2x2 pooling, 256 px, a 4-layer
  tower, lr 5e-4/6e-4/1e-3, batch 32, closed-only training, 6000 instead of 2000 cases).
* 3D: a 4x16x16-patch ViT on 32x64x64 (128 tokens) reached 0.71 at 2500 steps (heart 1.0,
  effusion 1.0), 4x8x8 + 2x2x2 pooling was worse (0.57); blind 0.43-0.45.
* CPU seconds per step (2 threads, batch 16): 2D p16 single-turn 0.137, 2D p16 multi-turn 0.378,
  p8 + pool 0.427, 3D 4x16x16 0.41 (multi-turn).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from multiprocessing import Pool

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from medvl.tools.synth.dataset import _case_rng, assign_splits, case_questions  # noqa: E402
from medvl.tools.synth.findings import random_findings  # noqa: E402
from medvl.tools.synth.phantoms import Geometry2D, Geometry3D, render_ct, render_radiograph  # noqa: E402
from medvl.tools.synth.text import CLOSED_TYPES, answer_for, balance_keep_probabilities  # noqa: E402


def _prep_2d(args):
    i, seed, img = args

    f = random_findings(_case_rng(seed, i, 0))
    # rendered at the model's size over a 36 cm field and taken to 8 bits as load_image does
    raw = render_radiograph(f, _case_rng(seed, i, 1), Geometry2D(size=img, spacing=358.4 / img)).astype(np.float32)
    small = np.round(raw / 65535 * 255) / 255
    return (small - 0.5) / 0.5


GEOM3D = Geometry3D()


def _prep_3d(args):
    i, seed, shape = args
    f = random_findings(_case_rng(seed, i, 0))
    rng = _case_rng(seed, i, 1)
    rng.integers(3)  # the orientation draw of synthesize(); here always LPS
    hu, _ = render_ct(f, rng, GEOM3D, ("L", "P", "S"))
    # stored axes: i toward L, j toward P, k toward S -> (k, j, i) is already S, P, L increasing
    spl = np.ascontiguousarray(hu.transpose(2, 1, 0)).astype(np.float32)
    win = np.clip((spl - (-600 - 750)) / 1500, 0, 1)  # lung window -600/1500 -> [0, 1]
    t = torch.from_numpy(win)[None, None]
    t = torch.nn.functional.interpolate(t, size=shape, mode="trilinear", align_corners=False, antialias=False)
    return ((t[0] - 0.5) / 0.5).numpy()


def build_data(kind, n, seed, img, workers, shape3d):
    findings = [random_findings(_case_rng(seed, i, 0)) for i in range(n)]
    keep = balance_keep_probabilities(
        {q: [a for a in (answer_for(f, q, "en") for f in findings) if a is not None] for q in CLOSED_TYPES}
    )
    splits = assign_splits(n, seed)
    qas = [case_questions(f, _case_rng(seed, i, 2), keep) for i, f in enumerate(findings)]
    cache = os.path.join(
        os.environ.get("QS_CACHE", "/tmp"),
        f"qs2_{kind}_{n}_{seed}_{img if kind == '2d' else (shape3d, GEOM3D.shape)}.npy".replace(" ", ""),
    )
    if os.path.exists(cache):
        return findings, splits, qas, np.load(cache)
    with Pool(workers) as pool:
        if kind == "2d":
            pix = pool.map(_prep_2d, [(i, seed, img) for i in range(n)], chunksize=8)
        else:
            pix = pool.map(_prep_3d, [(i, seed, shape3d) for i in range(n)], chunksize=4)
    pix = np.stack(pix)
    np.save(cache + ".tmp.npy", pix)
    os.replace(cache + ".tmp.npy", cache)
    return findings, splits, qas, pix


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kind", default="2d")
    p.add_argument("--n", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--vlr", type=float, default=0.0, help="learning rate of the encoder + connector (default: --lr)")
    p.add_argument("--loss-reduction", default="token", choices=["token", "sample", "square"])
    p.add_argument("--max-token", action="store_true", help="append a max-pooled summary token to the image tokens")
    p.add_argument("--oracle", action="store_true", help="diagnostic: image features are the ground-truth labels")
    p.add_argument(
        "--group",
        action="store_true",
        help="conversations of independent questions (one per finding family), reports alone",
    )
    p.add_argument("--pool-mode", default="avg", choices=["avg", "max"])
    p.add_argument("--pretrain-steps", type=int, default=0, help="stage 0: multi-label pretraining of the 2D tower")
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--pretrain-layer", type=int, default=-1, help="tower hidden state the pretraining head reads")
    p.add_argument("--zero-res", action="store_true", help="zero-init the tower's residual branches")
    p.add_argument("--feature-layer", type=int, default=-1)
    p.add_argument("--freeze-vision", action="store_true")
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--img", type=int, default=128)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--pool", type=int, default=1)
    p.add_argument("--stem", default="", help="conv stem widths, e.g. 16,32,64 (2D)")
    p.add_argument("--vdim", type=int, default=128)
    p.add_argument("--vlayers", type=int, default=2)
    p.add_argument("--tdim", type=int, default=128)
    p.add_argument("--tlayers", type=int, default=2)
    p.add_argument(
        "--single", action="store_true", help="single-turn training records instead of one conversation per case"
    )
    p.add_argument("--closed-only", action="store_true")
    p.add_argument("--blind", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--time-steps", type=int, default=0, help="only time this many steps")
    p.add_argument("--shape3d", default="32,64,64")
    p.add_argument("--vpatch3d", default="4,8,8")
    p.add_argument("--pool3d", default="1,1,1")
    p.add_argument("--geom3d", default="96,96,48:3.5,3.5,5.0")
    p.add_argument("--tag", default="")
    p.add_argument("--out", default="")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    shape3d = tuple(int(x) for x in a.shape3d.split(","))
    global GEOM3D
    gs, gsp = a.geom3d.split(":")
    GEOM3D = Geometry3D(tuple(int(x) for x in gs.split(",")), tuple(float(x) for x in gsp.split(",")))

    t0 = time.time()
    findings, splits, qas, pix = build_data(a.kind, a.n, a.seed, a.img, a.workers, shape3d)
    t_data = time.time() - t0

    from medvl.models.configuration_medvl import MedVLConfig
    from medvl.models.modeling_medvl import MedVLForConditionalGeneration
    from medvl.tokenization import train_tokenizer

    corpus = [qa.question + " " + qa.answer for q in qas for qa in q]
    tok = train_tokenizer(corpus, vocab_size=1024)
    marker = "<image>" if a.kind == "2d" else "<volume>"
    media_id = tok.convert_tokens_to_ids(marker)
    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.convert_tokens_to_ids("<|endoftext|>")

    text_config = dict(
        model_type="qwen2",
        vocab_size=len(tok),
        hidden_size=a.tdim,
        intermediate_size=a.tdim * 4,
        num_hidden_layers=a.tlayers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    cfg = dict(text_config=text_config)
    if a.kind == "2d":
        cfg.update(
            vision_config=dict(
                model_type="siglip_vision_model",
                hidden_size=a.vdim,
                intermediate_size=a.vdim * 4,
                num_hidden_layers=a.vlayers,
                num_attention_heads=4,
                image_size=a.img,
                patch_size=a.patch,
                num_channels=3,
            ),
            image_connector=dict(
                type="spatial_pool" if a.pool > 1 else "mlp", pool_stride=(1, a.pool, a.pool), pool=a.pool_mode
            ),
            image_token_id=media_id,
            image_feature_layer=a.feature_layer,
        )
    else:
        vp = tuple(int(x) for x in a.vpatch3d.split(","))
        cfg.update(
            volume_config=dict(
                model_type="medvl_vit3d",
                image_size=shape3d,
                patch_size=vp,
                in_channels=1,
                hidden_size=a.vdim,
                num_hidden_layers=a.vlayers,
                num_attention_heads=4,
                intermediate_size=a.vdim * 4,
                norm_first=True,
                final_norm=True,
            ),
            volume_connector=dict(
                type="spatial_pool" if a.pool3d != "1,1,1" else "mlp",
                pool_stride=tuple(int(x) for x in a.pool3d.split(",")),
            ),
            volume_token_id=media_id,
        )
    config = MedVLConfig(**cfg)
    n_media = config.num_image_tokens if a.kind == "2d" else config.num_volume_tokens
    model = MedVLForConditionalGeneration(config)
    if a.stem:
        from medvl.models.stems import install_conv_stem

        install_conv_stem(model.vision_tower, a.patch, [int(c) for c in a.stem.split(",")])
    if a.zero_res:
        with torch.no_grad():
            for layer in model.vision_tower.encoder.layers:
                for lin in (layer.self_attn.out_proj, layer.mlp.fc2):
                    lin.weight.zero_()
                    lin.bias.zero_()
    if a.max_token:
        enc_images = model.encode_images

        def encode_with_max(pixel_values):
            f = enc_images(pixel_values)
            return torch.cat([f, f.max(1, keepdim=True).values], 1)

        model.encode_images = encode_with_max
        config.num_image_tokens += 1
        n_media += 1
    model = model.to(a.device)
    n_params = sum(p.numel() for p in model.parameters())

    def enc(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    nl = enc("\n")

    def conv_ids(turns, train=True):
        ids, labels = [], []
        for k, qa in enumerate(turns):
            q = ([media_id] * n_media + nl if k == 0 else []) + enc(qa.question)
            prompt = [im_start] + enc("user") + nl + q + [im_end] + nl + [im_start] + enc("assistant") + nl
            ids += prompt
            labels += [-100] * len(prompt)
            if train:
                ans = enc(qa.answer) + [im_end]
                ids += ans + nl
                labels += ans + [-100]
        return ids, labels

    train_items = []
    rng_g = random.Random(a.seed + 1)
    for i, s in enumerate(splits):
        if s != "train":
            continue
        turns = [qa for qa in qas[i] if not (a.closed_only and qa.answer_type != "CLOSED")]
        if a.group:
            fams = {}
            for qa in turns:
                fam = "report" if qa.question_type == "report" else qa.question_type.split("_")[0]
                fams.setdefault(fam, []).append(qa)
            for fam in fams.values():
                rng_g.shuffle(fam)
            reports = fams.pop("report", [])
            train_items += [(i, [qa]) for qa in reports]
            for k in range(max((len(v) for v in fams.values()), default=0)):
                conv = [v[k] for v in fams.values() if k < len(v)]
                rng_g.shuffle(conv)
                train_items.append((i, conv))
        elif a.single:
            train_items += [(i, [qa]) for qa in turns]
        else:
            train_items.append((i, turns))
    test_items = [(i, qa) for i, s in enumerate(splits) if s == "test" for qa in qas[i] if qa.answer_type == "CLOSED"]
    pix_t = torch.from_numpy(pix)
    if a.kind == "2d":
        pix_t = pix_t[:, None].expand(-1, 3, -1, -1)
    blank = torch.full_like(pix_t[:1], -1.0)

    if a.oracle:
        lab_feat = torch.zeros(len(findings), n_media, a.vdim)
        for i, f in enumerate(findings):
            bits = f.labels()
            lab_feat[i, 0, : len(bits)] = torch.tensor(bits, dtype=torch.float32) * 4 - 2
        model.encode_images = lambda pixel_values: lab_feat[pixel_values[:, 0, 0, 0].long()]
        pix_t = torch.arange(len(findings), dtype=torch.float32)[:, None, None, None].expand(-1, 3, a.img, a.img)

    def media(idx):
        x = pix_t[idx] if not a.blind else blank.expand(len(idx), *pix_t.shape[1:])
        return x.contiguous().to(a.device)

    if a.pretrain_steps:
        t_pre = time.time()
        labels_all = torch.tensor([f.labels() for f in findings], dtype=torch.float32)
        train_cases = [i for i, s_ in enumerate(splits) if s_ == "train"]
        head = torch.nn.Linear(a.vdim, labels_all.shape[1])
        popt = torch.optim.AdamW(list(model.vision_tower.parameters()) + list(head.parameters()), lr=a.pretrain_lr)
        prng = random.Random(a.seed + 7)
        for _ in range(a.pretrain_steps):
            idx = prng.sample(train_cases, a.batch)
            feats = (
                model.vision_tower(media(idx), output_hidden_states=True).hidden_states[a.pretrain_layer].max(1).values
            )
            ploss = torch.nn.functional.binary_cross_entropy_with_logits(head(feats), labels_all[idx])
            ploss.backward()
            popt.step()
            popt.zero_grad(set_to_none=True)
        test_cases = [i for i, s_ in enumerate(splits) if s_ == "test"]
        with torch.no_grad():
            pr = head(
                model.vision_tower(media(test_cases), output_hidden_states=True)
                .hidden_states[a.pretrain_layer]
                .max(1)
                .values
            )
        pacc = ((pr > 0) == (labels_all[test_cases] > 0.5)).float().mean(0)
        print(
            json.dumps(
                {
                    "tag": a.tag,
                    "pretrain_acc": [round(float(x), 3) for x in pacc],
                    "pretrain_s": round(time.time() - t_pre, 1),
                }
            ),
            flush=True,
        )
    if a.freeze_vision:
        model.vision_tower.requires_grad_(False)
    media_params = [p for n, p in model.named_parameters() if not n.startswith("language_model.") and p.requires_grad]
    llm_params = [p for n, p in model.named_parameters() if n.startswith("language_model.")]
    opt = torch.optim.AdamW(
        [{"params": llm_params, "lr": a.lr}, {"params": media_params, "lr": a.vlr or a.lr}], weight_decay=0.0
    )
    total = a.time_steps or a.steps
    warm = max(1, int(a.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1, s / total)))
    )
    rng = random.Random(a.seed)
    key = "pixel_values" if a.kind == "2d" else "volume_values"

    examples: list = []

    @torch.no_grad()
    def evaluate():
        model.eval()
        correct, per = 0, {}
        examples.clear()
        for b in range(0, len(test_items), 64):
            chunk = test_items[b : b + 64]
            seqs = [conv_ids([qa], train=False)[0] for _, qa in chunk]
            L = max(map(len, seqs))
            ids = torch.tensor([[pad] * (L - len(s)) + s for s in seqs], device=a.device)
            att = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs], device=a.device)
            # plain greedy decoding (no KV cache; answers are a few tokens)
            mv = media([i for i, _ in chunk])
            for _ in range(4):
                pos = (att.cumsum(1) - 1).clamp(min=0)
                logits = model(input_ids=ids, attention_mask=att, position_ids=pos, **{key: mv}).logits[:, -1]
                nxt = logits.argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], 1)
                att = torch.cat([att, torch.ones_like(nxt)], 1)
            out = ids
            for (_, qa), row in zip(chunk, out[:, L:]):
                row = row.tolist()
                row = row[: row.index(im_end)] if im_end in row else row
                ans = tok.decode(row, skip_special_tokens=True).strip()
                ok = ans == qa.answer
                if len(examples) < 4:
                    examples.append((ans, qa.answer))
                correct += ok
                per.setdefault(qa.question_type, []).append(ok)
        model.train()
        return correct / len(test_items), {k: round(float(np.mean(v)), 3) for k, v in per.items()}

    history, curve = [], []
    model.train()
    t1 = time.time()
    order = []
    for step in range(total):
        if len(order) < a.batch:
            more = list(range(len(train_items)))
            rng.shuffle(more)
            order += more
        batch_idx, order = order[: a.batch], order[a.batch :]
        seqs = [conv_ids(train_items[j][1]) for j in batch_idx]
        L = max(len(s[0]) for s in seqs)
        ids = torch.tensor([s[0] + [pad] * (L - len(s[0])) for s in seqs], device=a.device)
        lab = torch.tensor([s[1] + [-100] * (L - len(s[1])) for s in seqs], device=a.device)
        att = torch.tensor([[1] * len(s[0]) + [0] * (L - len(s[0])) for s in seqs], device=a.device)
        out = model(
            input_ids=ids, attention_mask=att, labels=lab, **{key: media([train_items[j][0] for j in batch_idx])}
        )
        loss = out.loss
        if a.loss_reduction != "token":
            sup = torch.nn.functional.pad(lab[:, 1:], (0, 1), value=-100) != -100
            n_row = sup.sum(1, keepdim=True).clamp(min=1).float()
            w_row = 1 / n_row if a.loss_reduction == "sample" else 1 / n_row.sqrt()
            w = w_row.expand_as(sup)[sup]
            tgt = torch.nn.functional.pad(lab[:, 1:], (0, 1), value=-100)[sup]
            ce = torch.nn.functional.cross_entropy(out.logits.float(), tgt, reduction="none")
            loss = (ce * w).sum() / w.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0:
            history.append((step, round(out.loss.item(), 4)))
        if a.eval_every and step and step % a.eval_every == 0:
            acc, per = evaluate()
            curve.append(
                {
                    "step": step,
                    "acc": round(acc, 3),
                    "per": per,
                    "loss": round(out.loss.item(), 4),
                    "t": round(time.time() - t1, 1),
                    "ex": examples[:4],
                }
            )
            print(json.dumps({"tag": a.tag, **curve[-1]}), flush=True)
    t_train = time.time() - t1
    if a.time_steps:
        print(
            json.dumps(
                {"tag": a.tag, "sec_per_step": t_train / total, "params": n_params, "tokens": L, "data_s": t_data}
            )
        )
        return
    acc, per = evaluate()
    res = {
        "tag": a.tag,
        "acc": round(acc, 3),
        "per": per,
        "params": n_params,
        "n_media_tokens": n_media,
        "train_items": len(train_items),
        "test": len(test_items),
        "data_s": round(t_data, 1),
        "train_s": round(t_train, 1),
        "loss": history[-3:],
        "curve": curve,
        "args": vars(a),
    }
    print(json.dumps(res), flush=True)
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
