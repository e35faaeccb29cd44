"""Self-imitation for the guidance head: practise with the hints, keep what reached the view.

The guidance head learns the simulator expert's moves (DAgger), and the
expert knows the probe's pose. From one frame the way to the target view is
often ambiguous (docs/TRAINING.md), so the expert's move there is one the
head can only guess at, and the closed loop loses its way on far starts.
This stage teaches the head moves that work from what it sees:

1. practice: the simulated operator follows the hints exactly as the closed
   loop's operator does (evaluate.HintFollower: hold only when due, no
   revisits, the sweep on a blank image) from random starts on the training
   patients, `samples` times per start: once with the head's best move and
   `samples - 1` times with the move drawn from the head's probabilities
   sharpened by 1 / `tau`;
2. the frames of the episodes that reached the target view are labelled
   with the move the operator made there, and the frame where the view was
   reached with hold; every frame visited keeps the expert's soft target as
   well (make_models.soft_target, as in DAgger);
3. the head is fine-tuned on both, from the exported head's own weights
   (guidance_from_onnx: BatchNorm folded, so it stays frozen), and exported
   into the engines folder in its place.

Practice uses the ONNX heads through the run-time path (HeadSet), as the
evaluation does; only the fine-tuning needs torch.

Off for the committed head (make_models.Plan.self_imitation None): without
the hold label in step 2 the closed loop rose 3-4 points only because the
head unlearnt hold, and with it the closed loop did not move beyond what
the hints' hold rule moves (docs/TRAINING.md, "Self-imitation").
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_assist.training.common import (
    EXAM_PRESETS, expert_action, log, optimiser_step, progress, seed_everything, set_torch_threads, torch_load, torch_save,
)
from edge_assist.vocab import ACTIONS, QUALITY_THRESHOLD

STAGE = "self-imitation"
LABELS_VERSION = 2  # 2: hold on the frame where the view was reached (1, 2026-12-03 morning: no label there)
PRACTICE_SEED = 0x5E1F  # the practice starts' random stream (with the round, patient, preset and episode)


@dataclass
class SelfImitation:
    """One self-imitation stage (make_models.Plan.self_imitation)."""

    rounds: int = 1  # practise + fine-tune, each round from the head the last one exported
    samples: int = 6  # episodes per start: the head's best move once, then drawn moves
    tau: float = 0.5  # drawn moves: probabilities ** (1 / tau), renormalised
    epochs: int = 2
    lr: float = 3e-4  # Adam, cosine decay to zero
    imitation_weight: float = 1.0  # cross-entropy on the moves made in episodes that reached the view ...
    expert_weight: float = 0.5  # ... plus this times that on the expert's soft targets, every frame visited
    max_moves: int = 40


# -- the exported head back in torch ----------------------------------------------------------------


def guidance_from_onnx(path: Path):
    """The single-frame guidance network with the weights of an exported
    head (export.py folds each BatchNorm into its convolution): every
    BatchNorm becomes the identity plus the folded bias, so the network in
    eval mode computes what the ONNX model does. The pose output (training
    only, never exported) keeps its initial weights and is not trained here."""
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    from edge_assist.training.models import GuidanceNet, NetConfig

    graph = onnx.load(str(path)).graph
    if len(graph.input) != 1:
        raise ValueError(f"{path}: self-imitation refines a single-frame guidance head; this one has {len(graph.input)} inputs (memory)")
    weights = {t.name.split(".", 2)[-1] if t.name.startswith("m.model.") else t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in graph.initializer}
    model = GuidanceNet(NetConfig())
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            state[f"{name}.weight"] = _need(weights, f"{name}.weight", state[f"{name}.weight"].shape, path)
        elif isinstance(module, nn.BatchNorm2d):
            conv = name.rsplit(".", 1)[0] + ".0"  # conv_bn_relu: (conv, bn, relu)
            state[f"{name}.weight"] = torch.ones_like(module.weight)
            state[f"{name}.bias"] = _need(weights, f"{conv}.bias", module.bias.shape, path)
            state[f"{name}.running_mean"] = torch.zeros_like(module.running_mean)
            state[f"{name}.running_var"] = torch.full_like(module.running_var, 1.0 - module.eps)
        elif isinstance(module, nn.Linear) and not name.endswith("out.pose"):
            for part in ("weight", "bias"):
                state[f"{name}.{part}"] = _need(weights, f"{name}.{part}", state[f"{name}.{part}"].shape, path)
    model.load_state_dict(state)
    return model.eval()


def _need(weights: dict, name: str, shape, path: Path):
    w = weights.get(name)
    if w is None or tuple(w.shape) != tuple(shape):
        raise ValueError(f"{path}: no weight {name} of shape {tuple(shape)}; it is not a guidance head of this architecture")
    return w


# -- practice ----------------------------------------------------------------------------------------


def _sharpened_draw(rng: np.random.Generator, tau: float):
    """pick() for HintFollower.move: a move drawn from the moves on offer."""
    from edge_assist.frames import GuidanceResult

    def pick(offered):
        names = [a for a, p in offered.probs.items() if p > 0.0]
        p = np.array([offered.probs[a] for a in names], np.float64) ** (1.0 / tau)
        a = names[int(rng.choice(len(names), p=p / p.sum()))]
        return GuidanceResult(a, offered.probs[a], offered.probs)

    return pick


def _practice_job(job) -> list[dict]:
    """Practice episodes on a chunk of patients (one worker process)."""
    from edge_assist.frames import Frame
    from edge_assist.heads import HeadSet
    from edge_assist.manifest import load_manifest
    from edge_assist.sim.patient import VirtualPatient, tolerances
    from edge_assist.training.evaluate import HintFollower
    from edge_assist.training.make_models import soft_target

    engines, seeds, presets, cfg, rng_seed, round_, labels = job
    images, made, soft, episode, success = [], [], [], [], []
    with HeadSet(load_manifest(engines), "ort", threads=1) as heads:
        pre = heads.preprocessor()
        for seed in seeds:
            for p_index, preset in enumerate(presets):
                vp = VirtualPatient(preset, seed, live_speckle=True)
                tol = tolerances(preset)
                for e in range(cfg.samples):
                    rng = np.random.default_rng([rng_seed, round_, seed, p_index, e])
                    vp.clear_degradations()
                    vp.randomize_pose(rng)
                    pre.reset()
                    follower, pick = HintFollower(), (_sharpened_draw(rng, cfg.tau) if e > 0 else None)
                    first, reached = len(images), False
                    for moves in range(cfg.max_moves + 1):
                        image, truth = vp.render()
                        prep = pre(Frame(image, moves, 0, region=vp.region))
                        expert = ACTIONS.index(expert_action(vp, truth, **labels))
                        images.append(prep.image)
                        soft.append(soft_target(expert, truth["pose_error"], tol))
                        if truth["at_target"] and truth["quality"] >= QUALITY_THRESHOLD:
                            reached = True
                            made.append(-1)
                            break
                        if moves == cfg.max_moves:
                            made.append(-1)
                            break
                        action = follower.move(heads.guidance(prep.tensor), heads.quality(prep.tensor), moves, pick)
                        made.append(ACTIONS.index(action))
                        vp.move(action)
                    n = len(images) - first
                    episode += [f"{round_}:{preset}:{seed}:{e}"] * n
                    success += [reached] * n
    return [{"images": np.stack(images).astype(np.uint8), "made": np.array(made, np.int64), "soft": np.stack(soft),
             "success": np.array(success, bool), "episode": np.array(episode)}]


@dataclass
class Practice:
    images: np.ndarray  # (N, H, W) uint8, the preprocessed frames
    made: np.ndarray  # the move the operator made after the frame (-1: the episode ended there)
    soft: np.ndarray  # (N, 15) the expert's soft target
    success: np.ndarray  # the frame's episode reached the target view
    episode: np.ndarray
    seconds: float = 0.0  # what practising took (kept with the cache)

    @property
    def imitated(self) -> np.ndarray:
        """Frames whose episode reached the target view: each is labelled (target)."""
        return self.success

    @property
    def target(self) -> np.ndarray:
        """The move to imitate: the one made, and hold on the frame where the view was reached (the
        episode ends there; without it the head would learn never to say hold, since no practice move is one)."""
        return np.where(self.made >= 0, self.made, ACTIONS.index("hold"))

    def episodes(self, greedy: bool | None = None) -> tuple[int, int]:
        """(episodes, reached) over all of them, or the head's-best-move ones (greedy) or the drawn ones."""
        keys, first = np.unique(self.episode, return_index=True)
        keep = np.ones(len(keys), bool) if greedy is None else np.array([k.endswith(":0") == greedy for k in keys])
        return int(keep.sum()), int(self.success[first][keep].sum())


def practice(engines: Path, seeds, cfg: SelfImitation, *, round_: int, rng_seed: int = PRACTICE_SEED, presets=EXAM_PRESETS,
             workers: int = 2, cache: Path | None = None, centre_depth: bool = True, centre_view: float | None = 0.5) -> Practice:
    """Practice episodes of the hints' operator with the heads in `engines`
    (cached in `cache` under the head's hash and the settings). The expert's
    labels as the DAgger rounds' (Plan.centre_depth, Plan.centre_view)."""
    from edge_assist.training.make_models import _chunks, _run_jobs

    labels = {"centre_depth": centre_depth, "centre_view": centre_view}
    seeds = list(seeds)
    digest = hashlib.sha256((Path(engines) / "guidance.onnx").read_bytes() + (Path(engines) / "quality.onnx").read_bytes()).hexdigest()[:10]
    key = {"heads": digest, "seeds": [seeds[0], seeds[-1], len(seeds)], "presets": list(presets), "round": round_, "rng": rng_seed,
           "samples": cfg.samples, "tau": cfg.tau, "max_moves": cfg.max_moves, "labels": labels}
    key = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(cache) / f"practice{round_}-{key}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return Practice(**{k: (float(z[k]) if k == "seconds" else z[k]) for k in z.files})
    t0 = time.perf_counter()
    jobs = [(str(engines), chunk, tuple(presets), cfg, rng_seed, round_, labels) for chunk in _chunks(seeds, 4)]
    parts = _run_jobs(_practice_job, jobs, workers, f"practise round {round_}")  # one dict of arrays per chunk, in order
    data = Practice(**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, seconds=round(time.perf_counter() - t0, 1))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **{k: getattr(data, k) for k in ("images", "made", "soft", "success", "episode", "seconds")})
        tmp.replace(path)
    return data


# -- fine-tuning -------------------------------------------------------------------------------------


def _freeze_batchnorm(model) -> None:
    """Folded BatchNorm is an identity plus bias: its statistics must not move."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            m.weight.requires_grad_(False)


def practice_loss(logits, soft, target, imitated, cfg: SelfImitation):
    """expert_weight x cross-entropy on the expert's soft targets (every
    frame) + imitation_weight x cross-entropy on Practice.target (frames of
    episodes that reached the view; the mean over those in the batch)."""
    import torch

    logp = torch.log_softmax(logits, 1)
    expert = -(soft * logp).sum(1).mean()
    w = imitated.float()
    own = -(logp.gather(1, target[:, None])[:, 0] * w).sum() / w.sum().clamp(min=1.0)
    return cfg.expert_weight * expert + cfg.imitation_weight * own


def fine_tune(model, data: Practice, cfg: SelfImitation, *, seed: int, batch_size: int = 64) -> list[dict]:
    """Adam with cosine decay over `cfg.epochs` epochs; BatchNorm frozen. Returns the epochs' history."""
    import torch

    from edge_assist.training.train import to_tensor

    set_torch_threads()
    seed_everything(seed)
    model.train()
    _freeze_batchnorm(model)
    params = [p for p in model.parameters() if p.requires_grad]  # the pose output gets no gradient: Adam leaves it as it is
    steps = max(1, len(data.images) // batch_size)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * steps)
    rng = np.random.default_rng([seed, 0x5E1F])
    soft, target, imitated = torch.from_numpy(data.soft), torch.from_numpy(data.target), torch.from_numpy(data.imitated)
    history = []
    for epoch in range(cfg.epochs):
        t0, total = time.perf_counter(), 0.0
        order = rng.permutation(len(data.images))
        bar = progress(total=steps, desc=f"{STAGE} {epoch + 1}/{cfg.epochs}")
        for s in range(steps):
            idx = np.sort(order[s * batch_size:(s + 1) * batch_size])
            logits = model(to_tensor(data.images[idx]))[0]
            total += optimiser_step(practice_loss(logits, soft[idx], target[idx], imitated[idx], cfg), opt, sched)
            bar.update(1)
        bar.close()
        history.append({"epoch": epoch + 1, "train_loss": round(total / steps, 5), "seconds": round(time.perf_counter() - t0, 1)})
        log(f"{STAGE} epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['train_loss']}, {history[-1]['seconds']} s")
    return history


# -- the stage ---------------------------------------------------------------------------------------


def refine_guidance(engines: Path, work: Path, seeds, cfg: SelfImitation, *, seed: int, workers: int = 2, batch_size: int = 64,
                    centre_depth: bool = True, centre_view: float | None = 0.5) -> dict:
    """`cfg.rounds` rounds of practice and fine-tuning on the guidance head
    in `engines`, each exporting the refined head there in place of the one
    it started from (its manifest entry too; the temperature is the started
    head's). Returns what each round practised and learnt (also in
    work/self_imitation.json)."""
    from edge_assist.training.common import write_json
    from edge_assist.training.export import export_quality_or_guidance, read_manifest_json, write_manifest
    from edge_assist.training.make_models import build_machine

    engines, work = Path(engines), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    report = {"settings": {**cfg.__dict__, "patients_per_preset": len(seeds), "seed": seed}, "rounds": []}
    for r in range(1, cfg.rounds + 1):
        raw = read_manifest_json(engines)
        entry = raw["heads"]["guidance"]
        ckpt = work / f"guidance-self-imitation-r{r}.pt"
        run_key = {"stage": STAGE, "labels": LABELS_VERSION, "expert": {"centre_depth": centre_depth, "centre_view": centre_view},
                   "round": r, "from": entry.get("sha256"), "settings": cfg.__dict__, "seed": seed,
                   "seeds": [seeds[0], len(seeds)], "batch_size": batch_size}
        done = torch_load(ckpt) if ckpt.is_file() else None
        if done is not None and done.get("run_key") == run_key:
            log(f"{STAGE} round {r}: {ckpt} is up to date; exporting it")
            ck, summary = done, done["data"]["practice"]
        else:
            data = practice(engines, seeds, cfg, round_=r, workers=workers, cache=work, centre_depth=centre_depth, centre_view=centre_view)
            n_ep, n_ok = data.episodes()
            g_ep, g_ok = data.episodes(greedy=True)
            summary = {"frames": len(data.images), "imitated_frames": int(data.imitated.sum()), "episodes": n_ep, "reached": n_ok,
                       "best_move_reached": round(g_ok / max(g_ep, 1), 4), "drawn_reached": round((n_ok - g_ok) / max(n_ep - g_ep, 1), 4),
                       "practice_seconds": data.seconds}
            log(f"{STAGE} round {r}: practised {summary}")
            model = guidance_from_onnx(engines / entry["file"])
            history = fine_tune(model, data, cfg, seed=seed + r, batch_size=batch_size)
            model.eval()
            digest = hashlib.sha1(data.images[:: max(1, len(data.images) // 512)].tobytes()).hexdigest()[:16]
            ck = {"version": 1, "head": "guidance", "run_key": run_key, "built_on": build_machine(), "model_cfg": model.cfg.to_dict(),
                  "state_dict": model.state_dict(), "history": history, "decode": dict(entry.get("decode", {})),
                  "val": {}, "data": {"n_train": len(data.images), "n_val": 0, "fingerprint": digest, "practice": summary,
                                      "self_imitation": f"round {r} from {entry.get('version')}"},
                  "complete": True}
            torch_save(ck, ckpt)
        new_entry = export_quality_or_guidance(ckpt, engines)
        new_entry["training"] = {**entry.get("training", {}), "self_imitation": {
            "round": r, "from": entry.get("version"), **summary, "epochs": len(ck["history"]), "settings": report["settings"],
            "built_on": ck.get("built_on")}}
        raw["heads"]["guidance"] = {**entry, **new_entry}  # its metrics are empty until `edge-assist eval --write`
        write_manifest(engines, raw)
        report["rounds"].append({"round": r, "checkpoint": str(ckpt), **summary, "history": ck["history"]})
        write_json(work / "self_imitation.json", report)
    return report

