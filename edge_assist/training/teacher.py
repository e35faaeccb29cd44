"""The interpreter's teacher: image and report text aligned contrastively.

A ResNet-ish image encoder and a byte-level transformer text encoder are
trained with a CLIP-style symmetric InfoNCE loss (learnable temperature) on
image–report pairs, plus finding heads on the image side (the same six
outputs as the student). Each image is paired with its English or its
Chinese report at random, so the text side learns both languages.

Reports repeat: many frames share the same sentence ("Liver in view. No focal
lesion seen."). Plain InfoNCE would push such identical texts apart as
negatives; here the targets are soft instead — every text in the batch with
the same report (keyed by the English report when there is one, so the en
and zh versions of one report count as the same) is a positive.

Frames: reports are paired only with frames whose quality label is >=
min_quality (default vocab.QUALITY_THRESHOLD; unknown quality kept) — a
report describes a readable frame, and the run-time abstains below the
threshold anyway. The finding heads train on the frames with quality >=
label_min_quality (default also vocab.QUALITY_THRESHOLD; None = every
labelled frame: twice the frames and time per epoch, and in a trial it
learnt lesions no better — see interpreter.py). Validation and its metrics
use the readable frames only.

Training-only code: never imported by the run-time path.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_assist.training.common import model_device, seed_everything, to_device, training_device
from edge_assist.training.data import ArrayDataset, normalise
from edge_assist.training.interpreter import (
    FindingHeads,
    augment,
    batch_targets,
    batches,
    class_weights,
    conv_bn_relu,
    SpatialPool,
    evaluate_outputs,
    findings_loss,
    lr_at,
    save_atomic,
    select_frames,
    INTERPRETER_OUTPUTS,
)
from edge_assist.training.tokenizer import ByteTokenizer, PAD, VOCAB_SIZE
from edge_assist.vocab import QUALITY_THRESHOLD

CKPT_KIND = "edge-assist-teacher"
CKPT_VERSION = 1
DEFAULT_TEACHER = {
    "stem": 24,
    "widths": [48, 96, 192],
    "blocks": [1, 2, 1],
    "hidden": 256,
    "embed_dim": 128,
    "text_dim": 128,
    "text_layers": 2,
    "text_heads": 4,
    "text_ff": 256,
    "max_len": 160,
    "input_hw": [128, 128],
}


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = conv_bn_relu(cin, cout, stride)
        self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if cin == cout and stride == 1
                     else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return torch.relu(self.c2(self.c1(x)) + self.skip(x))


class ImageEncoder(nn.Module):
    """Two stride-2 stem convs (128 -> 32), then residual stages (the first at
    stride 1, the others starting at stride 2) with blocks[i] blocks each."""

    def __init__(self, stem: int, widths, blocks):
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"teacher: widths {list(widths)} and blocks {list(blocks)} must have one entry per stage")
        layers = [conv_bn_relu(1, stem, 2), conv_bn_relu(stem, widths[0], 2)]
        c = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(ResBlock(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
        self.body = nn.Sequential(*layers)
        self.out_channels = c
        self.stride = 4 * 2 ** (len(widths) - 1)

    def forward(self, x):
        return self.body(x)


class TextEncoder(nn.Module):
    """Byte embeddings + learned positions -> pre-norm transformer -> masked mean."""

    def __init__(self, dim: int, layers: int, heads: int, ff: int, max_len: int, embed_dim: int):
        super().__init__()
        self.tok = nn.Embedding(VOCAB_SIZE, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.tok(ids) + self.pos[:, : ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (self.norm(h) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(self.proj(pooled), dim=-1)


class Teacher(nn.Module):
    def __init__(self, stem=24, widths=(48, 96, 192), blocks=(1, 2, 1), hidden=256, embed_dim=128, text_dim=128,
                 text_layers=2, text_heads=4, text_ff=256, max_len=160, input_hw=(128, 128)):
        super().__init__()
        self.image_encoder = ImageEncoder(stem, widths, blocks)
        st = self.image_encoder.stride
        self.pool = SpatialPool(self.image_encoder.out_channels, int(input_hw[0]) // st, int(input_hw[1]) // st)
        self.fc = nn.Sequential(nn.Linear(self.pool.out_features, hidden), nn.ReLU(inplace=True))
        self.heads = FindingHeads(hidden)
        self.image_proj = nn.Linear(hidden, embed_dim)
        self.text_encoder = TextEncoder(text_dim, text_layers, text_heads, text_ff, max_len, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.embed_dim = embed_dim

    def image(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(L2-normalised image embedding [B,D], the six finding outputs)."""
        h = self.fc(self.pool(self.image_encoder(x)))
        return F.normalize(self.image_proj(h), dim=-1), self.heads(h)

    def text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids, mask)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)


def info_nce(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE. same[i, j] = True where text j is a correct caption for
    image i (identical reports); None = only the diagonal."""
    logits = scale * img @ txt.t()
    if same is None:
        same = torch.eye(len(img), dtype=torch.bool)
    t = same.to(logits.dtype)
    li = -(t / t.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    lt = -(t.t() / t.t().sum(1, keepdim=True) * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return (li + lt) / 2


def _pick_texts(data: ArrayDataset, idx: np.ndarray, rng: np.random.Generator, ok: np.ndarray | None = None):
    """For each frame: a report (en or zh at random among those present) and a key
    that is equal for equal reports across languages. None when no report (or
    ok[i] is False: a frame too poor to be read)."""
    texts, keys = [], []
    for i in idx:
        en, zh = data.reports[i], data.reports_zh[i]
        have = [t for t in (en, zh) if t] if ok is None or ok[i] else []
        if not have:
            texts.append(None)
            keys.append(None)
            continue
        texts.append(have[int(rng.integers(len(have)))])
        keys.append(en or zh)
    return texts, keys


def _same_matrix(keys: list[str], device=None) -> torch.Tensor:
    codes = {k: n for n, k in enumerate(dict.fromkeys(keys))}
    c = torch.tensor([codes[k] for k in keys], device=device)
    return c[:, None] == c[None, :]


def _contrastive(model: Teacher, tok: ByteTokenizer, img_emb: torch.Tensor, texts, keys):
    has = [i for i, t in enumerate(texts) if t is not None]
    if len(has) < 2:
        return None, None
    ids, mask = tok.batch([texts[i] for i in has])
    txt = model.text(ids.to(img_emb.device), mask.to(img_emb.device))
    sel = img_emb[has]
    same = _same_matrix([keys[i] for i in has], img_emb.device)
    loss = info_nce(sel, txt, model.scale(), same)
    with torch.no_grad():
        hit = same[torch.arange(len(has), device=same.device), (sel @ txt.t()).argmax(1)].float().mean()
    return loss, float(hit)


@torch.no_grad()
def _validate(model: Teacher, tok: ByteTokenizer, data: ArrayDataset, idx: np.ndarray, batch_size: int, seed: int) -> dict:
    model.eval()
    dev = model_device(model)
    rng = np.random.default_rng([seed, 999])  # the same language draw every epoch
    con, hits, fl, n_con, n = 0.0, 0.0, 0.0, 0, 0
    outs = []
    for s in range(0, len(idx), batch_size):
        b = idx[s : s + batch_size]
        x = torch.from_numpy(normalise(data.images[b])).to(dev)
        emb, o = model.image(x)
        outs.append([t.cpu().numpy() for t in o])
        f, _ = findings_loss(o, to_device(batch_targets(data, b), dev))
        fl += float(f) * len(b)
        n += len(b)
        texts, keys = _pick_texts(data, b, rng)
        c, hit = _contrastive(model, tok, emb, texts, keys)
        if c is not None:
            k = sum(t is not None for t in texts)
            con += float(c) * k
            hits += hit * k
            n_con += k
    model.train()
    res = {"val_info_nce": con / n_con if n_con else float("nan"),
           "val_retrieval_top1": hits / n_con if n_con else float("nan"),
           "val_findings_loss": fl / n if n else float("nan")}
    if outs:
        out = {name: np.concatenate([o[i] for o in outs]) for i, name in enumerate(INTERPRETER_OUTPUTS)}
        m = evaluate_outputs(out, data, idx)
        res.update(val_findings_macro_f1=m["findings_macro_f1"], val_size_mae_mm=m["size_mae_mm"])
    return res


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def load_checkpoint(path: Path, kind: str) -> dict:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or ck.get("kind") != kind:
        raise ValueError(f"{path} is not an {kind} checkpoint; point at the file train_* wrote")
    return ck


def train_teacher(train: ArrayDataset, val: ArrayDataset, out_dir: Path, *, epochs: int, seed: int, batch_size: int = 64,
                  resume: bool = True, progress: bool = True, arch: dict | None = None, lr: float = 1e-3,
                  contrastive_weight: float = 1.0, min_quality: float | None = QUALITY_THRESHOLD,
                  label_min_quality: float | None = QUALITY_THRESHOLD) -> Path:
    """Train the teacher; out_dir/teacher.pt is written after every epoch (model,
    optimiser, epoch, history) and resumed from when resume=True. Returns its path.

    AdamW, warm-up then cosine decay to 2 % of lr. lr 1e-3: at 2-3e-3 the faint
    simulated liver lesions were not learnt at all (val AUC ~0.6 vs ~0.77)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "teacher.pt"
    cfg = {**DEFAULT_TEACHER, **(arch or {})}
    cfg["widths"] = [int(w) for w in cfg["widths"]]
    cfg["blocks"] = [int(b) for b in cfg["blocks"]]
    cfg["input_hw"] = [int(v) for v in train.images.shape[1:3]]
    tr_idx = select_frames(train, label_min_quality)  # the frames the finding heads learn from
    report_ok = np.zeros(len(train), bool)  # reports are paired only with frames good enough to read
    report_ok[select_frames(train, min_quality)] = True
    va_idx = select_frames(val, min_quality)
    if len(tr_idx) < 2:
        raise ValueError(f"train_teacher: only {len(tr_idx)} training frames with quality >= {label_min_quality}; need more data")
    seed_everything(seed)
    dev = training_device()
    model = Teacher(**cfg).to(dev)
    tok = ByteTokenizer(cfg["max_len"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    start, history = 0, []
    if resume and path.is_file():
        ck = load_checkpoint(path, CKPT_KIND)
        if ck["arch"] != cfg:
            raise ValueError(f"{path} was trained with a different architecture ({ck['arch']}); "
                             "pass resume=False or delete it")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, history = int(ck["epoch"]), list(ck["history"])
        if start >= epochs:
            _log(progress, f"teacher: {path} already has {start} epochs (asked for {epochs}); nothing to do")
            return path
        _log(progress, f"teacher: resuming {path} after epoch {start}")
    cw = to_device(class_weights(train, tr_idx), dev)
    steps_per_epoch = max(1, len(tr_idx) // batch_size)
    total = steps_per_epoch * epochs
    warmup = min(200, max(1, total // 10))
    n_params = sum(p.numel() for p in model.parameters())
    if start == 0:
        v = _validate(model, tok, val, va_idx, batch_size, seed)
        history.append({"epoch": 0, **v})
        _log(progress, f"teacher: {n_params / 1e6:.2f}M params, {len(tr_idx)} train frames ({int(report_ok[tr_idx].sum())} "
                       f"with readable reports) / {len(va_idx)} val frames; "
                       f"before training: " + _fmt(v))
    model.train()
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])
        sums = {"loss": 0.0, "info_nce": 0.0, "findings": 0.0, "top1": 0.0}
        nb = 0
        step = epoch * steps_per_epoch
        bar = tqdm(list(batches(len(tr_idx), batch_size, rng)), desc=f"teacher {epoch + 1}/{epochs}", disable=not progress,
                   leave=False, file=sys.stderr)
        for b in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, lr, warmup)
            fi = tr_idx[b]
            x, _ = augment(train.images[fi], rng)
            emb, outs = model.image(x.to(dev))
            f_loss, _ = findings_loss(outs, to_device(batch_targets(train, fi), dev), cw)
            texts, keys = _pick_texts(train, fi, rng, report_ok)
            c_loss, hit = _contrastive(model, tok, emb, texts, keys)
            loss = f_loss if c_loss is None else f_loss + contrastive_weight * c_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            nb += 1
            sums["loss"] += float(loss.detach())
            sums["findings"] += float(f_loss.detach())
            sums["info_nce"] += float(c_loss.detach()) if c_loss is not None else 0.0
            sums["top1"] += hit or 0.0
            bar.set_postfix(loss=f"{sums['loss'] / nb:.3f}", nce=f"{sums['info_nce'] / nb:.3f}")
        bar.close()
        v = _validate(model, tok, val, va_idx, batch_size, seed)
        rec = {"epoch": epoch + 1, **{f"train_{k}": s / max(nb, 1) for k, s in sums.items()}, **v,
               "logit_scale": float(model.scale().detach()), "seconds": time.perf_counter() - t0}
        history.append(rec)
        save_atomic({"kind": CKPT_KIND, "version": CKPT_VERSION, "arch": cfg, "tokenizer": tok.config(),
                     "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1, "epochs": epochs,
                     "seed": seed, "lr": lr, "min_quality": min_quality, "label_min_quality": label_min_quality,
                     "history": history}, path)
        _log(progress, f"teacher epoch {epoch + 1}/{epochs} ({rec['seconds']:.0f} s): train loss {rec['train_loss']:.3f} "
                       f"info_nce {rec['train_info_nce']:.3f}; " + _fmt(v))
    return path


def _fmt(v: dict) -> str:
    return ", ".join(f"{k.removeprefix('val_')} {x:.3f}" for k, x in v.items() if isinstance(x, float))


def load_teacher(ckpt: Path) -> tuple[Teacher, ByteTokenizer]:
    """The teacher (eval mode) and its tokenizer."""
    ck = load_checkpoint(Path(ckpt), CKPT_KIND)
    model = Teacher(**ck["arch"])
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ByteTokenizer.from_config(ck["tokenizer"])


@torch.no_grad()
def teacher_targets(model: Teacher, images_u8: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """The teacher's embedding and six outputs for uint8 frames (no augmentation)."""
    model.eval()
    dev = model_device(model)
    embs, outs = [], []
    for s in range(0, len(images_u8), batch_size):
        e, o = model.image(torch.from_numpy(normalise(np.ascontiguousarray(images_u8[s : s + batch_size]))).to(dev))
        embs.append(e.cpu().numpy())
        outs.append([t.cpu().numpy() for t in o])
    res = {"embedding": np.concatenate(embs)}
    for i, name in enumerate(INTERPRETER_OUTPUTS):
        res[name] = np.concatenate([o[i] for o in outs])
    return res


@torch.no_grad()
def rank_sentences(model: Teacher, tok: ByteTokenizer, image_u8: np.ndarray, sentences: list[str]) -> list[tuple[str, float]]:
    """Phrase-bank retrieval: candidate sentences (e.g. lexicon templates for a
    few finding sets) ranked by cosine similarity to the image in the teacher's
    joint space. An offline / QA helper; the run-time uses the templates."""
    model.eval()
    emb, _ = model.image(torch.from_numpy(normalise(image_u8[None] if image_u8.ndim == 2 else image_u8)))
    ids, mask = tok.batch(sentences)
    sims = (emb[:1] @ model.text(ids, mask).t())[0].tolist()
    return sorted(zip(sentences, sims), key=lambda p: -p[1])
