"""The move check: did the move just made bring the view closer?

From one frame the guidance head often cannot tell which way an
out-of-plane error lies (the sign of an elevational slide, a rotation or a
fan: docs/TRAINING.md), and heads that imitate the simulator's expert from
two frames learnt to copy their last move instead. A sonographer settles it
by watching what the last move did to the image. This head learns exactly
that, with the truth as its label rather than an expert's move: from the
frame before a move and the frame after it, for each of the 15 moves, the
logit that the move brought the pose component it changes closer to the
target view (|error| smaller). The run time reads the logit of the move
that was made (edge_assist.move_check).

Data: episodes on training patients driven by the guidance head, with a
random move instead of the head's in 40 % of the steps (and wherever it
says hold), so that both better and worse moves of every kind are seen
from the states an operator reaches. Every step is one pair.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_assist.training.common import EXAM_PRESETS, TrainingError, log, progress, seed_everything, set_torch_threads
from edge_assist.training.data import INPUT_SIZE, MEAN, STD
from edge_assist.vocab import ACTIONS

INPUT_NAME = "frames"  # [1, 2, H, W]: the frame before the move, the frame after it
OUTPUT_NAME = "better_logits"  # [1, 15]
PAIRS_VERSION = 1  # part of the pairs cache key: raise it when what a pair holds changes


@dataclass(frozen=True)
class MoveCheckPlan:
    train_seeds: int = 400  # training patients per preset (one episode each)
    val_seeds: int = 40
    random_share: float = 0.4  # steps that make a random move instead of the guidance head's
    max_moves: int = 40
    epochs: int = 6
    lr: float = 2e-3
    batch_size: int = 64


@dataclass
class MovePairs:
    before: np.ndarray  # [N, H, W] uint8 (the run-time preprocessed frame)
    after: np.ndarray
    move: np.ndarray  # [N] index into ACTIONS
    better: np.ndarray  # [N] bool: |error| of the component the move changes went down
    preset: np.ndarray  # [N] index into EXAM_PRESETS

    def __len__(self) -> int:
        return len(self.move)


PAIR_FIELDS = ("before", "after", "move", "better", "preset")


def _pairs_job(job) -> list[dict]:
    from edge_assist.frames import Frame
    from edge_assist.preprocess import Preprocessor
    from edge_assist.sim.patient import ACTION_EFFECT, ERROR_NAMES, VirtualPatient
    from edge_assist.training.make_models import OnnxPolicy

    seeds, rng_seed, policy_path, random_share, max_moves = job
    rng = np.random.default_rng(rng_seed)
    policy = OnnxPolicy(policy_path)
    pre = Preprocessor(size=INPUT_SIZE, mean=MEAN, std=STD)
    rows = []
    for seed in seeds:
        for p, preset in enumerate(EXAM_PRESETS):
            vp = VirtualPatient(preset, seed, live_speckle=True)
            vp.clear_degradations()
            vp.randomize_pose(rng, spread=float(rng.choice([0.5, 1.0, 1.0, 1.25])))
            pre.reset()
            image, _ = vp.render()
            prep = pre(Frame(image, 0, 0, region=vp.region))
            for step in range(max_moves):
                move = policy(prep.tensor)
                if move == "hold" or rng.random() < random_share:
                    move = str(rng.choice(ACTIONS[:-1]))
                comp, _ = ACTION_EFFECT[move]
                name = ERROR_NAMES[comp]
                e0 = abs(float(vp.pose_error()[name]))
                vp.move(move)
                e1 = abs(float(vp.pose_error()[name]))
                image, _ = vp.render()
                nxt = pre(Frame(image, step + 1, 0, region=vp.region))
                rows.append({"before": prep.image, "after": nxt.image, "move": ACTIONS.index(move), "better": e1 < e0, "preset": p})
                prep = nxt
    return rows


def _save_pairs(pairs: MovePairs, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **{k: getattr(pairs, k) for k in PAIR_FIELDS})
    tmp.replace(path)


def _load_pairs(path: Path) -> MovePairs:
    with np.load(path) as z:
        return MovePairs(**{k: z[k] for k in PAIR_FIELDS})


def move_pairs(seeds, rng_seed: int, data_dir: Path, policy_path: Path, plan: MoveCheckPlan, *, workers: int = 2,
               name: str = "move-pairs") -> MovePairs:
    """The pairs of `seeds` (cached under data_dir by what makes them)."""
    from edge_assist.training.make_models import _cached, _chunks, _run_jobs

    seeds = list(seeds)
    key = {"kind": name, "seeds": [seeds[0], seeds[-1], len(seeds)], "rng": rng_seed,
           "policy": hashlib.sha1(Path(policy_path).read_bytes()).hexdigest()[:10], "random_share": plan.random_share,
           "max_moves": plan.max_moves, "pairs_version": PAIRS_VERSION}

    def build() -> MovePairs:
        jobs = [(c, rng_seed * 100_003 + c[0], str(policy_path), plan.random_share, plan.max_moves) for c in _chunks(seeds, 5)]
        rows = _run_jobs(_pairs_job, jobs, workers, f"render {name}")  # ordered: the same data whatever the worker count
        return MovePairs(**{k: np.array([r[k] for r in rows]) for k in PAIR_FIELDS})

    return _cached(name, key, data_dir, build, save=_save_pairs, load=_load_pairs, unit="pairs")


def build_net():
    """The guidance head's plain CNN on three channels (before, after, their
    difference) with one logit per move."""
    import torch
    from torch import nn

    from edge_assist.training.models import NetConfig, PlainCNN

    class MoveCheckNet(nn.Module):
        head = "move_check"

        def __init__(self):
            super().__init__()
            self.net = PlainCNN(NetConfig(in_ch=3, outputs={"better": len(ACTIONS)}))

        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            before, after = frames[:, :1], frames[:, 1:2]
            return self.net(torch.cat([before, after, after - before], 1))["better"]

    return MoveCheckNet()


def _tensor(pairs: MovePairs, idx):
    import torch

    x = np.stack([pairs.before[idx], pairs.after[idx]], 1).astype(np.float32)
    return torch.from_numpy((x / 255.0 - MEAN) / STD)


def judge(model, pairs: MovePairs, batch: int = 256) -> dict:
    """Accuracy of the made move's logit on `pairs`, overall, on the pose
    moves the run time checks, and where it is sure (p < 0.1 or > 0.9)."""
    import torch

    from edge_assist.move_check import CHECKED_MOVES

    model.eval()
    p = []
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            idx = np.arange(i, min(i + batch, len(pairs)))
            logits = model(_tensor(pairs, idx))
            p.append(torch.sigmoid(logits.gather(1, torch.from_numpy(pairs.move[idx])[:, None])[:, 0]).numpy())
    p = np.concatenate(p) if p else np.zeros(0)
    right = (p > 0.5) == pairs.better
    pose = np.isin(pairs.move, [ACTIONS.index(m) for m in CHECKED_MOVES])
    worse_said = pose & (p < 0.1)
    return {
        "accuracy": round(float(right.mean()), 4) if len(p) else None,
        "accuracy_pose_moves": round(float(right[pose].mean()), 4) if pose.any() else None,
        # what the run-time rule acts on: a pose move called worse with p < 0.1, and how often that is right
        "said_worse_share": round(float(worse_said[pose].mean()), 4) if pose.any() else None,
        "said_worse_right": round(float((~pairs.better[worse_said]).mean()), 4) if worse_said.any() else None,
        "pairs": int(len(p)),
    }


def train_move_check(train: MovePairs, val: MovePairs, out_dir: Path, plan: MoveCheckPlan, *, seed: int, resume: bool = True) -> Path:
    """Train (or reuse) the move check; returns its checkpoint."""
    import torch
    from torch import nn

    out_dir = Path(out_dir)
    ckpt = out_dir / "move_check.pt"
    settings = {**asdict(plan), "seed": seed, "train_pairs": len(train), "val_pairs": len(val),
                "data": hashlib.sha1(train.move.tobytes() + train.better.tobytes() + train.before[:: max(1, len(train) // 64)].tobytes()).hexdigest()[:12]}
    if resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("settings") == settings:
            log(f"move check: {ckpt} is up to date")
            return ckpt
    if not len(train) or not len(val):
        raise TrainingError("move check: no pairs to train or validate on")
    threads = set_torch_threads()
    seed_everything(seed)
    model = build_net()
    opt = torch.optim.AdamW(model.parameters(), plan.lr, weight_decay=1e-4)
    steps_per_epoch = len(train) // plan.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, plan.lr, total_steps=max(1, plan.epochs * steps_per_epoch))
    moves = torch.from_numpy(train.move)
    better = torch.from_numpy(train.better.astype(np.float32))
    history = []
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(plan.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(train), generator=gen).numpy()
        total = 0.0
        for i in progress(range(steps_per_epoch), desc=f"move check {epoch + 1}/{plan.epochs}"):
            idx = perm[i * plan.batch_size : (i + 1) * plan.batch_size]
            logits = model(_tensor(train, idx)).gather(1, moves[idx][:, None])[:, 0]
            loss = nn.functional.binary_cross_entropy_with_logits(logits, better[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        row = {"epoch": epoch + 1, "loss": round(total / max(1, steps_per_epoch), 4), "seconds": round(time.perf_counter() - t0, 1),
               "val": judge(model, val)}
        history.append(row)
        log(f"move check: epoch {epoch + 1}: {row}")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "settings": settings, "history": history, "threads": threads}, ckpt)
    return ckpt


def load_move_check(ckpt: Path):
    import torch

    saved = torch.load(Path(ckpt), map_location="cpu", weights_only=False)
    model = build_net()
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


def export_move_check(ckpt: Path, engines: Path, val: MovePairs) -> dict:
    """ONNX (BatchNorm folded, parity checked on validation pairs) and its
    manifest entry, added to engines/manifest.json."""
    from edge_assist.move_check import CHECK_THRESHOLD, CHECKED_MOVES, UNDO_BAR_MOVES, UNDO_MOVES
    from edge_assist.training.export import (PARITY_TOL, export_onnx, head_entry, parity, read_manifest_json,
                                             write_manifest)
    from edge_assist.training.models import fold_batchnorm

    model, saved = load_move_check(ckpt)
    folded = fold_batchnorm(copy.deepcopy(model)).eval()
    path = export_onnx(folded, Path(engines) / "move_check.onnx", in_ch=2, output_names=(OUTPUT_NAME,), head="move_check",
                       input_name=INPUT_NAME)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(val), size=min(8, len(val)), replace=False)
    diff = max(parity(model, path, _tensor(val, pick).numpy()), parity(folded, path, _tensor(val, pick).numpy()))
    if diff > PARITY_TOL:
        raise TrainingError(f"move check: ONNX Runtime differs from torch by {diff:.2e} (> {PARITY_TOL}); not exported")
    last = saved["history"][-1] if saved.get("history") else {}
    entry = head_entry("move_check", path, in_ch=2, input_name=INPUT_NAME, decode={}, metrics={"val": last.get("val", {})},
                       training={"epochs": len(saved.get("history", [])), "seed": saved["settings"].get("seed"),
                                 "settings": saved["settings"]})
    entry["parity_max_abs_diff"] = float(f"{diff:.3g}")
    # what the hints do with it (edge_assist.move_check's constants, recorded with the head they were set for)
    entry["rule"] = {"threshold": CHECK_THRESHOLD, "checked_moves": list(CHECKED_MOVES), "undo_moves": UNDO_MOVES,
                     "bar_moves": UNDO_BAR_MOVES}
    raw = read_manifest_json(engines)
    raw["heads"]["move_check"] = entry
    write_manifest(engines, raw)
    log(f"export: {path} ({path.stat().st_size / 1e6:.2f} MB, parity {diff:.1e}); validation {last.get('val')}")
    return entry


def make_move_check(engines: Path, work: Path, data_dir: Path, *, seed: int, plan: MoveCheckPlan = MoveCheckPlan(),
                    workers: int = 2, resume: bool = True) -> dict:
    """Pairs from the engines folder's guidance head, training, export."""
    from edge_assist.training.common import TRAIN_SEEDS, VAL_SEEDS

    policy = Path(engines) / "guidance.onnx"
    if not policy.is_file():
        raise TrainingError(f"move check: {policy} is missing; export the guidance head first")
    train = move_pairs(list(TRAIN_SEEDS)[: plan.train_seeds], seed + 7, data_dir, policy, plan, workers=workers,
                       name="move-pairs-train")
    val = move_pairs(list(VAL_SEEDS)[: plan.val_seeds], seed + 8, data_dir, policy, plan, workers=workers, name="move-pairs-val")
    ckpt = train_move_check(train, val, Path(work) / "move_check", plan, seed=seed, resume=resume)
    return export_move_check(ckpt, engines, val)
