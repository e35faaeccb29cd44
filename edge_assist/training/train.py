"""Training the quality and guidance heads.

`train_quality` / `train_guidance` take ArrayDatasets (training/data.py:
preprocessed uint8 frames and masked labels), train with fixed seeds, show
a progress bar, write a checkpoint after every epoch (`<head>.last.pt`,
resumable) and a final `<head>.pt` with decode settings fitted on the
validation set:

- quality: one threshold per reason flag, chosen for F1 on validation and
  folded into the output bias, so the run-time decode uses 0.5 for all;
- guidance: a softmax temperature (confidence calibration).

Under torchrun every process trains on its shard (DistributedDataParallel);
rank 0 validates and writes files.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_assist.training.common import (
    DEFAULT_SEED, TrainingError, auroc, log, macro_f1_multilabel, model_device, progress, seed_everything, set_torch_threads,
    spearman, torch_load, torch_save, training_memory_format,
)
from edge_assist.training.data import MEAN, STD, ArrayDataset
from edge_assist.training.ddp import DistContext, unwrap
from edge_assist.training.models import build_model
from edge_assist.vocab import ACTIONS, QUALITY_REASONS

CHECKPOINT_VERSION = 1


def fingerprint(ds: ArrayDataset, extra: np.ndarray | None = None) -> str:
    """A cheap content hash: resuming only continues a run on the same data."""
    h = hashlib.sha1()
    n = len(ds)
    h.update(str((n,) + ds.images.shape).encode())
    step = max(1, n // 256)
    h.update(np.ascontiguousarray(ds.images[::step]).tobytes())
    for a in (ds.quality, ds.reasons, ds.action):
        h.update(np.ascontiguousarray(a).tobytes())
    if extra is not None:
        h.update(np.ascontiguousarray(extra).tobytes())
    return h.hexdigest()[:16]


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """(B,H,W) or (B,C,H,W) uint8 -> normalised float32 (B,C,H,W), as at run time."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).float()
    if x.ndim == 3:
        x = x[:, None]
    return (x / 255.0 - MEAN) / STD


# -- losses -----------------------------------------------------------------------------


def quality_loss(out, batch, pos_weight: torch.Tensor) -> torch.Tensor:
    score_logit, reason_logits = out
    q = batch["quality"]
    m = ~torch.isnan(q)
    loss = score_logit.new_zeros(())
    if m.any():
        loss = loss + 2.0 * F.binary_cross_entropy_with_logits(score_logit[:, 0][m], q[m])
    r = batch["reasons"]
    rm = ~torch.isnan(r[:, 0])
    if rm.any():
        loss = loss + F.binary_cross_entropy_with_logits(reason_logits[rm], r[rm], pos_weight=pos_weight)
    return loss


def guidance_loss(out, batch, smoothing: float, pose_weight: float = 0.3) -> torch.Tensor:
    logits, pose = out
    loss = logits.sum() * 0.0
    soft = batch.get("soft")
    if soft is not None:
        m = soft.sum(1) > 0
        if m.any():
            loss = loss + -(soft[m] * F.log_softmax(logits[m], 1)).sum(1).mean()
    else:
        a = batch["action"]
        if (a >= 0).any():
            loss = loss + F.cross_entropy(logits, a, ignore_index=-1, label_smoothing=smoothing)
    target = batch.get("pose")
    if target is not None:
        m = ~torch.isnan(target)
        if m.any():
            loss = loss + pose_weight * F.smooth_l1_loss(pose[m], target[m])
    return loss


# -- the generic loop ----------------------------------------------------------------------


def _batch(ds: ArrayDataset, idx: np.ndarray, extras: dict[str, np.ndarray], device, memory_format=torch.contiguous_format) -> dict:
    b = {
        "x": to_tensor(ds.images[idx]).to(device).contiguous(memory_format=memory_format),
        "quality": torch.from_numpy(ds.quality[idx]).to(device),
        "reasons": torch.from_numpy(ds.reasons[idx]).to(device),
        "action": torch.from_numpy(ds.action[idx]).to(device),
    }
    for k, v in extras.items():
        b[k] = torch.from_numpy(v[idx]).to(device)
    return b


@torch.no_grad()
def predict(model: nn.Module, images_u8: np.ndarray, batch_size: int = 256, actions: np.ndarray | None = None):
    """Raw model outputs over a whole array, in eval mode (tuple of numpy
    arrays), on the device the model is on. actions: previous-move one-hots
    (N, A) for guidance with memory."""
    model.eval()
    device = model_device(model)
    outs: list[list[np.ndarray]] = []
    for i in range(0, len(images_u8), batch_size):
        x = to_tensor(images_u8[i : i + batch_size]).to(device)
        o = model(x) if actions is None else model(x, torch.from_numpy(actions[i : i + batch_size]).to(device))
        o = o if isinstance(o, tuple) else (o,)
        outs.append([t.float().cpu().numpy() for t in o])
    return tuple(np.concatenate([b[k] for b in outs]) for k in range(len(outs[0])))


def fit(
    head: str,
    train: ArrayDataset,
    val: ArrayDataset,
    out_dir: Path,
    *,
    epochs: int,
    seed: int,
    batch_size: int,
    resume: bool,
    lr: float,
    loss_fn: Callable,
    validate: Callable[[nn.Module, ArrayDataset], dict],
    finalise: Callable[[nn.Module, ArrayDataset], dict],
    model_cfg: dict | None = None,
    extras: dict[str, np.ndarray] | None = None,
    ctx: DistContext | None = None,
    weight_decay: float = 1e-4,
    extra_meta: dict | None = None,
    init_from: Path | None = None,
) -> Path:
    own_ctx = ctx is None
    ctx = ctx or DistContext.from_env()
    try:
        return _fit(head, train, val, Path(out_dir), epochs, seed, batch_size, resume, lr, loss_fn, validate, finalise,
                    model_cfg, extras or {}, ctx, weight_decay, extra_meta or {}, init_from)
    finally:
        if own_ctx:
            ctx.close()


def _fit(head, train, val, out_dir, epochs, seed, batch_size, resume, lr, loss_fn, validate, finalise, model_cfg, extras, ctx,
         weight_decay, extra_meta, init_from) -> Path:
    if len(train) == 0:
        raise TrainingError(f"{head}: the training set is empty")
    if epochs < 1 or batch_size < 1:
        raise TrainingError(f"{head}: epochs and batch size must be at least 1")
    main = ctx.is_main
    set_torch_threads()
    seed_everything(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, final_path = out_dir / f"{head}.last.pt", out_dir / f"{head}.pt"
    fp = fingerprint(train, np.concatenate([np.nan_to_num(v).reshape(len(train), -1) for v in extras.values()], 1) if extras else None)
    init = torch_load(Path(init_from)) if init_from else None
    run_key = {"head": head, "data": fp, "n_val": len(val), "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
               "world_size": ctx.world_size, "model_cfg": model_cfg}
    memory_format = training_memory_format()
    if memory_format != torch.contiguous_format:  # another draw: never resumed from, or taken for, a default-layout run
        run_key["memory_format"] = str(memory_format).removeprefix("torch.")
    if init is not None:
        run_key["init_from"] = f"{init['data']['fingerprint']}:{init.get('run_key', {}).get('epochs')}"

    if resume and final_path.is_file():
        ck = torch_load(final_path)
        if ck.get("run_key") == run_key and ck.get("complete"):
            log(f"{head}: {final_path} is up to date (same data, seed and settings); skipping training", enabled=main)
            return final_path

    model = build_model(head, init["model_cfg"] if init else model_cfg)
    if init is not None:  # fine-tune (e.g. a DAgger round continues from the previous round's weights)
        model.load_state_dict(init["state_dict"])
    model = model.to(memory_format=memory_format)  # the saved weights are plain again (below)
    cfg_dict = model.cfg.to_dict()
    steps_per_epoch = math.ceil(math.ceil(len(train) / ctx.world_size) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    start_epoch, history = 0, []
    if resume and last_path.is_file():
        ck = torch_load(last_path)
        if ck.get("run_key") == run_key:
            model.load_state_dict(ck["state_dict"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            start_epoch, history = int(ck["epoch"]) + 1, list(ck["history"])
            torch.set_rng_state(ck["torch_rng"])
            log(f"{head}: resuming from {last_path} after epoch {start_epoch}", enabled=main)
        else:
            log(f"{head}: {last_path} belongs to another run (data or settings differ); starting afresh", enabled=main)
    net = ctx.wrap(model)
    pos_weight = None
    if head == "quality":
        r = train.reasons[~np.isnan(train.reasons[:, 0])]
        freq = r.mean(0) if len(r) else np.full(len(QUALITY_REASONS), 0.5)
        pos_weight = torch.tensor(np.clip((1 - freq) / np.maximum(freq, 1e-3), 1.0, 8.0) ** 0.5, dtype=torch.float32, device=ctx.device)

    for epoch in range(start_epoch, epochs):
        net.train()
        idx = ctx.shard(len(train), epoch, seed)
        t0 = time.perf_counter()
        tot = np.zeros(2)
        bar = progress(total=steps_per_epoch, desc=f"{head} {epoch + 1}/{epochs}", enabled=main)
        for s in range(steps_per_epoch):
            bi = idx[s * batch_size : (s + 1) * batch_size]
            if len(bi) == 0:  # keep every rank in step
                bi = idx[:1]
            b = _batch(train, bi, extras, ctx.device, memory_format)
            out = net(b["x"], b["prev_action"]) if "prev_action" in b else net(b["x"])
            loss = loss_fn(out, b, pos_weight) if head == "quality" else loss_fn(out, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += (float(loss.detach()) * len(bi), len(bi))
            bar.update(1)
            bar.set_postfix(loss=f"{tot[0] / tot[1]:.4f}", refresh=False)
        bar.close()
        tot = ctx.all_reduce_sum(tot)
        train_loss = float(tot[0] / max(tot[1], 1))
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "seconds": round(time.perf_counter() - t0, 1)}
        if main:
            if len(val):
                row.update(validate(unwrap(net), val))
            history.append(row)
            log(f"{head} epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "epoch"))
            torch_save({
                "version": CHECKPOINT_VERSION, "head": head, "run_key": run_key, "model_cfg": cfg_dict,
                "state_dict": unwrap(net).state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "history": history, "torch_rng": torch.get_rng_state(), "complete": False,
            }, last_path)
        ctx.barrier()

    model = unwrap(net).cpu().eval().to(memory_format=torch.contiguous_format)
    if main:
        decode = finalise(model, val) if len(val) else {}
        final_val = validate(model, val) if len(val) else {}
        torch_save({
            "version": CHECKPOINT_VERSION, "head": head, "run_key": run_key, "model_cfg": cfg_dict,
            "state_dict": model.state_dict(), "history": history, "decode": decode, "val": final_val,
            "data": {"n_train": len(train), "n_val": len(val), "fingerprint": fp, **extra_meta}, "complete": True,
        }, final_path)
        log(f"{head}: wrote {final_path} (validation: {final_val})")
    ctx.barrier()
    return final_path


def load_head(ckpt: Path) -> tuple[nn.Module, dict]:
    """A trained quality/guidance model (eval mode) and its checkpoint dict."""
    ck = torch_load(ckpt)
    if ck.get("head") not in ("quality", "guidance") or "state_dict" not in ck:
        raise TrainingError(f"{ckpt} is not a quality/guidance checkpoint")
    model = build_model(ck["head"], ck["model_cfg"])
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck


# -- quality -------------------------------------------------------------------------------


def _valid_rows(a: np.ndarray) -> np.ndarray:
    return ~np.isnan(a if a.ndim == 1 else a[:, 0])


def quality_metrics(score: np.ndarray, reason_logits: np.ndarray, ds: ArrayDataset) -> dict:
    m = _valid_rows(ds.quality)
    out = {}
    if m.sum() > 1:
        out["spearman"] = round(spearman(score[m], ds.quality[m]), 4)
        out["auroc"] = round(auroc(ds.quality[m] >= 0.5, score[m]), 4)
    rm = _valid_rows(ds.reasons)
    if rm.any():
        f1, _ = macro_f1_multilabel(ds.reasons[rm] > 0.5, reason_logits[rm] > 0)
        out["reasons_macro_f1"] = round(f1, 4)
    return out


def _validate_quality(model, ds):
    s, r = predict(model, ds.images)
    return quality_metrics(1 / (1 + np.exp(-s[:, 0])), r, ds)


def best_thresholds(probs: np.ndarray, truth: np.ndarray, grid=np.linspace(0.05, 0.95, 19)) -> np.ndarray:
    """Per-column threshold maximising F1 (0.5 where a column has no positives)."""
    from edge_assist.training.common import f1_binary

    th = np.full(probs.shape[1], 0.5)
    for k in range(probs.shape[1]):
        if truth[:, k].sum() == 0:
            continue
        scores = [f1_binary(truth[:, k], probs[:, k] >= t) for t in grid]
        th[k] = float(grid[int(np.nanargmax(scores))])
    return th


def _finalise_quality(model, ds):
    rm = _valid_rows(ds.reasons)
    if rm.sum() < 20:
        return {"reason_threshold": 0.5}
    _, r = predict(model, ds.images[rm])
    th = best_thresholds(1 / (1 + np.exp(-r)), ds.reasons[rm] > 0.5)
    with torch.no_grad():  # fold the thresholds into the bias: the decode then uses 0.5 for all
        model.net.out["reasons"].bias -= torch.tensor(np.log(th / (1 - th)), dtype=torch.float32)
    return {"reason_threshold": 0.5, "fitted_reason_thresholds": {n: round(float(t), 3) for n, t in zip(QUALITY_REASONS, th)}}


def train_quality(train: ArrayDataset, val: ArrayDataset, out_dir: Path, *, epochs: int = 12, seed: int = DEFAULT_SEED,
                  batch_size: int = 64, resume: bool = True, lr: float = 3e-3, model_cfg: dict | None = None,
                  ctx: DistContext | None = None) -> Path:
    """Score (soft BCE against the simulator's quality) + reason flags (masked multi-label BCE)."""
    return fit("quality", train, val, out_dir, epochs=epochs, seed=seed, batch_size=batch_size, resume=resume, lr=lr,
               loss_fn=quality_loss, validate=_validate_quality, finalise=_finalise_quality, model_cfg=model_cfg, ctx=ctx)


# -- guidance ------------------------------------------------------------------------------


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The softmax temperature minimising validation NLL (grid search)."""
    m = labels >= 0
    if m.sum() < 10:
        return 1.0
    z, y = logits[m].astype(np.float64), labels[m]
    best, best_t = float("inf"), 1.0
    for t in np.exp(np.linspace(np.log(0.3), np.log(5.0), 60)):
        s = z / t
        s = s - s.max(1, keepdims=True)
        nll = float(-(s[np.arange(len(y)), y] - np.log(np.exp(s).sum(1))).mean())
        if nll < best:
            best, best_t = nll, float(t)
    return round(best_t, 3)


def guidance_metrics(logits: np.ndarray, ds: ArrayDataset) -> dict:
    m = ds.action >= 0
    if not m.any():
        return {}
    pred = logits[m].argmax(1)
    return {"top1": round(float((pred == ds.action[m]).mean()), 4)}


def _guidance_validation(val_actions: np.ndarray | None):
    def validate(model, ds):
        return guidance_metrics(predict(model, ds.images, actions=val_actions)[0], ds)

    def finalise(model, ds):
        return {"temperature": fit_temperature(predict(model, ds.images, actions=val_actions)[0], ds.action)}

    return validate, finalise


def train_guidance(train: ArrayDataset, val: ArrayDataset, out_dir: Path, *, epochs: int = 12, seed: int = DEFAULT_SEED,
                   batch_size: int = 64, resume: bool = True, lr: float = 3e-3, model_cfg: dict | None = None,
                   soft_targets: np.ndarray | None = None, pose_targets: np.ndarray | None = None, smoothing: float = 0.05,
                   pose_weight: float = 0.3, init_from: Path | None = None, ctx: DistContext | None = None,
                   prev_actions: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Next action (15-way). Hard labels (cross-entropy with label smoothing)
    or, when given, soft targets (N, 15) that spread some mass over every move
    that helps; optionally an auxiliary regression of the pose errors (N, 7),
    NaN where unknown (see make_models.guidance_targets).

    prev_actions = (train, val) one-hots of the previous move: a head with
    memory (edge_assist.guidance_memory); the images are then the pairs
    (N, 2, H, W) of reference and current frame (make_models.with_memory)."""
    extras = {}
    val_actions = None
    if prev_actions is not None:
        tr_a, val_actions = (np.asarray(a, np.float32) for a in prev_actions)
        if tr_a.shape != (len(train), len(ACTIONS)) or val_actions.shape != (len(val), len(ACTIONS)):
            raise TrainingError(f"previous moves must be one-hots (N, {len(ACTIONS)}) for train and val")
        if train.images.ndim != 4 or train.images.shape[1] != 2:
            raise TrainingError("guidance with memory trains on frame pairs (N, 2, H, W)")
        extras["prev_action"] = tr_a
        cfg = dict(model_cfg or {})
        cfg.setdefault("in_ch", 2)
        cfg.setdefault("action_in", len(ACTIONS))
        model_cfg = cfg
    validate, finalise = _guidance_validation(val_actions)
    if soft_targets is not None:
        if soft_targets.shape != (len(train), len(ACTIONS)):
            raise TrainingError(f"soft targets must be (N, {len(ACTIONS)}), got {soft_targets.shape}")
        extras["soft"] = soft_targets.astype(np.float32)
    if pose_targets is not None:
        if pose_targets.shape[0] != len(train):
            raise TrainingError(f"pose targets must have one row per frame, got {pose_targets.shape}")
        extras["pose"] = pose_targets.astype(np.float32)
    return fit("guidance", train, val, out_dir, epochs=epochs, seed=seed, batch_size=batch_size, resume=resume, lr=lr,
               loss_fn=lambda out, b: guidance_loss(out, b, smoothing, pose_weight), validate=validate,
               finalise=finalise, model_cfg=model_cfg, extras=extras, ctx=ctx, init_from=init_from)
