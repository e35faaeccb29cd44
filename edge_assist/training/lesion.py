"""The lesion head: a second look at the interpreter's lesion at the
source's own resolution (the run-time side is edge_assist.lesion_crop).

    forward(crop [B,1,64,64] float32, normalised as the other heads) -> tuple:
        echo_logits    [B,E]  (vocab.ECHOGENICITY)
        margin_logits  [B,M]  (vocab.MARGINS)
        lesion_mask    [B,1,32,32]  probability that a cell is on the lesion
                                    (the run time measures its long axis there)

Data: the readable simulator frames with a reported lesion, kept at the
simulator's resolution (256x256) with the lesion's mask at that resolution,
plus the interpreter's 128x128 input of the same frame (to evaluate the
whole path: interpreter mask -> box -> crop -> this head). Training crops
come from the true lesion's box, jittered in centre and scale about as far
as the interpreter's mask misses it, and mirrored at random.

Loss: cross-entropy on echogenicity and margins (mild inverse-sqrt class
weights) + the interpreter's mask loss (BCE x10 + soft Dice).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_assist.frames import Frame
from edge_assist.lesion_crop import CROP_SIZE, CropBox, box_around, cut
from edge_assist.lesion_measure import measure_on_mask
from edge_assist.training.common import (
    DEFAULT_SEED, TrainingError, log, macro_f1_multiclass, model_device, optimiser_step, progress, seed_everything, torch_load, torch_save,
    training_device,
)
from edge_assist.training.data import MEAN, STD, normalise
from edge_assist.training.interpreter import MaskDecoder, conv_bn_relu, mask_loss
from edge_assist.vocab import ECHOGENICITY, MARGINS, QUALITY_THRESHOLD

CKPT_KIND = "edge-assist-lesion"
CKPT_VERSION = 1
MASK_OUT = CROP_SIZE // 2  # the mask decoder's resolution (stride 2)
OUTPUT_NAMES = ("echo_logits", "margin_logits", "lesion_mask")
INPUT_NAME = "crop"
DEFAULT_NET = {"widths": [24, 48, 64, 96], "hidden": 128}
# Jitter of the training boxes around the true lesion: the interpreter's mask
# (3.2 mm cells on a liver view) places the box off by about this much.
JITTER_CENTRE = 0.12  # SD of the centre's shift, as a fraction of the box side
JITTER_SCALE = (0.75, 1.4)  # box side x a log-uniform factor
# The run time places the box on the interpreter's mask region at this
# probability (its findings measure at 0.5): on 340 validation lesion frames
# 0.5 / 0.1 found a box on 204 / 219 and gave size MAE 2.26 / 2.15 mm.
BOX_THRESHOLD = 0.1


class LesionNet(nn.Module):
    """Plain conv-BN-ReLU, four stride-2 stages (each plus one stride-1 conv),
    average and max pooled into one hidden layer for echogenicity and margins;
    a MaskDecoder segments the lesion at half the crop's resolution."""

    def __init__(self, widths=(24, 48, 64, 96), hidden: int = 128):
        super().__init__()
        self.stages = nn.ModuleList()
        c = 1
        for w in widths:
            self.stages.append(nn.Sequential(conv_bn_relu(c, w, 2), conv_bn_relu(w, w)))
            c = w
        self.fc = nn.Sequential(nn.Linear(2 * c, hidden), nn.ReLU(inplace=True))
        self.echo = nn.Linear(hidden, len(ECHOGENICITY))
        self.margins = nn.Linear(hidden, len(MARGINS))
        self.mask = MaskDecoder([int(w) for w in widths])

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        h = self.fc(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))
        return self.echo(h), self.margins(h), self.mask(feats)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        e, m, mask = self.logits(x)
        return e, m, torch.sigmoid(mask)


# -- data -------------------------------------------------------------------------------------------


@dataclass
class LesionFrames:
    """Readable lesion frames at source resolution. Regions of one size are
    stacked arrays (and can be cached); of several sizes (your own data),
    lists of arrays."""

    regions: np.ndarray | list  # (N,H,W) uint8: the grey scan region
    masks: np.ndarray | list  # (N,H,W) uint8 0/1: the reported lesion
    inputs: np.ndarray  # (N,128,128) uint8: the interpreter's preprocessed input
    echo: np.ndarray  # int64 (N,), -1 unknown
    margins: np.ndarray  # int64 (N,)
    size_mm: np.ndarray  # float32 (N,), nan unknown
    mm_per_px: np.ndarray  # float32 (N,): row spacing of the region (source pixels)
    presets: list[str]

    def __len__(self) -> int:
        return len(self.regions)

    FIELDS = ("regions", "masks", "inputs", "echo", "margins", "size_mm", "mm_per_px")

    def save(self, path: Path) -> None:
        if isinstance(self.regions, list):
            raise TrainingError("lesion frames of several region sizes are not cached; keep the manifest")
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **{k: getattr(self, k) for k in self.FIELDS}, presets=np.array(json.dumps(self.presets)))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "LesionFrames":
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: z[k] for k in cls.FIELDS}, presets=json.loads(str(z["presets"])))

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "LesionFrames":
        if not rows:
            z = np.zeros((0, 1, 1), np.uint8)
            return cls(z, z, np.zeros((0, 128, 128), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64),
                       np.zeros(0, np.float32), np.zeros(0, np.float32), [])
        one_size = len({r["region"].shape for r in rows}) == 1
        many = (lambda k: np.stack([r[k] for r in rows])) if one_size else (lambda k: [r[k] for r in rows])  # noqa: E731
        col = lambda k, dt: np.array([r[k] for r in rows], dtype=dt)  # noqa: E731
        return cls(many("region"), many("mask"), np.stack([r["input"] for r in rows]), col("echo", np.int64),
                   col("margins", np.int64), col("size_mm", np.float32), col("mm", np.float32), [r["preset"] for r in rows])

    def subset(self, idx) -> "LesionFrames":
        idx = [int(i) for i in idx]
        pick = (lambda a: a[idx]) if not isinstance(self.regions, list) else (lambda a: [a[i] for i in idx])  # noqa: E731
        return LesionFrames(pick(self.regions), pick(self.masks), self.inputs[idx], self.echo[idx], self.margins[idx],
                            self.size_mm[idx], self.mm_per_px[idx], [self.presets[i] for i in idx])


def lesion_rows(frames) -> list[dict]:
    """(image, truth, lesion mask) of sim.dataset.generate(with_lesion_mask=True)
    -> rows of the readable frames that show their reported lesion."""
    from edge_assist.preprocess import Preprocessor, to_grey
    from edge_assist.training.common import sim_region
    from edge_assist.training.data import INPUT_SIZE
    from edge_assist.training.make_models import prepare

    pre = Preprocessor(size=INPUT_SIZE, mean=MEAN, std=STD)
    rows = []
    for image, truth, lesion in frames:
        f = truth["findings"]
        if truth["quality"] < QUALITY_THRESHOLD or not f.get("lesion_present"):
            continue
        region = sim_region(truth, image.shape)
        x0, y0, x1, y1 = region.box
        m = (np.asarray(lesion[y0:y1, x0:x1]) > 0).astype(np.uint8)
        if m.sum() < 2 or region.spacing_mm is None:
            continue
        prep = prepare(pre, image, truth, region)
        rows.append(_row(to_grey(image[y0:y1, x0:x1]).copy(), m, prep.image, f, region.spacing_mm[0], truth["preset"]))
    return rows


def _row(region_grey: np.ndarray, mask: np.ndarray, input_u8: np.ndarray, findings: dict, mm: float | None, preset) -> dict:
    return {
        "region": region_grey, "mask": mask, "input": input_u8,
        "echo": ECHOGENICITY.index(findings["echogenicity"]) if findings.get("echogenicity") in ECHOGENICITY else -1,
        "margins": MARGINS.index(findings["margins"]) if findings.get("margins") in MARGINS else -1,
        "size_mm": float(findings["size_mm"]) if findings.get("size_mm") is not None else float("nan"),
        "mm": float(mm) if mm is not None else float("nan"), "preset": preset,
    }


def lesion_frames_from_manifest(path, limit: int | None = None) -> LesionFrames:
    """Your own data (docs/DATA.md): the records with a lesion_mask whose labels
    report a lesion (and whose quality, when labelled, is readable), each
    region cut from the image at its own resolution, as at run time."""
    from edge_assist.preprocess import Preprocessor, to_grey
    from edge_assist.training.data import INPUT_SIZE, DataError, given_region, read_image, read_lesion_mask, read_manifest

    pre = Preprocessor(size=INPUT_SIZE, mean=MEAN, std=STD, warmup_frames=1)
    rows = []
    for i, rec in enumerate(read_manifest(path)[:limit]):
        if rec.lesion_mask is None:
            continue
        px = read_image(rec)
        mask = read_lesion_mask(rec, px.shape[:2])  # every mask is checked, used or not
        f = rec.labels.get("findings") or {}
        q = rec.labels.get("quality")
        if not f.get("lesion_present") or (q is not None and float(q) < QUALITY_THRESHOLD):
            continue
        pre.reset()
        prep = pre(Frame(px, i, 0, region=given_region(rec)))
        x0, y0, x1, y1 = prep.region.box
        m = mask[y0:y1, x0:x1]
        if m.sum() < 2:
            raise DataError(f"line {rec.line}: the labels report a lesion but its lesion mask shows none inside the scan region")
        mm = rec.spacing_mm[0] if rec.spacing_mm else None
        rows.append(_row(to_grey(px[y0:y1, x0:x1]).copy(), m.copy(), prep.image, f, mm, rec.labels.get("preset")))
    return LesionFrames.from_rows(rows)


def true_boxes(data: LesionFrames) -> np.ndarray:
    """(N,3) cx, cy, long axis (source pixels) of each frame's true lesion."""
    out = np.zeros((len(data), 3), np.float32)
    for i, m in enumerate(data.masks):
        meas = measure_on_mask(m.astype(np.float32), with_outline=False)
        h, w = m.shape
        out[i] = (meas.centre[0] * w, meas.centre[1] * h, meas.extent * h) if meas else (w / 2, h / 2, 8.0)
    return out


def true_box_crops(data: LesionFrames) -> np.ndarray:
    """(N, CROP_SIZE, CROP_SIZE) uint8 crops around each frame's true lesion."""
    boxes = true_boxes(data)
    return np.stack([crop_pair(r, None, box_around(*b))[0] for r, b in zip(data.regions, boxes)]) if len(data) else \
        np.zeros((0, CROP_SIZE, CROP_SIZE), np.uint8)


def crop_pair(region: np.ndarray, mask: np.ndarray | None, box: CropBox) -> tuple[np.ndarray, np.ndarray | None]:
    """The crop (CROP_SIZE, uint8) and, with a mask, its target (MASK_OUT, fractions 0..1)."""
    img = cut(region, box)
    if mask is None:
        return img, None
    m = cut(mask.astype(np.uint8) * 255, box, size=CROP_SIZE)
    return img, cv2.resize(m, (MASK_OUT, MASK_OUT), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def make_batch(data: LesionFrames, boxes: np.ndarray, idx: np.ndarray, rng: np.random.Generator | None):
    """Crops, mask targets and labels of frames idx; rng: training jitter and
    augmentation (None: the true box as it is)."""
    crops, targets = [], []
    for i in idx:
        box = _jittered(boxes[i], rng) if rng is not None else box_around(*(float(v) for v in boxes[i]))
        img, tgt = crop_pair(data.regions[i], data.masks[i], box)
        crops.append(img)
        targets.append(tgt)
    crops, targets = np.stack(crops), np.stack(targets)
    if rng is not None:
        flips = rng.random(len(idx)) < 0.5
        crops[flips] = crops[flips, :, ::-1]
        targets[flips] = targets[flips, :, ::-1]
        gain = rng.uniform(0.85, 1.15, size=(len(idx), 1, 1))
        offset = rng.uniform(-8, 8, size=(len(idx), 1, 1))
        crops = np.clip(crops * gain + offset, 0, 255).astype(np.uint8)
    return (torch.from_numpy(normalise(crops)), torch.from_numpy(np.ascontiguousarray(targets[:, None])),
            torch.from_numpy(data.echo[idx]), torch.from_numpy(data.margins[idx]))


def _class_weight(y: np.ndarray, n: int) -> torch.Tensor:
    counts = np.bincount(y[y >= 0], minlength=n).astype(np.float64) + 1.0
    w = 1.0 / np.sqrt(counts)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def _ce(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    ok = y >= 0
    if not ok.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[ok], y[ok], weight=weight)


# -- predictions and metrics --------------------------------------------------------------------------


def predict_crops(model: LesionNet, crops_u8: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    model.eval()
    dev = model_device(model)
    outs = {"echo": [], "margins": [], "mask": []}
    with torch.no_grad():
        for s in range(0, len(crops_u8), batch_size):
            e, m, mask = model(torch.from_numpy(normalise(crops_u8[s : s + batch_size])).to(dev))
            outs["echo"].append(e.cpu().numpy())
            outs["margins"].append(m.cpu().numpy())
            outs["mask"].append(mask.cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in outs.items()}


def measured_size_mm(mask: np.ndarray, box: CropBox, mm_per_px: float) -> float | None:
    meas = measure_on_mask(mask, with_outline=False)
    return None if meas is None else float(meas.extent * box.grid()[2] * mm_per_px)


def crop_metrics(data: LesionFrames, idx: np.ndarray, boxes: list[CropBox | None], out: dict[str, np.ndarray]) -> dict[str, Any]:
    """Echogenicity / margins macro-F1 and size MAE over frames idx (out row k <-> idx[k]);
    frames whose box is None are skipped (no crop)."""
    keep = [k for k, b in enumerate(boxes) if b is not None]
    res: dict[str, Any] = {"n": len(keep)}
    for key, names in (("echo", ECHOGENICITY), ("margins", MARGINS)):
        yt = [int(getattr(data, key)[idx[k]]) for k in keep if getattr(data, key)[idx[k]] >= 0]
        yp = [int(np.argmax(out[key][k])) for k in keep if getattr(data, key)[idx[k]] >= 0]
        res[key] = round(macro_f1_multiclass(yt, yp, len(names)), 4) if yt else float("nan")
    errs, measured = [], 0
    for k in keep:
        i = idx[k]
        if np.isnan(data.size_mm[i]) or np.isnan(data.mm_per_px[i]):
            continue
        s = measured_size_mm(out["mask"][k], boxes[k], float(data.mm_per_px[i]))
        if s is not None:
            measured += 1
            errs.append(abs(s - float(data.size_mm[i])))
    res["size_mae_mm"] = round(float(np.mean(errs)), 3) if errs else float("nan")
    res["measured"] = measured
    return res


# -- training --------------------------------------------------------------------------------------


def train_lesion(train: LesionFrames, val: LesionFrames, out_dir: Path, *, epochs: int = 12, seed: int = DEFAULT_SEED,
                 batch_size: int = 64, lr: float = 2e-3, resume: bool = True, net: dict | None = None) -> Path:
    """Trains the lesion head; returns its checkpoint (out_dir/lesion.pt).
    Resumes from out_dir/lesion-last.pt when the data and settings match."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {**DEFAULT_NET, **(net or {})}
    settings = {"epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr, "net": cfg, "n_train": len(train),
                "n_val": len(val), "train_sum": int(sum(int(train.regions[i].sum()) for i in range(0, len(train), max(1, len(train) // 64))))}
    final, last = out_dir / "lesion.pt", out_dir / "lesion-last.pt"
    if resume and final.is_file() and torch_load(final).get("settings") == settings:
        log(f"lesion: {final} is up to date")
        return final
    seed_everything(seed)
    dev = training_device()
    model = LesionNet(cfg["widths"], cfg["hidden"]).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    start = 0
    if resume and last.is_file():
        ck = torch_load(last)
        if ck.get("settings") == settings:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            start = int(ck["epoch"])
            log(f"lesion: resuming after epoch {start}")
    tr_boxes, va_boxes = true_boxes(train), true_boxes(val)
    w_echo, w_marg = _class_weight(train.echo, len(ECHOGENICITY)).to(dev), _class_weight(train.margins, len(MARGINS)).to(dev)
    va_idx = np.arange(len(val))
    history = []
    for epoch in range(start, epochs):
        rng = np.random.default_rng([seed, epoch, 0x1E5])
        order = rng.permutation(len(train))
        model.train()
        t0, total = time.perf_counter(), 0.0
        bar = progress(total=steps_per_epoch, desc=f"lesion {epoch + 1}/{epochs}")
        for s in range(steps_per_epoch):
            idx = order[s * batch_size : (s + 1) * batch_size]
            x, tgt, ye, ym = (t.to(dev) for t in make_batch(train, tr_boxes, idx, rng))
            e, m, mlog = model.logits(x)
            total += optimiser_step(_ce(e, ye, w_echo) + _ce(m, ym, w_marg) + mask_loss(mlog, tgt), opt, sched)
            bar.update(1)
        bar.close()
        crops = np.stack([crop_pair(val.regions[i], None, box_around(*va_boxes[i]))[0] for i in va_idx])
        metrics = crop_metrics(val, va_idx, [box_around(*va_boxes[i]) for i in va_idx], predict_crops(model, crops))
        history.append({"epoch": epoch + 1, "loss": round(total / steps_per_epoch, 4), "val_true_box": metrics,
                        "seconds": round(time.perf_counter() - t0, 1)})
        log(f"lesion epoch {epoch + 1}: loss {total / steps_per_epoch:.4f}, val (true box) {metrics}")
        torch_save({"kind": CKPT_KIND, "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch + 1, "settings": settings}, last)
    cal = fit_temperature(model.eval(), val, va_boxes, seed)
    log(f"lesion: temperature {cal}")
    torch_save({"kind": CKPT_KIND, "version": CKPT_VERSION, "model": model.state_dict(), "net": cfg, "settings": settings,
                "history": history, "temperature": cal["temperature"], "calibration": cal,
                "data": {"train_frames": len(train), "val_frames": len(val)}}, final)
    return final


def load_lesion_checkpoint(ckpt: Path) -> tuple[LesionNet, dict]:
    ck = torch_load(ckpt)
    if ck.get("kind") != CKPT_KIND or "net" not in ck:
        raise TrainingError(f"{ckpt} is not a lesion-head checkpoint")
    model = LesionNet(ck["net"]["widths"], ck["net"]["hidden"])
    model.load_state_dict(ck["model"])
    return model.eval(), ck


def load_lesion(ckpt: Path) -> LesionNet:
    return load_lesion_checkpoint(ckpt)[0]


def fit_temperature(model: LesionNet, val: LesionFrames, boxes: np.ndarray, seed: int) -> dict[str, float]:
    """One softmax temperature for echogenicity and margins, minimising their
    NLL on validation crops placed as loosely as at run time (jittered boxes)."""
    idx = np.arange(len(val))
    ye, ym = torch.from_numpy(val.echo), torch.from_numpy(val.margins)
    crops = np.stack([crop_pair(val.regions[i], None, _jittered(boxes[i], np.random.default_rng([seed, int(i)])))[0] for i in idx])
    out = predict_crops(model, crops)
    pairs = [(torch.from_numpy(out["echo"]), ye), (torch.from_numpy(out["margins"]), ym)]

    def nll(t: float) -> float:
        return sum(float(F.cross_entropy(lg[y >= 0] / t, y[y >= 0], reduction="sum")) for lg, y in pairs if (y >= 0).any())

    grid = np.round(np.arange(0.5, 3.01, 0.05), 2)
    losses = [nll(float(t)) for t in grid]
    best = float(grid[int(np.argmin(losses))])
    return {"temperature": best, "nll_before": round(nll(1.0), 3), "nll_after": round(min(losses), 3)}


def _jittered(box_row, rng: np.random.Generator) -> CropBox:
    cx, cy, ax = (float(v) for v in box_row)
    box = box_around(cx, cy, ax)
    side = box.side * float(np.exp(rng.uniform(*np.log(JITTER_SCALE))))
    return CropBox(cx + rng.normal(0, JITTER_CENTRE) * side, cy + rng.normal(0, JITTER_CENTRE) * side, side)


def _lesion_job(job) -> list[dict]:
    from edge_assist.sim.dataset import generate

    presets, seeds, frames_per_seed, rng_seed = job
    return lesion_rows(generate(list(presets), seeds, frames_per_seed, rng_seed, with_lesion_mask=True))


def lesion_frames(seeds, frames_per_seed: int, rng_seed: int, data_dir: Path, *, workers: int = 2,
                  name: str = "lesions") -> LesionFrames:
    """The readable lesion frames among make_models.sim_frames(seeds, ...)'s
    (the same chunked draws, so the same frames), at source resolution; cached
    under data_dir like the other simulator data."""
    import hashlib

    from edge_assist.training.common import EXAM_PRESETS
    from edge_assist.training.make_models import CACHE_VERSION, _chunks, _run_jobs, sim_code_hash

    seeds = list(seeds)
    key = {"kind": "lesions", "presets": list(EXAM_PRESETS), "seeds": [seeds[0], seeds[-1], len(seeds)], "fps": frames_per_seed,
           "rng": rng_seed, "cache_version": CACHE_VERSION, "sim": sim_code_hash()}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(data_dir) / f"{name}-{digest}.npz"
    if path.is_file():
        log(f"data: {path} (cached)")
        return LesionFrames.load(path)
    t0 = time.perf_counter()
    jobs = [(tuple(EXAM_PRESETS), c, frames_per_seed, rng_seed * 100_003 + c[0]) for c in _chunks(seeds, 4)]
    data = LesionFrames.from_rows(_run_jobs(_lesion_job, jobs, workers, f"render {name}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    data.save(path)
    path.with_suffix(".json").write_text(json.dumps(key, indent=2))
    log(f"data: wrote {path} ({len(data)} lesion frames, {time.perf_counter() - t0:.0f} s)")
    return data
