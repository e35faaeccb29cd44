"""The interpreter student: a small CNN distilled from the teacher.

What the run-time gets (edge_assist.heads.decode_interpreter decodes it):

    forward(x [B,1,128,128] float32, normalised) -> tuple, in INTERPRETER_OUTPUTS order:
        structure_logits [B,S]  multi-label logits (vocab.STRUCTURES)
        lesion_logit     [B,1]
        lesion_size      [B,1]  sigmoid already applied: lesion size as a fraction of the
                                input height (mm = frac * H * mm_per_px_row at decode time)
        echo_logits      [B,E]  softmax logits (vocab.ECHOGENICITY)
        margin_logits    [B,M]  (vocab.MARGINS)
        location_logits  [B,L]  (vocab.LOCATIONS)
        lesion_mask      [B,1,H/2,W/2]  with a mask head only (training data with lesion
                                masks, as the simulator's): probability that a cell is on
                                the reported lesion; the run time measures the lesion on
                                it (edge_assist.lesion_measure) and falls back to
                                lesion_size when it shows no region

The student is plain conv-BN-ReLU (no depthwise convolutions: they are slow
under ORT INT8 on this CPU). Its last feature map goes through SpatialPool
(every depth row averaged over the width, a global max, and an attention pool
with the attended depth), so location and size keep the depth axis and a
small lesion anywhere is not averaged away. No data-dependent control flow:
torch.onnx.export gives a static graph.

Which frames (train_interpreter and train_teacher):
  - evaluation, calibration, threshold fitting and the report side of the
    teacher: frames whose quality label is >= min_quality (default
    vocab.QUALITY_THRESHOLD; unknown quality kept) — the run-time abstains
    below it, and a poor frame has no trustworthy report;
  - the finding losses (ground truth and distillation): frames with quality
    >= label_min_quality (default also vocab.QUALITY_THRESHOLD).
    label_min_quality=None trains on every labelled frame (labels describe
    what is visible, so poor frames are correct examples too); it doubles
    the frames and the time per epoch, and in a trial at equal wall time
    (1 epoch on all frames vs 3 on readable ones) the teacher was worse (val
    findings macro-F1 0.734 vs 0.816, lesion F1 0.00 vs 0.58), so it is off
    by default. Only 11 of the 70 gallbladder labels in the
    training frames are on readable frames (the rest are off-target views).

Loss = ground truth where labelled (masked BCE with a positive weight per
structure, BCE x2 on lesion presence, CE with mild class weights, Huber on
size) + distillation from the teacher's soft targets (BCE on its sigmoid
probabilities, KL at tau=2 on the softmax heads, Huber on size; the
lesion-conditional heads are weighted by the lesion probability: ground
truth where known, else the teacher's) + cosine distance between a
projection of the student's features and the teacher's image embedding
+ (mask head) 3 x (10 x BCE + soft Dice) on the lesion mask.
Finally one temperature is fitted on the validation frames by minimising the
NLL of all the decisions the sentence rests on (ECE before/after reported),
and the lesion threshold is tuned for F1 there (kept at 0.5 unless another
value is clearly better).

Metric definitions (evaluate_outputs, shared with the ONNX evaluation):
    findings_macro_f1  mean of the F1 terms: one per structure label (binary,
                       positive class), lesion presence (binary), and the
                       macro-F1 of echogenicity, margins and location over the
                       frames whose label is known (lesion present). A term
                       with no positives and no predicted positives is skipped.
    size_mae_mm        |pred - true| fraction * H * mm_per_px_row on frames with
                       a lesion, a known size and a known pixel spacing.
    ece                top-label ECE (15 equal bins) pooled over every decision:
                       each structure label, lesion presence, and the three
                       lesion attributes on lesion frames.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_assist.heads import structure_thresholds
from edge_assist.lesion_measure import lesion_size_frac
from edge_assist.training.common import model_device, seed_everything, to_device, training_device
from edge_assist.training.data import ArrayDataset, normalise
from edge_assist.vocab import ECHOGENICITY, LOCATIONS, MARGINS, QUALITY_THRESHOLD, STRUCTURES

INTERPRETER_OUTPUTS = ("structure_logits", "lesion_logit", "lesion_size", "echo_logits", "margin_logits", "location_logits")
# manifest role -> ONNX output name (the roles edge_assist.manifest.REQUIRED_OUTPUTS asks for)
OUTPUT_ROLES = {
    "structures": "structure_logits",
    "lesion": "lesion_logit",
    "size": "lesion_size",
    "echogenicity": "echo_logits",
    "margins": "margin_logits",
    "location": "location_logits",
}
MASK_OUTPUT = "lesion_mask"  # [B,1,64,64] probabilities, students with a mask head only
LESION_THRESHOLD = 0.5
STRUCTURE_THRESHOLD = 0.5
CKPT_KIND = "edge-assist-interpreter"
CKPT_VERSION = 1

# No stride-1 conv at 64x64 and a mask decoder that stops at 32x32: the two
# convs at 64x64 were a fifth of the interpreter's time (3.2 -> 2.4 ms p50 on
# the 2-core EPYC, docs/TRAINING.md "A faster interpreter").
DEFAULT_STUDENT = {"widths": [16, 32, 64, 128], "depth": [0, 1, 2, 2], "hidden": 192, "input_hw": [128, 128],
                   "mask_finest_stage": 1}
# mask 3: at weight 1 the lesion mask was still learning after 8 epochs (validation mask loss 0.92)
DEFAULT_LOSS_WEIGHTS = {"gt": 1.0, "kd": 1.0, "embed": 0.5, "mask": 3.0}
KD_TAU = 2.0


# -- building blocks (shared with the teacher) ---------------------------------------


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def depth_pool(feat: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] -> [B,C*H]: average over the width only, keep the depth rows."""
    return feat.mean(dim=3).flatten(1)


class SpatialPool(nn.Module):
    """[B,C,h,w] -> [B, C*h + 2*C + 1] features for the finding heads:
    - depth rows: mean over the width, every depth row kept (location, depth);
    - global max: "is there a small bright/dark thing anywhere" (lesion presence);
    - attention pool: softmax over positions of a 1x1 conv, the features there
      (lesion attributes: echogenicity, margins, size) and the attended depth
      (0 = top, 1 = bottom of the image: location).
    Static shapes only, so it exports to plain ONNX ops."""

    def __init__(self, channels: int, rows: int, cols: int):
        super().__init__()
        self.att = nn.Conv2d(channels, 1, 1)
        y = ((torch.arange(rows, dtype=torch.float32) + 0.5) / rows)[:, None].expand(rows, cols).reshape(1, rows * cols)
        self.register_buffer("ycoord", y, persistent=False)
        self.out_features = channels * rows + 2 * channels + 1

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        rows = f.mean(dim=3).flatten(1)
        gmax = f.amax(dim=(2, 3))
        a = torch.softmax(self.att(f).flatten(1), dim=1)  # [B, h*w]
        att = torch.bmm(f.flatten(2), a.unsqueeze(2)).squeeze(2)  # [B, C]
        y = (a * self.ycoord).sum(dim=1, keepdim=True)
        return torch.cat([rows, gmax, att, y], dim=1)


class FindingHeads(nn.Module):
    """hidden vector -> the six outputs, in INTERPRETER_OUTPUTS order."""

    def __init__(self, hidden: int):
        super().__init__()
        self.structures = nn.Linear(hidden, len(STRUCTURES))
        self.lesion = nn.Linear(hidden, 1)
        self.size = nn.Linear(hidden, 1)
        self.echo = nn.Linear(hidden, len(ECHOGENICITY))
        self.margins = nn.Linear(hidden, len(MARGINS))
        self.location = nn.Linear(hidden, len(LOCATIONS))
        nn.init.constant_(self.size.bias, -2.0)  # ~12% of the height: a typical lesion, not a huge one

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.structures(h), self.lesion(h), torch.sigmoid(self.size(h)), self.echo(h), self.margins(h), self.location(h))


class MaskDecoder(nn.Module):
    """Stage features (strides 2, 4, 8, 16) -> lesion-mask logits [B,1,H/2,W/2]:
    upsample the deepest map and add each shallower one (1x1 projections), a
    3x3 conv after each merge. Nearest-neighbour upsampling: plain ONNX Resize.

    finest_stage > 0 merges only down to that stage and upsamples the logits
    bilinearly from there to half the input (a 3x3 conv at full decoder
    width on the finest map is costly; a bilinear logit map still places the
    edge between cells)."""

    def __init__(self, channels: list[int], width: int = 16, finest_stage: int = 0):
        super().__init__()
        if not 0 <= finest_stage < len(channels):
            raise ValueError(f"MaskDecoder: finest_stage {finest_stage} outside the {len(channels)} stages")
        self.finest_stage = int(finest_stage)
        used = channels[self.finest_stage:]
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in used)
        self.merge = nn.ModuleList(conv_bn_relu(width, width) for _ in used[:-1])
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.out = nn.Conv2d(width, 1, 1)
        self.finish = (nn.Upsample(scale_factor=2 ** self.finest_stage, mode="bilinear", align_corners=False)
                       if self.finest_stage else nn.Identity())
        nn.init.constant_(self.out.bias, -4.0)  # start with "no lesion anywhere"

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        stages = stages[self.finest_stage:]
        y = self.lateral[-1](stages[-1])
        for k in range(len(stages) - 2, -1, -1):
            y = self.merge[k](self.up(y) + self.lateral[k](stages[k]))
        return self.finish(self.out(y))


class StudentNet(nn.Module):
    """Plain conv-BN-ReLU CNN: per stage a stride-2 conv then `depth[i]` stride-1
    convs; SpatialPool on the last map; one hidden layer; the six heads.

    With mask_head (the default when the training data have lesion masks) a
    MaskDecoder also segments the reported lesion at half the input
    resolution: a seventh output, `lesion_mask` (probabilities), on which
    the run time measures the lesion (edge_assist.lesion_measure); the
    regressed lesion_size stays as the fallback when the mask finds no
    region. Regressed, the sizes of held-out lesions correlated with the
    truth at only 0.49. The mask learns from the mask loss only."""

    def __init__(self, widths=(16, 32, 64, 128), depth=(1, 1, 2, 2), hidden: int = 192, input_hw=(128, 128),
                 mask_head: bool = False, mask_finest_stage: int = 0):
        super().__init__()
        layers, c, ends = [], 1, []
        for w, d in zip(widths, depth):
            layers.append(conv_bn_relu(c, w, 2))
            layers += [conv_bn_relu(w, w) for _ in range(d)]
            ends.append(len(layers) - 1)
            c = w
        self.features = nn.Sequential(*layers)
        self._stage_ends = tuple(ends)
        rows = int(input_hw[0]) // (2 ** len(widths))
        cols = int(input_hw[1]) // (2 ** len(widths))
        self.pool = SpatialPool(c, rows, cols)
        self.fc = nn.Sequential(nn.Linear(self.pool.out_features, hidden), nn.ReLU(inplace=True))
        self.heads = FindingHeads(hidden)
        self.mask = MaskDecoder([int(w) for w in widths], finest_stage=mask_finest_stage) if mask_head else None
        self.input_hw = tuple(int(v) for v in input_hw)
        self.temperature = 1.0  # plain attributes (not exported); load_student sets them
        self.lesion_threshold = LESION_THRESHOLD

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._stage_ends:
                out.append(x)
        return out

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)))

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None]:
        """(hidden vector, the six outputs, lesion-mask logits or None)."""
        if self.mask is None:
            h = self.hidden(x)
            return h, self.heads(h), None
        stages = self._stages(x)
        h = self.fc(self.pool(stages[-1]))
        return h, self.heads(h), self.mask(stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The six outputs, plus the lesion-mask probabilities with mask_head."""
        _, outs, logits = self.parts(x)
        return outs if logits is None else (*outs, torch.sigmoid(logits))

    @property
    def output_names(self) -> tuple[str, ...]:
        return INTERPRETER_OUTPUTS + ((MASK_OUTPUT,) if self.mask is not None else ())


# -- data helpers ---------------------------------------------------------------------


def select_frames(data: ArrayDataset, min_quality: float | None = QUALITY_THRESHOLD) -> np.ndarray:
    """Indices of the frames the interpreter is trained / evaluated on: quality label
    >= min_quality, or quality unknown (nan). min_quality=None keeps all."""
    n = len(data)
    if min_quality is None:
        return np.arange(n)
    q = np.asarray(data.quality, np.float64)
    return np.flatnonzero(np.isnan(q) | (q >= float(min_quality)))


def batch_targets(data: ArrayDataset, idx: np.ndarray, flips: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Targets of the frames idx; flips: the frames augment() mirrored (their
    lesion masks are mirrored too)."""
    out = {}
    if data.lesion_mask is not None:
        m = data.lesion_mask[idx].astype(np.float32) / 255.0
        if flips is not None and flips.any():
            m[flips] = m[flips, :, ::-1]
        out["mask"] = torch.from_numpy(np.ascontiguousarray(m[:, None]))
    return out | {
        "structures": torch.from_numpy(np.asarray(data.structures[idx], np.float32)),
        "lesion": torch.from_numpy(np.asarray(data.lesion[idx], np.float32)),
        "size": torch.from_numpy(np.asarray(data.size_frac[idx], np.float32)),
        "echo": torch.from_numpy(np.asarray(data.echo[idx], np.int64)),
        "margins": torch.from_numpy(np.asarray(data.margins[idx], np.int64)),
        "location": torch.from_numpy(np.asarray(data.location[idx], np.int64)),
    }


def augment(images_u8: np.ndarray, rng: np.random.Generator | None) -> tuple[torch.Tensor, np.ndarray]:
    """Normalised [B,1,H,W] tensor and the per-sample horizontal-flip flags.

    Only label-preserving changes: a left-right flip (structures, size, depth
    location unchanged) and mild gain/offset jitter. Never a vertical flip or a
    shift (location is the depth third)."""
    b = len(images_u8)
    if rng is None:
        return torch.from_numpy(normalise(images_u8)), np.zeros(b, bool)
    flips = rng.random(b) < 0.5
    img = images_u8.astype(np.float32)
    img[flips] = img[flips, :, ::-1]
    gain = rng.uniform(0.85, 1.15, size=(b, 1, 1)).astype(np.float32)
    offset = rng.uniform(-8, 8, size=(b, 1, 1)).astype(np.float32)
    img = np.clip(img * gain + offset, 0, 255)
    return torch.from_numpy(normalise(img)), flips


def class_weights(data: ArrayDataset, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """Mild inverse-sqrt-frequency weights for the softmax heads and a positive
    weight sqrt(neg/pos) (1..10) per structure label (helps macro-F1 on rare
    labels such as the gallbladder)."""
    out = {}
    for key, names in (("echo", ECHOGENICITY), ("margins", MARGINS), ("location", LOCATIONS)):
        y = np.asarray(getattr(data, key)[idx])
        y = y[y >= 0]
        counts = np.bincount(y, minlength=len(names)).astype(np.float64) if len(y) else np.ones(len(names))
        present = counts > 0
        w = np.ones(len(names))
        if present.any():
            w[present] = np.clip((counts[present] / counts[present].mean()) ** -0.5, 0.25, 4.0)
        out[key] = torch.tensor(w, dtype=torch.float32)
    st = np.asarray(data.structures[idx], np.float64)
    pos = np.nansum(st, 0)
    neg = np.sum(~np.isnan(st), 0) - pos
    out["structures"] = torch.tensor(np.clip(np.sqrt(neg / np.maximum(pos, 1.0)), 1.0, 10.0), dtype=torch.float32)
    return out


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _size_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Huber in percent of the image height (1 % of 128 px = 1.3 px)
    return F.smooth_l1_loss(pred * 100.0, target * 100.0, reduction="none", beta=1.0) * 0.1


# Lesion presence is the hard decision (small, faint targets in speckle): weighted up.
FINDING_WEIGHTS = {"structures": 1.0, "lesion": 2.0, "size": 1.0, "echo": 1.0, "margins": 1.0, "location": 1.0}


def findings_loss(outs, tgt: dict[str, torch.Tensor], cw: dict[str, torch.Tensor] | None = None):
    """Masked ground-truth loss over the six outputs. Returns (total, parts)."""
    s_log, l_log, size, e_log, m_log, loc_log = outs
    parts = {}
    st = tgt["structures"]
    known = ~torch.isnan(st)
    pw = None if cw is None else cw.get("structures")
    parts["structures"] = _masked_mean(
        F.binary_cross_entropy_with_logits(s_log, torch.nan_to_num(st), pos_weight=pw, reduction="none"), known)
    les = tgt["lesion"]
    known = ~torch.isnan(les)
    parts["lesion"] = _masked_mean(F.binary_cross_entropy_with_logits(l_log[:, 0], torch.nan_to_num(les), reduction="none"), known)
    sz = tgt["size"]
    has_size = (les == 1) & torch.isfinite(sz) & (sz > 0)
    parts["size"] = _masked_mean(_size_loss(size[:, 0], torch.nan_to_num(sz)), has_size)
    for key, logits in (("echo", e_log), ("margins", m_log), ("location", loc_log)):
        y = tgt[key]
        ok = y >= 0
        w = None if cw is None else cw[key]
        ce = F.cross_entropy(logits, y.clamp(min=0), weight=w, reduction="none")
        parts[key] = _masked_mean(ce, ok)
    total = sum(FINDING_WEIGHTS[k] * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice on the lesion mask (frames without a lesion: an empty
    target, so Dice asks for an empty mask)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1.0 - (2.0 * (p * t).sum(1) + 1.0) / (p.sum(1) + t.sum(1) + 1.0)
    return bce * 10.0 + dice.mean()


def distill_loss(s_outs, t_outs, lesion_w: torch.Tensor, tau: float = KD_TAU):
    """Student vs the teacher's soft targets. lesion_w [B] weights the lesion
    attributes (ground-truth lesion where known, else the teacher's p(lesion))."""
    s_s, s_l, s_size, s_e, s_m, s_loc = s_outs
    t_s, t_l, t_size, t_e, t_m, t_loc = t_outs
    parts = {
        "structures": F.binary_cross_entropy_with_logits(s_s, torch.sigmoid(t_s)),
        "lesion": F.binary_cross_entropy_with_logits(s_l, torch.sigmoid(t_l)),
    }
    denom = lesion_w.sum().clamp(min=1e-3)
    parts["size"] = (_size_loss(s_size[:, 0], t_size[:, 0]) * lesion_w).sum() / denom
    for key, s, t in (("echo", s_e, t_e), ("margins", s_m, t_m), ("location", s_loc, t_loc)):
        kl = F.kl_div(F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1), log_target=True, reduction="none").sum(1)
        parts[key] = (kl * lesion_w).sum() / denom * tau * tau
    total = sum(FINDING_WEIGHTS[k] * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def batches(n: int, size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for s in range(0, n, size):
        b = order[s : s + size]
        if rng is not None and len(b) < 2:  # BatchNorm cannot train on one sample
            continue
        yield b


@torch.no_grad()
def run_model(model: nn.Module, images_u8: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Outputs (numpy, keyed by INTERPRETER_OUTPUTS names, plus MASK_OUTPUT for a
    student with a mask head) of a student-like model."""
    was = model.training
    model.eval()
    dev = model_device(model)
    chunks = []
    for s in range(0, len(images_u8), batch_size):
        x = torch.from_numpy(normalise(images_u8[s : s + batch_size])).to(dev)
        chunks.append([o.float().cpu().numpy() for o in model(x)])
    model.train(was)
    if not chunks:
        widths = (len(STRUCTURES), 1, 1, len(ECHOGENICITY), len(MARGINS), len(LOCATIONS))
        return {n: np.zeros((0, w), np.float32) for n, w in zip(INTERPRETER_OUTPUTS, widths)}
    names = INTERPRETER_OUTPUTS + (MASK_OUTPUT,)
    return {n: np.concatenate([c[i] for c in chunks]) for i, n in enumerate(names[: len(chunks[0])])}


# -- metrics and calibration ----------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _f1_binary(y: np.ndarray, p: np.ndarray) -> float | None:
    tp = int(np.sum(y & p))
    fp = int(np.sum(~y & p))
    fn = int(np.sum(y & ~p))
    if tp + fp + fn == 0:
        return None  # no positives and none predicted: undefined, skipped
    return 2 * tp / (2 * tp + fp + fn)


def _f1_macro(y: np.ndarray, pred: np.ndarray, k: int) -> float | None:
    if len(y) == 0:
        return None
    scores = [_f1_binary(y == c, pred == c) for c in range(k)]
    scores = [s for s in scores if s is not None]
    return float(np.mean(scores)) if scores else None


def calibration_terms(outputs: dict[str, np.ndarray], data: ArrayDataset, idx: np.ndarray | None = None):
    """Every decision with a known answer: ('binary', logits[n], labels[n]) or
    ('multi', logits[n,k], labels[n])."""
    idx = np.arange(len(data)) if idx is None else np.asarray(idx)
    terms = []
    st = data.structures[idx]
    known = ~np.isnan(st)
    if known.any():
        terms.append(("binary", np.asarray(outputs["structure_logits"], np.float64)[known], st[known].astype(np.float64)))
    les = data.lesion[idx]
    known = ~np.isnan(les)
    if known.any():
        terms.append(("binary", np.asarray(outputs["lesion_logit"], np.float64)[:, 0][known], les[known].astype(np.float64)))
    for name, key in (("echo_logits", "echo"), ("margin_logits", "margins"), ("location_logits", "location")):
        y = getattr(data, key)[idx]
        ok = y >= 0
        if ok.any():
            terms.append(("multi", np.asarray(outputs[name], np.float64)[ok], y[ok].astype(np.int64)))
    return terms


def _probs_correct(terms, temperature: float):
    conf, correct, nll = [], [], []
    for kind, logits, y in terms:
        z = logits / temperature
        if kind == "binary":
            p = _sigmoid(z)
            pred = p >= 0.5
            conf.append(np.where(pred, p, 1 - p))
            correct.append(pred == (y > 0.5))
            nll.append(np.logaddexp(0, z) - y * z)  # BCE with logits
        else:
            z = z - z.max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            pred = logp.argmax(1)
            conf.append(np.exp(logp.max(1)))
            correct.append(pred == y)
            nll.append(-logp[np.arange(len(y)), y])
    if not conf:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0)
    return np.concatenate(conf), np.concatenate(correct), np.concatenate(nll)


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    if len(conf) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(float(conf[m].mean()) - float(correct[m].mean()))
    return float(ece)


def nll_and_ece(terms, temperature: float = 1.0) -> tuple[float, float]:
    conf, correct, nll = _probs_correct(terms, temperature)
    if len(nll) == 0:
        return float("nan"), float("nan")
    return float(nll.mean()), expected_calibration_error(conf, correct)


def fit_temperature(outputs: dict[str, np.ndarray], data: ArrayDataset, idx: np.ndarray | None = None,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> dict[str, float]:
    """One temperature T (logits / T) for all heads, minimising the mean NLL of
    every decision on held-out data (golden-section search on log T; the NLL is
    unimodal in 1/T). Returns T with NLL and ECE before (T=1) and after."""
    terms = calibration_terms(outputs, data, idx)
    nll0, ece0 = nll_and_ece(terms, 1.0)
    if not terms:
        return {"temperature": 1.0, "nll_before": nll0, "nll_after": nll0, "ece_before": ece0, "ece_after": ece0}
    f = lambda lt: _probs_correct(terms, math.exp(lt))[2].mean()  # noqa: E731
    a, b = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    t = math.exp((a + b) / 2)
    if f(math.log(t)) > nll0:  # never worse than leaving it alone
        t = 1.0
    nll1, ece1 = nll_and_ece(terms, t)
    return {"temperature": float(t), "nll_before": nll0, "nll_after": nll1, "ece_before": ece0, "ece_after": ece1}


def tune_lesion_threshold(outputs: dict[str, np.ndarray], data: ArrayDataset, idx: np.ndarray | None = None, *,
                          temperature: float = 1.0, grid=np.linspace(0.2, 0.8, 25), min_gain: float = 0.01) -> float:
    """The p(lesion) threshold (after temperature) with the best lesion F1 on held-out
    frames; stays at LESION_THRESHOLD unless another value is better by min_gain."""
    idx = np.arange(len(data)) if idx is None else np.asarray(idx)
    y = data.lesion[idx]
    known = ~np.isnan(y)
    if known.sum() < 20 or not (y[known] > 0.5).any():
        return LESION_THRESHOLD
    p = _sigmoid(np.asarray(outputs["lesion_logit"], np.float64)[:, 0] / temperature)[known]
    yk = y[known] > 0.5
    score = lambda t: _f1_binary(yk, p >= t) or 0.0  # noqa: E731
    base = score(LESION_THRESHOLD)
    best = max(grid, key=score)
    return float(best) if score(best) >= base + min_gain else LESION_THRESHOLD


# A structure's own threshold is fitted only on this many positive frames or more
# (the gallbladder had 12 in the student's validation frames, 81 in train_all's larger set).
MIN_THRESHOLD_POSITIVES = 20


def tune_structure_thresholds(outputs: dict[str, np.ndarray], data: ArrayDataset, idx: np.ndarray | None = None, *,
                              temperature: float = 1.0, grid=np.round(np.arange(0.3, 0.801, 0.05), 2),
                              min_gain: float = 0.01) -> dict[str, float]:
    """One p(structure) threshold per structure (after temperature): the one with
    the best F1 on held-out frames where it beats STRUCTURE_THRESHOLD by
    min_gain and the structure has MIN_THRESHOLD_POSITIVES positives or more;
    else STRUCTURE_THRESHOLD. A structure the student half-learns (the
    gallbladder: many negatives at p 0.5-0.7) otherwise reports false positives
    at the shared 0.5."""
    idx = np.arange(len(data)) if idx is None else np.asarray(idx)
    st = data.structures[idx]
    probs = _sigmoid(np.asarray(outputs["structure_logits"], np.float64) / temperature)
    thresholds = {}
    for j, name in enumerate(STRUCTURES):
        known = ~np.isnan(st[:, j])
        y, p = st[known, j] > 0.5, probs[known, j]
        thresholds[name] = STRUCTURE_THRESHOLD
        if y.sum() < MIN_THRESHOLD_POSITIVES:
            continue
        score = lambda t: _f1_binary(y, p >= t) or 0.0  # noqa: E731
        best = max(grid, key=score)
        if score(best) >= score(STRUCTURE_THRESHOLD) + min_gain:
            thresholds[name] = float(best)
    return thresholds


def structure_threshold_array(thresholds: float | dict[str, float]) -> np.ndarray:
    """(len(STRUCTURES),) thresholds from one shared value, or from a
    per-structure dict read as the run time reads the manifest's decode."""
    if isinstance(thresholds, dict):
        return np.array(structure_thresholds({"structure_thresholds": thresholds}, STRUCTURES))
    return np.full(len(STRUCTURES), float(thresholds))


def evaluate_outputs(outputs: dict[str, np.ndarray], data: ArrayDataset, idx: np.ndarray | None = None, *,
                     temperature: float = 1.0, lesion_threshold: float = LESION_THRESHOLD,
                     structure_threshold: float | dict[str, float] = STRUCTURE_THRESHOLD) -> dict[str, Any]:
    """Findings metrics from raw outputs (numpy, keyed by INTERPRETER_OUTPUTS names;
    row i belongs to data frame idx[i]). Works for torch and ONNX Runtime outputs.
    structure_threshold: one for all, or {structure: threshold}."""
    idx = np.arange(len(data)) if idx is None else np.asarray(idx)
    f1 = {}
    st = data.structures[idx]
    s_pred = _sigmoid(np.asarray(outputs["structure_logits"], np.float64) / temperature) >= structure_threshold_array(structure_threshold)
    for j, name in enumerate(STRUCTURES):
        known = ~np.isnan(st[:, j])
        if known.any():
            f1[f"structure/{name}"] = _f1_binary(st[known, j] > 0.5, s_pred[known, j])
    les = data.lesion[idx]
    known = ~np.isnan(les)
    l_prob = _sigmoid(np.asarray(outputs["lesion_logit"], np.float64)[:, 0] / temperature)
    if known.any():
        f1["lesion"] = _f1_binary(les[known] > 0.5, l_prob[known] >= lesion_threshold)
    for name, key, k in (("echo_logits", "echo", len(ECHOGENICITY)), ("margin_logits", "margins", len(MARGINS)),
                         ("location_logits", "location", len(LOCATIONS))):
        y = getattr(data, key)[idx]
        ok = y >= 0
        f1[key] = _f1_macro(y[ok], np.asarray(outputs[name])[ok].argmax(1), k) if ok.any() else None
    terms = {k: v for k, v in f1.items() if v is not None}
    groups = [np.mean([v for k, v in terms.items() if k.startswith("structure/")])] if any(k.startswith("structure/") for k in terms) else []
    groups += [terms[k] for k in ("lesion", "echo", "margins", "location") if k in terms]
    # size: fraction of the input height -> mm with the frame's row spacing
    h = data.images.shape[1]
    sz = data.size_frac[idx]
    mm_row = data.mm_per_px[idx, 0] if len(idx) else np.zeros(0)
    has = (les == 1) & np.isfinite(sz) & (sz > 0) & np.isfinite(mm_row)
    reg = np.asarray(outputs["lesion_size"], np.float64)[:, 0]
    masks = outputs.get(MASK_OUTPUT)
    pred_sz = np.array([lesion_size_frac(reg[i], None if masks is None else masks[i])[0] if has[i] else reg[i] for i in range(len(reg))])
    err_mm = np.abs(pred_sz[has] - sz[has]) * h * mm_row[has]
    conf_terms = calibration_terms(outputs, data, idx)
    nll, ece = nll_and_ece(conf_terms, temperature)
    return {
        "findings_macro_f1": float(np.mean(list(terms.values()))) if terms else float("nan"),
        "findings_macro_f1_by_group": float(np.mean(groups)) if groups else float("nan"),
        "f1": {k: (None if v is None else round(float(v), 4)) for k, v in f1.items()},
        "size_mae_mm": float(err_mm.mean()) if len(err_mm) else float("nan"),
        "size_median_ae_mm": float(np.median(err_mm)) if len(err_mm) else float("nan"),
        "ece": ece,
        "nll": nll,
        "temperature": float(temperature),
        "n_frames": int(len(idx)),
        "n_lesion_frames": int(np.sum(les == 1)),
        "n_size_frames": int(has.sum()),
    }


def evaluate_student(model: nn.Module, data: ArrayDataset, *, min_quality: float | None = QUALITY_THRESHOLD,
                     temperature: float | None = None) -> dict[str, Any]:
    """Torch-side metrics on the frames the run-time would interpret (quality >=
    min_quality or unknown). temperature and the lesion threshold default to the
    model's fitted ones (load_student sets them)."""
    idx = select_frames(data, min_quality)
    t = float(getattr(model, "temperature", 1.0) if temperature is None else temperature)
    out = run_model(model, data.images[idx])
    thr = float(getattr(model, "lesion_threshold", LESION_THRESHOLD))
    m = evaluate_outputs(out, data, idx, temperature=t, lesion_threshold=thr,  # output row i <-> frame idx[i]
                         structure_threshold=getattr(model, "structure_thresholds", STRUCTURE_THRESHOLD))
    m["ece_uncalibrated"] = nll_and_ece(calibration_terms(out, data, idx), 1.0)[1]
    return m


# -- distillation ---------------------------------------------------------------------


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _teacher_soft(tt: dict[str, np.ndarray], rows: np.ndarray, flips: np.ndarray | None = None):
    """Teacher targets for the given rows. tt values are [2, N, k] (plain and
    left-right flipped frames; flips picks which) or [N, k] (plain only)."""
    def pick(a):
        if a.ndim == 3:
            which = np.zeros(len(rows), np.int64) if flips is None else flips.astype(np.int64)
            return torch.from_numpy(a[which, rows])
        return torch.from_numpy(a[rows])

    return pick(tt["embedding"]), tuple(pick(tt[n]) for n in INTERPRETER_OUTPUTS)


def _lesion_weight(gt_lesion: torch.Tensor, t_lesion_logit: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(t_lesion_logit[:, 0])
    return torch.where(torch.isnan(gt_lesion), p, gt_lesion)


def _student_loss(student, proj, x, tgt, t_emb, t_outs, cw, weights):
    dev = model_device(student)  # the batch comes from the CPU
    x, tgt, t_emb = x.to(dev), to_device(tgt, dev), t_emb.to(dev)
    t_outs = tuple(t.to(dev) for t in t_outs)
    h, outs, mask_logits = student.parts(x)
    gt, gt_parts = findings_loss(outs, tgt, cw)
    kd, kd_parts = distill_loss(outs, t_outs, _lesion_weight(tgt["lesion"], t_outs[1]))
    emb = 1.0 - F.cosine_similarity(proj(h), t_emb, dim=1).mean()
    total = weights["gt"] * gt + weights["kd"] * kd + weights["embed"] * emb
    parts = {"gt": float(gt.detach()), "kd": float(kd.detach()), "embed": float(emb.detach()), "mask": 0.0}
    if mask_logits is not None and "mask" in tgt:
        ml = mask_loss(mask_logits, tgt["mask"])
        total = total + weights["mask"] * ml
        parts["mask"] = float(ml.detach())
    return total, parts


@torch.no_grad()
def _val_loss(student, proj, data, idx, tt, cw, weights, batch_size) -> dict:
    student.eval()
    proj.eval()
    sums, n = {"loss": 0.0, "gt": 0.0, "kd": 0.0, "embed": 0.0, "mask": 0.0}, 0
    for s in range(0, len(idx), batch_size):
        rows = np.arange(s, min(s + batch_size, len(idx)))
        x = torch.from_numpy(normalise(data.images[idx[rows]]))
        t_emb, t_outs = _teacher_soft(tt, rows)
        loss, parts = _student_loss(student, proj, x, batch_targets(data, idx[rows]), t_emb, t_outs, cw, weights)
        k = len(rows)
        sums["loss"] += float(loss) * k
        for key, v in parts.items():
            sums[key] += v * k
        n += k
    student.train()
    proj.train()
    return {f"val_{k}": v / n for k, v in sums.items()} if n else {}


def train_interpreter(train: ArrayDataset, val: ArrayDataset, teacher_ckpt: Path, out_dir: Path, *, epochs: int, seed: int,
                      batch_size: int = 64, resume: bool = True, progress: bool = True, arch: dict | None = None,
                      lr: float = 1e-3, loss_weights: dict | None = None,
                      min_quality: float | None = QUALITY_THRESHOLD,
                      label_min_quality: float | None = QUALITY_THRESHOLD) -> Path:
    """Distil the student from the teacher, fit the temperature on val and write
    out_dir/interpreter.pt (student state, temperature, metrics). The file is
    also written after every epoch (with the optimiser; "complete": False) and
    resumed from when resume=True. Returns its path. AdamW, warm-up then
    cosine; lr 1e-3 (see train_teacher)."""
    from tqdm import tqdm

    from edge_assist.training.teacher import load_teacher, teacher_targets

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "interpreter.pt"
    # Measure lesions on a mask when the data have lesion masks (the simulator's do).
    cfg = {**DEFAULT_STUDENT, "mask_head": train.lesion_mask is not None, **(arch or {})}
    if cfg["mask_head"] and (train.lesion_mask is None or val.lesion_mask is None):
        raise ValueError("train_interpreter: a mask head needs lesion masks in the training and validation data")
    cfg["mask_head"] = bool(cfg["mask_head"])
    half = tuple(v // 2 for v in train.images.shape[1:3])
    if cfg["mask_head"] and (train.lesion_mask.shape[1:] != half or val.lesion_mask.shape[1:] != half):
        raise ValueError(f"train_interpreter: lesion masks must be half the image size {half}, got {train.lesion_mask.shape[1:]}")
    cfg["widths"] = [int(w) for w in cfg["widths"]]
    cfg["depth"] = [int(d) for d in cfg["depth"]]
    cfg["input_hw"] = [int(v) for v in train.images.shape[1:3]]
    weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
    tr_idx = select_frames(train, label_min_quality)
    va_idx = select_frames(val, min_quality)
    if len(tr_idx) < 2:
        raise ValueError(f"train_interpreter: only {len(tr_idx)} training frames with quality >= {label_min_quality}; need more data")
    teacher, _ = load_teacher(teacher_ckpt)
    seed_everything(seed)
    student = StudentNet(**cfg)
    proj = nn.Linear(cfg["hidden"], teacher.embed_dim)
    dev = training_device()
    teacher, student, proj = teacher.to(dev), student.to(dev), proj.to(dev)
    params = list(student.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    start, history, ck = 0, [], None
    if resume and path.is_file():
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ck, dict) or ck.get("kind") != CKPT_KIND:
            raise ValueError(f"{path} is not an interpreter checkpoint; delete it or pass resume=False")
        if ck["arch"] != cfg:
            raise ValueError(f"{path} was trained with a different architecture ({ck['arch']}); pass resume=False or delete it")
        student.load_state_dict(ck["student"])
        proj.load_state_dict(ck["proj"])
        if ck.get("optimizer"):
            opt.load_state_dict(ck["optimizer"])
        start, history = int(ck["epoch"]), list(ck["history"])
        if start >= epochs and ck.get("complete"):
            _log(progress, f"interpreter: {path} already has {start} epochs (asked for {epochs}); nothing to do")
            return path
        _log(progress, f"interpreter: resuming {path} after epoch {start}")

    t0 = time.perf_counter()
    tr_imgs = train.images[tr_idx]
    tt = {k: np.stack([a, b]) for (k, a), b in zip(teacher_targets(teacher, tr_imgs).items(),
                                                   teacher_targets(teacher, tr_imgs[:, :, ::-1]).values())}
    tv = teacher_targets(teacher, val.images[va_idx])
    _log(progress, f"interpreter: teacher targets for {len(tr_idx)} train / {len(va_idx)} val frames "
                   f"({time.perf_counter() - t0:.0f} s)")
    del teacher
    cw = to_device(class_weights(train, tr_idx), dev)
    steps_per_epoch = max(1, len(tr_idx) // batch_size)
    total = steps_per_epoch * epochs
    warmup = min(200, max(1, total // 10))

    def state(epoch: int, **extra) -> dict:
        return {"kind": CKPT_KIND, "version": CKPT_VERSION, "arch": cfg, "student": student.state_dict(),
                "proj": proj.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "epochs": epochs, "seed": seed,
                "lr": lr, "loss_weights": weights, "min_quality": min_quality, "label_min_quality": label_min_quality,
                "teacher": str(teacher_ckpt),
                "history": history, "temperature": None, "metrics": {}, "complete": False, **extra}

    if start == 0:
        v = _val_loss(student, proj, val, va_idx, tv, cw, weights, 256)
        history.append({"epoch": 0, **v})
        n_params = sum(p.numel() for p in student.parameters())
        _log(progress, f"interpreter: student {n_params / 1e6:.3f}M params; before training: "
                       + ", ".join(f"{k} {x:.3f}" for k, x in v.items()))
    student.train()
    proj.train()
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])
        sums, nb = {"loss": 0.0, "gt": 0.0, "kd": 0.0, "embed": 0.0, "mask": 0.0}, 0
        step = epoch * steps_per_epoch
        bar = tqdm(list(batches(len(tr_idx), batch_size, rng)), desc=f"student {epoch + 1}/{epochs}", disable=not progress,
                   leave=False, file=sys.stderr)
        for rows in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, lr, warmup)
            x, flips = augment(tr_imgs[rows], rng)
            t_emb, t_outs = _teacher_soft(tt, rows, flips)
            loss, parts = _student_loss(student, proj, x, batch_targets(train, tr_idx[rows], flips), t_emb, t_outs, cw, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            nb += 1
            sums["loss"] += float(loss.detach())
            for k, val_ in parts.items():
                sums[k] += val_
            bar.set_postfix(loss=f"{sums['loss'] / nb:.3f}")
        bar.close()
        v = _val_loss(student, proj, val, va_idx, tv, cw, weights, 256)
        m = evaluate_outputs(run_model(student, val.images[va_idx]), val, va_idx)
        rec = {"epoch": epoch + 1, **{f"train_{k}": s / max(nb, 1) for k, s in sums.items()}, **v,
               "val_findings_macro_f1": m["findings_macro_f1"], "val_size_mae_mm": m["size_mae_mm"],
               "seconds": time.perf_counter() - t0}
        history.append(rec)
        save_atomic(state(epoch + 1), path)
        _log(progress, f"student epoch {epoch + 1}/{epochs} ({rec['seconds']:.0f} s): train loss {rec['train_loss']:.3f}; "
                       + ", ".join(f"{k.removeprefix('val_')} {x:.3f}" for k, x in rec.items() if k.startswith("val_")))

    # Calibration: one temperature on the held-out frames.
    student.eval()
    out = run_model(student, val.images[va_idx])
    cal = fit_temperature(out, val, va_idx)
    lesion_thr = tune_lesion_threshold(out, val, va_idx, temperature=cal["temperature"])
    s_thr = tune_structure_thresholds(out, val, va_idx, temperature=cal["temperature"])
    metrics = evaluate_outputs(out, val, va_idx, temperature=cal["temperature"], lesion_threshold=lesion_thr, structure_threshold=s_thr)
    metrics.update({k: v for k, v in cal.items() if k != "temperature"})
    metrics["n_train_frames"] = int(len(tr_idx))
    _log(progress, f"interpreter: temperature {cal['temperature']:.3f} (NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}, "
                   f"ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}); val findings macro-F1 "
                   f"{metrics['findings_macro_f1']:.3f}, size MAE {metrics['size_mae_mm']:.2f} mm")
    save_atomic(state(max(start, epochs), temperature=cal["temperature"], metrics=_jsonable(metrics), complete=True,
                      decode={"lesion_threshold": lesion_thr, "structure_threshold": STRUCTURE_THRESHOLD,
                              "structure_thresholds": s_thr}), path)
    return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else round(float(obj), 6)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    return obj


def _load_ckpt(ckpt: Path) -> dict:
    ck = torch.load(Path(ckpt), map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or ck.get("kind") != CKPT_KIND:
        raise ValueError(f"{ckpt} is not an interpreter checkpoint; point at the interpreter.pt train_interpreter wrote")
    return ck


def load_student(ckpt: Path) -> nn.Module:
    """The student in eval mode; .temperature holds the fitted temperature (1.0
    if calibration has not run yet)."""
    ck = _load_ckpt(ckpt)
    model = StudentNet(**ck["arch"])
    model.load_state_dict(ck["student"])
    model.temperature = float(ck.get("temperature") or 1.0)
    model.lesion_threshold = float((ck.get("decode") or {}).get("lesion_threshold", LESION_THRESHOLD))
    model.structure_thresholds = (ck.get("decode") or {}).get("structure_thresholds") or STRUCTURE_THRESHOLD
    model.eval()
    return model


def interpreter_manifest_entry(ckpt: Path) -> dict:
    """The interpreter's outputs/labels/decode/metrics for engines/manifest.json."""
    ck = _load_ckpt(ckpt)
    if not ck.get("complete"):
        raise ValueError(f"{ckpt} is not finished (epoch {ck.get('epoch')} of {ck.get('epochs')}, no temperature yet); "
                         "run train_interpreter to the end first")
    dec = ck.get("decode") or {}
    return {
        "outputs": {**OUTPUT_ROLES, **({"mask": MASK_OUTPUT} if ck["arch"].get("mask_head") else {})},
        "labels": {"structures": list(STRUCTURES), "echogenicity": list(ECHOGENICITY), "margins": list(MARGINS),
                   "locations": list(LOCATIONS)},
        "decode": {"temperature": float(ck["temperature"]), "quality_threshold": QUALITY_THRESHOLD,
                   "lesion_threshold": float(dec.get("lesion_threshold", LESION_THRESHOLD)),
                   "structure_threshold": float(dec.get("structure_threshold", STRUCTURE_THRESHOLD)),
                   # each structure's own (train_all refits them on its larger validation set)
                   "structure_thresholds": dict(zip(STRUCTURES, structure_thresholds(dec, STRUCTURES)))},
        "metrics": _jsonable(ck.get("metrics") or {}),
    }
