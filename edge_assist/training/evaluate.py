"""`edge-assist eval`: the exported heads on held-out virtual patients, run
through the same path users get (edge_assist.preprocess.Preprocessor +
edge_assist.heads.HeadSet on ONNX Runtime or another backend), never torch.

    edge-assist eval [--quick] [--backend ort] [--json] [--engines DIR]
    edge-assist eval --closed-loop validation:500:640 [--engines DIR]   # the closed loop alone

- quality: Spearman of the score with the simulator's quality, AUROC for
  diagnostic (truth quality >= 0.5) vs not, macro-F1 of the reason flags;
- guidance: top-1 agreement with the simulator's optimal action, and the
  closed loop: a simulated operator starts at a random pose on a held-out
  patient and follows the raw hint (argmax, no smoothing) each frame;
  success = the target view reached (at_target) with truth quality at or
  above the threshold within 40 moves;
- interpreter: findings macro-F1 and lesion-size MAE on diagnostic frames
  (the interpreter's own metric definitions), and the fraction of frames
  below the quality threshold on which the run-time path abstains;
- int8: the same figures with the INT8 models where the manifest has them;
- real_frames: the quality score on pydicom's three ultrasound examples;
- latency_ms: per-head ORT time on this machine (batch 1, 1 thread).

Does not import torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_assist.best_view import BackToBest
from edge_assist.frames import Frame, GuidanceResult, QualityResult
from edge_assist.guidance_memory import GuidanceFeed, memory_inputs
from edge_assist.heads import HeadSet, lesion_decided, structure_thresholds
from edge_assist.hints import GOOD_QUALITY, BlindSweep, HintSmoother, MoveTrail, SmoothingConfig, hold_only_when_due, no_revisit
from edge_assist.lesion_measure import lesion_size_frac
from edge_assist.manifest import load_manifest
from edge_assist.move_check import MoveCheckFeed, UndoWorseMove, probe_moved
from edge_assist.training.common import (
    EVAL_SEEDS, EXAM_PRESETS, TRAIN_SEEDS, VAL_SEEDS, auroc, expert_action, f1_binary, macro_f1_multiclass, progress, sim_region,
    spearman, wilson_interval,
)
from edge_assist.vocab import ACTIONS, ECHOGENICITY, LOCATIONS, MARGINS, QUALITY_REASONS, QUALITY_THRESHOLD, STRUCTURES

MAX_MOVES = 40


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, np.float64), -60, 60)))
REAL_EXAMPLES = ("examples_ybr_color.dcm", "examples_rgb_color.dcm", "examples_palette.dcm")


@dataclass(frozen=True)
class EvalSize:
    frame_seeds: int  # patients per preset for the frame metrics
    frames_per_seed: int
    loop_seeds: int  # patients per preset for the closed loop (one episode each)
    latency_iters: int
    real_frames: int  # frames read from each DICOM example
    hold_seeds: int  # patients per preset for hold_decisions


# 210 closed-loop patients per preset (630 episodes): on 210 episodes the same
# guidance head read 76.7 % and, on 420 other held-out starts, 84.5 %; with
# 630 the 95 % interval is about ±3 points instead of ±5 (docs/TRAINING.md).
FULL = EvalSize(frame_seeds=60, frames_per_seed=10, loop_seeds=210, latency_iters=300, real_frames=8, hold_seeds=70)
QUICK = EvalSize(frame_seeds=2, frames_per_seed=4, loop_seeds=2, latency_iters=60, real_frames=3, hold_seeds=2)
RNG_SEED = 777


# -- data ----------------------------------------------------------------------------------------


def held_out_frames(size: EvalSize, seeds=EVAL_SEEDS, presets=EXAM_PRESETS, rng_seed: int = RNG_SEED) -> list[tuple[np.ndarray, dict]]:
    """Artefact-scenario frames (sim.dataset.generate) of held-out patients."""
    from edge_assist.sim.dataset import generate

    s = list(seeds)[: size.frame_seeds]
    return list(generate(list(presets), s, size.frames_per_seed, rng_seed))


def _stack(tensor: np.ndarray, frames: int) -> np.ndarray:
    return tensor if frames == 1 else np.concatenate([tensor] * frames, axis=1)


# -- frame metrics ---------------------------------------------------------------------------------


def frame_outputs(heads: HeadSet, frames: list[tuple[np.ndarray, dict]], desc: str = "frames") -> dict:
    """Run every head on every frame (the run-time preprocessing and decode)."""
    pre = heads.preprocessor()
    g_frames = heads.frames_for("guidance")
    interp = heads.heads["interpreter"]
    gate = float(interp.spec.decode.get("quality_threshold", QUALITY_THRESHOLD))
    rows = []
    for image, truth in progress(frames, desc=desc):
        pre.reset()
        prep = pre(Frame(image, 0, 0, region=sim_region(truth, image.shape)))
        q = heads.quality(prep.tensor)
        g = heads.guidance(_stack(prep.tensor, g_frames))
        # raw outputs once; the run time abstains exactly when the quality score is below its gate
        out = interp.run(prep.tensor)
        raw = {k: (np.asarray(v, np.float32) if k == "mask" else np.asarray(v, np.float64).reshape(-1)) for k, v in out.items()}
        # The lesion head's second look, where the run time would take it (a lesion reported)
        look = heads.lesion_look(out.get("mask"), image, prep.region) if lesion_decided(interp.spec, out) else None
        rows.append({"q": q, "g": g, "raw": raw, "look": look, "abstained": q.score < gate, "mm": prep.mm_per_px, "truth": truth})
    return {"rows": rows, "gate": gate, "input_h": heads.input_size[0]}


def quality_metrics(out: dict) -> dict:
    rows = out["rows"]
    score = np.array([r["q"].score for r in rows])
    tq = np.array([r["truth"]["quality"] for r in rows])
    flags_t = np.array([[n in r["truth"]["reasons"] for n in QUALITY_REASONS] for r in rows])
    flags_p = np.array([[n in r["q"].reasons for n in QUALITY_REASONS] for r in rows])
    per = {n: f1_binary(flags_t[:, k], flags_p[:, k]) for k, n in enumerate(QUALITY_REASONS)}
    vals = [v for v in per.values() if not np.isnan(v)]
    return {
        "spearman": round(spearman(score, tq), 4),
        "auroc": round(auroc(tq >= QUALITY_THRESHOLD, score), 4),
        "reasons_macro_f1": round(float(np.mean(vals)), 4) if vals else float("nan"),
        "reasons_f1": {k: (None if np.isnan(v) else round(float(v), 3)) for k, v in per.items()},
        "n_frames": len(rows),
        "diagnostic_fraction": round(float((tq >= QUALITY_THRESHOLD).mean()), 3),
    }


def guidance_top1(out: dict) -> dict:
    rows = out["rows"]
    pred = np.array([r["g"].action for r in rows])
    truth = np.array([r["truth"]["action"] for r in rows])
    conf = np.array([r["g"].confidence for r in rows])
    ok = pred == truth
    return {"top1": round(float(ok.mean()), 4), "mean_confidence": round(float(conf.mean()), 4),
            "top1_by_action": {a: round(float(ok[truth == a].mean()), 3) for a in ACTIONS if (truth == a).any()}}


def _attribute_probs(row: dict, role: str) -> np.ndarray:
    """Echogenicity / margins / location scores of a frame as the run time
    decides them: the lesion head's where it looked, else the interpreter's."""
    look = row.get("look")
    if look is not None and role in ("echogenicity", "margins"):
        return look.echo_probs if role == "echogenicity" else look.margin_probs
    if look is not None and role == "location" and look.location in LOCATIONS:
        return np.eye(len(LOCATIONS))[LOCATIONS.index(look.location)]
    return row["raw"][role]


# A macro-F1 term resting on fewer positive frames than this is a coin toss
# (one positive frame: its F1 is 0 or 1, worth 0.09 of an 11-term mean).
MIN_TERM_SUPPORT = 20
BOOTSTRAP_DRAWS = 1000


def _term_f1(t: np.ndarray, p: np.ndarray, n_classes: int) -> float:
    """F1 of a binary term (n_classes 0: truth and prediction 0/1), or the
    macro-F1 over the classes of a multiclass one."""
    if n_classes == 0:
        return f1_binary(t == 1, p == 1)
    return macro_f1_multiclass(t, p, n_classes) if len(t) else float("nan")


def _bootstrap_macro_f1(term_data: dict, patient: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = RNG_SEED) -> list[float]:
    """95 % percentile interval of the findings macro-F1 over held-out
    patients drawn with replacement (a patient's frames go together: they
    are not independent)."""
    ids, inverse = np.unique(patient, return_inverse=True)
    if len(ids) < 2:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        pick = rng.integers(0, len(ids), len(ids))
        weight = np.bincount(pick, minlength=len(ids))[inverse]  # each frame counts as often as its patient was drawn
        f1s = []
        for t, p, n, idx in term_data.values():
            w = weight[idx]
            v = _term_f1(np.repeat(t, w), np.repeat(p, w), n)
            if not np.isnan(v):
                f1s.append(v)
        if f1s:
            values.append(np.mean(f1s))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def interpreter_metrics(out: dict) -> dict:
    """Findings macro-F1 / size MAE as training/interpreter.py defines them,
    on frames with truth quality >= threshold (where the interpreter is
    meant to speak), from the ONNX outputs and the manifest's decode."""
    rows = out["rows"]
    tq = np.array([r["truth"]["quality"] for r in rows])
    low = tq < QUALITY_THRESHOLD
    abstain = np.array([r["abstained"] for r in rows])
    res = {"abstain_correct": round(float(abstain[low].mean()), 4) if low.any() else float("nan"),
           "abstain_on_diagnostic": round(float(abstain[~low].mean()), 4) if (~low).any() else float("nan")}
    good = [r for r in rows if r["truth"]["quality"] >= QUALITY_THRESHOLD]
    if not good:
        return res
    dec = out["decode"]
    temp = float(dec.get("temperature", 1.0))
    l_thr = float(dec.get("lesion_threshold", 0.5))
    # Each term of the macro-F1: its truth and prediction per frame (class
    # indices; binary terms 0/1), the number of classes (0: binary), and which frames.
    patient = np.array([f'{r["truth"].get("preset")}/{r["truth"].get("seed")}' for r in good])
    term_data: dict[str, tuple[np.ndarray, np.ndarray, int, np.ndarray]] = {}
    st_t = np.array([[s in r["truth"]["findings"]["structures"] for s in STRUCTURES] for r in good])
    s_thr = np.array(structure_thresholds(dec, STRUCTURES))
    st_p = np.array([_sigmoid(r["raw"]["structures"] / temp) >= s_thr for r in good])
    everyone = np.arange(len(good))
    for j, name in enumerate(STRUCTURES):
        term_data[f"structure/{name}"] = (st_t[:, j].astype(int), st_p[:, j].astype(int), 0, everyone)
    les_t = np.array([bool(r["truth"]["findings"]["lesion_present"]) for r in good])
    les_p = np.array([float(_sigmoid(r["raw"]["lesion"][0] / temp)) >= l_thr for r in good])
    term_data["lesion"] = (les_t.astype(int), les_p.astype(int), 0, everyone)
    lesion_rows = [r for r in good if r["truth"]["findings"]["lesion_present"]]
    for role, key, names in (("echogenicity", "echogenicity", ECHOGENICITY), ("margins", "margins", MARGINS),
                             ("location", "location", LOCATIONS)):
        idx = np.array([i for i, r in enumerate(good) if r["truth"]["findings"]["lesion_present"]
                        and r["truth"]["findings"][key] in names], dtype=int)
        yt = np.array([names.index(good[i]["truth"]["findings"][key]) for i in idx], dtype=int)
        yp = np.array([int(np.argmax(_attribute_probs(good[i], role))) for i in idx], dtype=int)
        term_data[key] = (yt, yp, len(names), idx)
    terms = {k: v for k, v in ((k, _term_f1(t, p_, n)) for k, (t, p_, n, _) in term_data.items()) if not np.isnan(v)}
    # positive frames behind each term (lesion frames for the attributes)
    support = {k: int(term_data[k][0].sum()) if term_data[k][2] == 0 else len(term_data[k][0]) for k in terms}
    supported = [k for k in terms if support[k] >= MIN_TERM_SUPPORT]
    errs, measured = [], []
    for r in lesion_rows:
        size = r["truth"]["findings"]["size_mm"]
        if size is None or r["mm"] is None:
            continue
        look = r.get("look")
        if look is not None and look.size_mm is not None:
            errs.append(abs(look.size_mm - float(size)))
            measured.append(True)
            continue
        frac, measurement = lesion_size_frac(float(r["raw"]["size"][0]), r["raw"].get("mask"))
        errs.append(abs(frac * out["input_h"] * r["mm"][0] - float(size)))
        measured.append(measurement is not None)
    res.update({
        "findings_macro_f1": round(float(np.mean(list(terms.values()))), 4) if terms else float("nan"),
        # 95 % interval over held-out patients (bootstrap): how far the figure can be trusted
        "findings_macro_f1_ci95": _bootstrap_macro_f1(term_data, patient),
        # the mean over the terms with at least MIN_TERM_SUPPORT positive frames, and the terms left out
        "findings_macro_f1_supported": round(float(np.mean([terms[k] for k in supported])), 4) if supported else float("nan"),
        "terms_below_support": {k: support[k] for k in terms if k not in supported},
        "size_mae_mm": round(float(np.mean(errs)), 3) if errs else float("nan"),
        # sizes measured on the lesion mask (the rest: the regressed size), and their error
        "size_measured_fraction": round(float(np.mean(measured)), 3) if measured else float("nan"),
        "size_mae_measured_mm": (round(float(np.mean(np.array(errs)[np.array(measured)])), 3)
                                 if any(measured) else float("nan")),
        "f1": {k: round(float(v), 3) for k, v in terms.items()},
        "f1_support": support,
        # lesion frames the lesion head read (a lesion reported and a box on the interpreter's mask)
        "second_look_fraction": (round(float(np.mean([r.get("look") is not None for r in lesion_rows])), 3)
                                 if lesion_rows else float("nan")),
        "n_frames": len(good), "n_lesion_frames": len(lesion_rows),
    })
    return res


def frame_metrics(heads: HeadSet, frames, desc: str = "frames") -> dict:
    out = frame_outputs(heads, frames, desc)
    out["decode"] = heads.heads["interpreter"].spec.decode
    return {"quality": quality_metrics(out), "guidance": guidance_top1(out), "interpreter": interpreter_metrics(out)}


# -- closed loop --------------------------------------------------------------------------------------


@dataclass
class PacedOperator:
    """An operator who makes the move the smoothed hints show, one every
    `move_every_s`, on a stream at `fps` (closed_loop(paced=...))."""

    fps: float = 30.0
    move_every_s: float = 0.5
    smoothing: SmoothingConfig | None = None
    _t_ns: int = field(default=0, init=False, repr=False)  # the stream's clock

    @property
    def frames_per_move(self) -> int:
        return max(1, round(self.fps * self.move_every_s))

    def clock_ns(self) -> int:
        self._t_ns += int(1e9 / self.fps)
        return self._t_ns


class HintFollower:
    """The closed loop's operator for one episode: each frame, the move the
    hints show (no smoothing): the head's move with 'hold' only where it is
    due (hints.hold_only_when_due), never one that leads back where the last
    moves have been (hints.no_revisit), a sweep back when the image stays
    blank (hints.BlindSweep), the way back to the best view seen
    (best_view.BackToBest), and the undo of a move the move check calls
    worse (move_check.UndoWorseMove: the caller reads the move to_check()
    names and passes the reading to move()). `pick`, when given, chooses among the moves on
    offer instead of the head's best (the self-imitation rollouts sample
    there; training/self_imitation.py)."""

    def __init__(self):
        self.trail, self.sweep = MoveTrail(), BlindSweep()
        self.back = BackToBest(GOOD_QUALITY)
        self.undo = UndoWorseMove()
        self.last: str | None = None  # the move made last

    def to_check(self, moves: int) -> str | None:
        """The last move, where the move check is to read it before this move (UndoWorseMove)."""
        return self.last if self.undo.wants_check(self.last, moves) else None

    def move(self, guidance: GuidanceResult, quality: QualityResult, moves: int, pick=None, check: float | None = None) -> str:
        """`check`: the move check's reading of the move to_check() named (None: not read)."""
        if check is not None and self.last is not None:
            self.undo.judge(self.last, check, moves)
        if self.undo.active(moves):
            action = self.undo.steer(self.last, moves)  # the undo goes back on purpose: no no_revisit, no other rule
        else:
            offered = hold_only_when_due(self.undo.bar(guidance, moves), quality)
            if pick is not None:
                offered = pick(offered)
            action = no_revisit(offered, self.trail).action
            action = self.sweep.steer(action, quality.score, moves)
            action = self.back.steer(action, quality.score, moves)
        self.trail.step(action)
        self.last = action
        return action


def within_every_tolerance(vp, truth: dict) -> bool:
    """The target view as judged until 2026-11-30: every pose component
    within its tolerance (and the truth quality at the threshold). A
    diagnostic beside the closed loop's success, which judges the view by
    what the beam cuts (sim.patient.VirtualPatient.view_offset)."""
    from edge_assist.sim.patient import ERROR_NAMES

    e = truth["pose_error"]
    return (float(e.get("contact", 0.0)) <= 0.001 and truth["quality"] >= QUALITY_THRESHOLD
            and all(abs(float(e[name])) <= vp.tol[k] for k, name in ERROR_NAMES.items()))


def closed_loop(heads: HeadSet, seeds, presets=EXAM_PRESETS, *, max_moves: int = MAX_MOVES, rng_seed: int = RNG_SEED,
                desc: str = "closed loop", paced: PacedOperator | None = None, until_hold: bool = False) -> dict:
    """A simulated operator follows the guidance from a random start, one
    move per frame: the head's move as the hints show it, with 'hold' only
    where the quality head finds the view good or flags lost contact
    (hints.hold_only_when_due), never a move that leads back where the
    last moves have been (hints.no_revisit), a sweep back when the image
    stays blank (hints.BlindSweep), the way back to the best view seen
    when the meter falls clearly below it (best_view.BackToBest), and,
    where the heads include a move check, the undo of a move it calls worse
    (move_check.UndoWorseMove: it reads the frame before the move just made
    and the frame now); no smoothing across frames.

    With `paced`, the operator instead reads the hints as the pipeline shows
    them (hints.HintSmoother: smoothing, hysteresis and the no-revisit detour
    over time) on a stream at `paced.fps`, and makes the shown move every
    `paced.move_every_s`. The probe is still between moves, so the view is
    rendered once per move and shown for that many frames.

    Success is the target view as the simulator judges it (what the beam
    cuts; settings within tolerance) with truth quality at the threshold.
    `pose_reached` (a diagnostic) is the share of episodes that end with
    every pose component within its tolerance, the test used until
    2026-11-30 (within_every_tolerance).

    With `until_hold`, the episode does not end when the view is reached:
    the operator goes on until the hints show hold, stops there, and
    success is the target view where they stopped (a hold elsewhere, or
    no hold within `max_moves`, fails). That asks what a user who stops on
    `hold` gets; the plain loop asks whether following the arrow reaches
    the view at all (settled_summary; docs/TRAINING.md, "Reached and
    settled")."""
    from edge_assist.sim.patient import ERROR_NAMES, VirtualPatient

    pre = heads.preprocessor()
    g_frames = heads.frames_for("guidance")
    memory = heads.has_memory()
    checking = heads.has_move_check()  # undo a move it calls worse (edge_assist.move_check)
    std = float(heads.manifest.preprocess.get("std", 1.0))
    episodes = [(p, s) for s in seeds for p in presets]
    results = []
    visited_ok = visited_n = 0
    for k, (preset, seed) in enumerate(progress(episodes, desc=desc)):
        vp = VirtualPatient(preset, seed, live_speckle=True)
        vp.randomize_pose(np.random.default_rng([rng_seed, seed, k]))
        pre.reset()
        stacked = GuidanceFeed(g_frames)  # heads without memory: the last frames stacked
        smoother = HintSmoother(paced.smoothing) if paced else None
        feed = MoveCheckFeed.for_smoother(heads, smoother) if smoother is not None else None
        follower = HintFollower()
        reference, last_move = None, None
        moves, success, reached, held = 0, False, False, False
        while True:
            image, truth = vp.render()
            on_view = bool(truth["at_target"] and truth["quality"] >= QUALITY_THRESHOLD)
            reached = reached or on_view
            if on_view and not until_hold:
                success = True
                break
            if moves >= max_moves:
                break
            prep = pre(Frame(image, moves, 0, region=vp.region))
            if memory:  # the frame before the last move, and that move (one move per frame here)
                guidance = heads.guidance(*memory_inputs(reference, prep.tensor, last_move))
            else:
                guidance = heads.guidance(*stacked.inputs(prep.tensor, moves))
            quality = heads.quality(prep.tensor)
            if smoother is None:
                check = (follower.to_check(moves) if checking and reference is not None
                         and probe_moved(reference, prep.tensor, std) else None)
                action = follower.move(guidance, quality, moves,
                                       check=heads.move_check(reference, prep.tensor, check) if check else None)
            else:
                for _ in range(paced.frames_per_move):
                    t_ns = paced.clock_ns()
                    reading = feed.reading(heads, smoother.undo, prep.tensor, t_ns) if feed is not None else None
                    shown = smoother.hints(moves, t_ns, quality, guidance, None, check=reading)
                    if feed is not None:
                        feed.record(t_ns, prep.tensor, shown.guidance.action)
                action = shown.guidance.action
            if until_hold and action == "hold":  # the operator stops here
                success, held = on_view, True
                break
            visited_ok += action == truth["action"]
            visited_n += 1
            vp.move(action)
            reference, last_move = prep.tensor, action
            moves += 1
        pe = vp.pose_error()
        swept = (smoother.sweeps if smoother is not None else follower.sweep.sweeps) > 0
        went_back = (smoother.returns if smoother is not None else follower.back.returns) > 0
        undone = (smoother.undos if smoother is not None else follower.undo.undos) > 0
        results.append({"preset": preset, "seed": seed, "success": success, "pose_reached": within_every_tolerance(vp, truth), "moves": moves,
                        "swept": swept, "went_back": went_back, "undone": undone, "reached": reached, "held": held,
                        "final_error": pe["total"],
                        "final": {k: abs(float(pe[name])) / vp.tol[k] for k, name in ERROR_NAMES.items()}})
    succ = np.array([r["success"] for r in results])
    moves = np.array([r["moves"] for r in results])
    final = {k: np.array([r["final"][k] for r in results]) for k in ERROR_NAMES}
    return {
        "closed_loop_success": round(float(succ.mean()), 4),
        # 95 % Wilson interval: what the number of episodes allows one to say
        "closed_loop_success_ci95": wilson_interval(int(succ.sum()), len(results)),
        "median_moves": float(np.median(moves[succ])) if succ.any() else float("nan"),
        "episodes": len(results),
        "success_by_preset": {p: round(float(succ[[r["preset"] == p for r in results]].mean()), 3) for p in presets},
        "top1_on_visited": round(visited_ok / max(visited_n, 1), 4),
        # Where the episodes end, per pose component (|error| in units of the
        # target view's tolerance): which corrections the hints fail to make.
        "final_within_tolerance": {k: round(float((v <= 1.0).mean()), 3) for k, v in final.items()},
        "final_error_median_tol": {k: round(float(np.median(v)), 2) for k, v in final.items()},
        "pose_reached": round(float(np.mean([r["pose_reached"] for r in results])), 4),
        # episodes in which the hints swept back on a blank image (hints.BlindSweep), and how many of those succeeded
        "swept": {"episodes": int(sum(r["swept"] for r in results)),
                  "succeeded": int(sum(r["swept"] and r["success"] for r in results))},
        # episodes in which the hints went back to the best view seen (best_view.BackToBest), and how many of those succeeded
        "went_back": {"episodes": int(sum(r["went_back"] for r in results)),
                      "succeeded": int(sum(r["went_back"] and r["success"] for r in results))},
        # episodes in which the hints undid a move the move check called worse (move_check.UndoWorseMove)
        "undone": {"episodes": int(sum(r["undone"] for r in results)),
                   "succeeded": int(sum(r["undone"] and r["success"] for r in results))},
        **({"until_hold": {"ended_on_hold": round(float(np.mean([r["held"] for r in results])), 4),
                           "reached_before_the_stop": round(float(np.mean([r["reached"] for r in results])), 4)}} if until_hold else {}),
    }


def settled_summary(heads: HeadSet, seeds, presets=EXAM_PRESETS, *, desc: str = "closed loop (until hold)",
                    paced: PacedOperator | None = None) -> dict:
    """The closed loop with the operator stopping where the hints first show
    hold (closed_loop(until_hold=True)): `success`, the share of episodes
    that stop on the target view, with its 95 % interval and per preset;
    `ended_on_hold`, the share that stopped on a hold at all (the rest were
    still moving after MAX_MOVES); `hold_on_view`, the share of those holds
    that were on the target view; `reached_before_the_stop`, the share that
    were on the view at some frame before they stopped or ran out of moves
    (the plain closed loop's success, but from an operator who did not
    stop there); `went_back`, the episodes in which the hints went back to
    the best view seen (best_view.BackToBest) and of those the ones that
    stopped on the target view. With `paced`, the operator reads the
    smoothed hints as the pipeline shows them (closed_loop(paced=...)):
    what a user at the bedside who stops on hold gets."""
    r = closed_loop(heads, seeds, presets, desc=desc, paced=paced, until_hold=True)
    u = r["until_hold"]
    return {"success": r["closed_loop_success"], "success_ci95": r["closed_loop_success_ci95"], "by_preset": r["success_by_preset"],
            "ended_on_hold": u["ended_on_hold"],
            "hold_on_view": round(r["closed_loop_success"] / u["ended_on_hold"], 4) if u["ended_on_hold"] else float("nan"),
            "reached_before_the_stop": u["reached_before_the_stop"], "median_moves": r["median_moves"], "went_back": r["went_back"],
            "undone": r["undone"]}


POSE_DRAWS = 20  # hold_decisions: draws of a pose of the kind asked for


def hold_decisions(heads: HeadSet, seeds, presets=EXAM_PRESETS, *, rng_seed: int = RNG_SEED) -> dict:
    """Does the hints' `hold` tell the operator that the view is reached?
    The closed loop cannot say: it ends as soon as the view is reached,
    before the hints are read there. The share of views on which the hints
    say hold (hints.hold_only_when_due; the head alone in brackets): at
    the target view exactly, at random poses within its tolerances whose
    view is the target's, and with one pose component 1.5-3 tolerances off
    (the others within 0.3 of theirs) whose view is not, where hold is
    wrong (each drawn up to POSE_DRAWS times until it is of its kind)."""
    from edge_assist.sim.patient import ERROR_KEYS, VirtualPatient

    pre = heads.preprocessor()
    spec = heads.heads["guidance"].spec
    said = {kind: [] for kind in ("at_target", "within_tolerance", "one_component_off")}
    head = {kind: [] for kind in said}
    for k, (preset, seed) in enumerate([(p, s) for s in seeds for p in presets]):
        vp = VirtualPatient(preset, seed, live_speckle=True)
        rng = np.random.default_rng([rng_seed, seed, k, 0x401D])
        for kind in said:
            vp.reset_to_target()
            for _ in range(POSE_DRAWS if kind != "at_target" else 0):  # a pose whose view is / is not the target's
                if kind == "within_tolerance":
                    vp.set_pose_error(**{c: float(rng.uniform(-0.9, 0.9) * vp.tol[c]) for c in ERROR_KEYS})
                else:
                    off = str(rng.choice(ERROR_KEYS))
                    vp.set_pose_error(**{c: float(rng.choice([-1, 1]) * rng.uniform(*((1.5, 3.0) if c == off else (0.0, 0.3))) * vp.tol[c])
                                         for c in ERROR_KEYS})
                if (vp.view_offset() <= 1.0) == (kind == "within_tolerance"):
                    break
            image, _ = vp.render()
            pre.reset()
            prep = pre(Frame(image, 0, 0, region=vp.region))
            g = heads.guidance(*GuidanceFeed.for_head(spec).inputs(prep.tensor, 0))  # one still frame, no move before it
            head[kind].append(g.action == "hold")
            said[kind].append(hold_only_when_due(g, heads.quality(prep.tensor)).action == "hold")
    return {**{kind: round(float(np.mean(v)), 3) for kind, v in said.items()},
            "head_alone": {kind: round(float(np.mean(v)), 3) for kind, v in head.items()}, "views_each": len(said["at_target"])}


def expert_closed_loop(seeds, presets=EXAM_PRESETS, max_moves: int = MAX_MOVES, rng_seed: int = RNG_SEED, refined: bool = True) -> float:
    """The same loop driven by the simulator's policy (a reference ceiling)."""
    from edge_assist.sim.patient import VirtualPatient

    ok = []
    for k, (preset, seed) in enumerate([(p, s) for s in seeds for p in presets]):
        vp = VirtualPatient(preset, seed, live_speckle=True)
        vp.randomize_pose(np.random.default_rng([rng_seed, seed, k]))
        success = False
        for moves in range(max_moves + 1):
            _, truth = vp.render()
            if truth["at_target"] and truth["quality"] >= QUALITY_THRESHOLD:
                success = True
                break
            vp.move(expert_action(vp, truth) if refined else vp.optimal_action())
        ok.append(success)
    return float(np.mean(ok))


# -- real frames and latency ------------------------------------------------------------------------------


def real_frames(heads: HeadSet, n_frames: int = 8) -> dict:
    """Median quality score over the first frames of pydicom's ultrasound examples."""
    from pydicom.data import get_testdata_file

    from edge_assist.errors import EndOfStream
    from edge_assist.sources import open_source

    out = {}
    for name in REAL_EXAMPLES:
        path = get_testdata_file(name)
        if path is None:
            continue
        pre = heads.preprocessor()
        scores = []
        with open_source(f"dicom:{path}", every_frame=True) as src:
            while len(scores) < n_frames:
                try:
                    frame = src.read(timeout_s=5.0)
                except EndOfStream:
                    break
                if frame is None:
                    break
                scores.append(heads.quality(pre(frame).tensor).score)
        out[name.removesuffix(".dcm")] = round(float(np.median(scores)), 4) if scores else None
    vals = {k: v for k, v in out.items() if v is not None}
    out["palette_lowest"] = bool(vals) and min(vals, key=vals.get) == "examples_palette"
    return out


def latency(heads: HeadSet, iters: int = 300, warmup: int = 30) -> dict:
    """Per-head inference time (median, p99 ms), heads interleaved so that
    machine noise hits them alike."""
    rng = np.random.default_rng(0)
    h, w = heads.input_size
    names = list(heads.heads)
    feeds = {n: rng.normal(0, 1, heads.heads[n].spec.input_shape).astype(np.float32) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + iters):
        for n in names:
            t0 = time.perf_counter_ns()
            heads.heads[n].run(feeds[n])
            dt = (time.perf_counter_ns() - t0) / 1e6
            if i >= warmup:
                times[n].append(dt)
    return {n: {"p50": round(float(np.median(v)), 4), "p99": round(float(np.percentile(v, 99)), 4)} for n, v in times.items()}


# -- the whole evaluation ----------------------------------------------------------------------------------


def evaluate(engines: Path | None = None, *, quick: bool = False, backend: str = "ort", threads: int = 1,
             int8: bool = True, size: EvalSize | None = None) -> dict:
    t0 = time.perf_counter()
    size = size or (QUICK if quick else FULL)
    manifest = load_manifest(engines)
    frames = held_out_frames(size)
    loop_seeds = list(EVAL_SEEDS)[1000 : 1000 + size.loop_seeds]  # other held-out patients than the frames'
    result: dict = {}
    with HeadSet(manifest, backend=backend, precision="fp32", threads=threads) as heads:
        fm = frame_metrics(heads, frames, "eval frames")
        cl = closed_loop(heads, loop_seeds)
        result["quality"] = fm["quality"]
        paced = closed_loop(heads, loop_seeds, desc="closed loop (paced)", paced=PacedOperator())
        result["guidance"] = {"top1": fm["guidance"]["top1"], **cl, "top1_by_action": fm["guidance"]["top1_by_action"],
                              # the same starts, the operator reading the smoothed hints, a move every 0.5 s
                              "closed_loop_paced": {k: paced[k] for k in ("closed_loop_success", "closed_loop_success_ci95", "success_by_preset",
                                                                      "median_moves", "swept", "went_back", "undone")}
                              # ... and stopping where those hints first say hold
                              | {"settled": settled_summary(heads, loop_seeds, desc="closed loop (paced, until hold)", paced=PacedOperator())},
                              # share of views on which the hints say hold: right at the target, wrong when off
                              "hold_said": hold_decisions(heads, list(EVAL_SEEDS)[2000 : 2000 + size.hold_seeds]),
                              # the same starts, the operator stopping where the hints first say hold: on the view?
                              "closed_loop_settled": settled_summary(heads, loop_seeds),
                              # the same starts driven by the simulator's expert: the task is solvable in 40 moves
                              "expert_closed_loop_success": round(expert_closed_loop(loop_seeds), 4)}
        result["interpreter"] = fm["interpreter"]
        result["real_frames"] = real_frames(heads, size.real_frames)
        result["latency_ms"] = latency(heads, size.latency_iters)
    with_int8 = [n for n, s in manifest.heads.items() if s.int8_path is not None]
    result["int8"] = {}
    if int8 and with_int8:
        with HeadSet(manifest, backend=backend, precision="int8", threads=threads) as heads:
            fm8 = frame_metrics(heads, frames, "eval frames (int8)")
            if "quality" in with_int8:
                result["int8"]["quality"] = fm8["quality"]
            if "guidance" in with_int8:
                result["int8"]["guidance"] = {"top1": fm8["guidance"]["top1"], **closed_loop(heads, loop_seeds, desc="closed loop (int8)")}
            if "interpreter" in with_int8 or "quality" in with_int8:  # abstention follows the quality head
                result["int8"]["interpreter"] = fm8["interpreter"]
            result["int8"]["latency_ms"] = {n: v for n, v in latency(heads, size.latency_iters).items() if n in with_int8}
    result["setup"] = {
        "quick": quick, "backend": backend, "threads": threads,
        "frames": len(frames), "frame_patients": f"{size.frame_seeds} per preset (seeds {EVAL_SEEDS.start}+)",
        "loop_patients": f"{len(loop_seeds)} per preset (seeds {loop_seeds[0] if loop_seeds else '-'}+)",
        "max_moves": MAX_MOVES, "seconds": round(time.perf_counter() - t0, 1),
    }
    return result


# Patient pools for `--closed-loop POOL:START:STOP`: the held-out ones the model card quotes (its starts are
# held-out:1000:1210), the validation ones a retrain is judged and chosen on (docs/TRAINING.md quotes
# validation:500:640 and validation:980:1120), and the training ones (does the head overfit its patients?).
PATIENT_POOLS = {"held-out": EVAL_SEEDS, "validation": VAL_SEEDS, "training": TRAIN_SEEDS}


def parse_patients(spec: str) -> tuple[str, int, int]:
    """'validation:500:640' -> ('validation', 500, 640); ValueError with what to write instead."""
    parts = spec.split(":")
    usage = f"--closed-loop {spec!r}: write POOL:START:STOP with POOL one of {', '.join(PATIENT_POOLS)}, e.g. validation:500:640"
    if len(parts) != 3 or parts[0] not in PATIENT_POOLS:
        raise ValueError(usage)
    try:
        start, stop = int(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(usage) from None
    if not 0 <= start < stop <= len(PATIENT_POOLS[parts[0]]):
        raise ValueError(f"--closed-loop {spec!r}: START and STOP must satisfy 0 <= START < STOP <= {len(PATIENT_POOLS[parts[0]])}")
    return parts[0], start, stop


def closed_loop_only(engines: Path | None, spec: str, *, backend: str = "ort", threads: int = 1, until_hold: bool = False) -> dict:
    """The closed loop alone (one move per frame, the eval's operator) from one
    random start per patient and preset of a pool's [START:STOP]: how a
    retrained guidance head is judged and chosen on validation patients
    before the held-out evaluation is read. `until_hold` adds the same
    starts with the operator stopping on the first hold (settled_summary)."""
    t0 = time.perf_counter()
    pool, start, stop = parse_patients(spec)
    seeds = list(PATIENT_POOLS[pool])[start:stop]
    with HeadSet(load_manifest(engines), backend=backend, precision="fp32", threads=threads) as heads:
        cl = closed_loop(heads, seeds, desc=f"closed loop ({spec})")
        if until_hold:
            cl["closed_loop_settled"] = settled_summary(heads, seeds, desc=f"closed loop until hold ({spec})")
    return {"guidance": cl, "setup": {"patients": f"{pool} [{start}:{stop}] ({len(seeds)} per preset, seeds {seeds[0]}-{seeds[-1]})",
                                      "backend": backend, "threads": threads, "max_moves": MAX_MOVES,
                                      "seconds": round(time.perf_counter() - t0, 1)}}


def closed_loop_lines(r: dict) -> list[str]:
    g = r["guidance"]
    return [f"closed loop on {r['setup']['patients']}: {g['closed_loop_success']} (95 % CI {_interval(g['closed_loop_success_ci95'])}; "
            f"{g['episodes']} episodes; " + ", ".join(f"{k} {v}" for k, v in g["success_by_preset"].items())
            + f"; median {g['median_moves']} moves; top-1 on the states visited {g['top1_on_visited']})"] + settled_lines(g)


def settled_lines(g: dict) -> list[str]:
    lines = _settled_line(g.get("closed_loop_settled"), "stopping where the hints first say hold")
    return lines + _settled_line((g.get("closed_loop_paced") or {}).get("settled"),
                                 "reading the smoothed hints, a move every 0.5 s, and stopping where they first say hold")


def _settled_line(s: dict | None, what: str) -> list[str]:
    if not s:
        return []
    back = s["went_back"]
    return [f"{what}: on the target view {s['success']} (95 % CI {_interval(s['success_ci95'])}; "
            + ", ".join(f"{k} {v}" for k, v in s["by_preset"].items())
            + f"); ended on a hold {s['ended_on_hold']}, of those on the view {s['hold_on_view']}; "
            f"on the view at some frame before the stop {s['reached_before_the_stop']}; went back to the best view seen "
            f"(best_view.BackToBest) in {back['episodes']} episodes, {back['succeeded']} of them stopped on the view"]


def _interval(ci) -> str:
    return f"{ci[0]}-{ci[1]}" if ci else "n/a"


def _fmt_support(terms) -> str:
    return ", ".join(f"{k} ({n} positive)" for k, n in terms.items()) if terms else "none"


def summary_lines(r: dict) -> list[str]:
    q, g, i = r.get("quality", {}), r.get("guidance", {}), r.get("interpreter", {})
    lines = [
        f"quality:     spearman {q.get('spearman')}  auroc {q.get('auroc')}  reasons macro-F1 {q.get('reasons_macro_f1')}",
        f"guidance:    top-1 {g.get('top1')}  closed-loop success {g.get('closed_loop_success')} "
        f"(95 % CI {_interval(g.get('closed_loop_success_ci95'))}) "
        f"({g.get('episodes')} episodes, median {g.get('median_moves')} moves; "
        f"following the smoothed hints, a move every 0.5 s: {(g.get('closed_loop_paced') or {}).get('closed_loop_success')})",
        f"swept back on a blank image (hints.BlindSweep): {(g.get('swept') or {}).get('episodes')} episodes, "
        f"{(g.get('swept') or {}).get('succeeded')} of them reached the view; undid a move the move check called worse "
        f"(move_check.UndoWorseMove): {(g.get('undone') or {}).get('episodes')} episodes, "
        f"{(g.get('undone') or {}).get('succeeded')} of them reached the view",
        f"every pose component within tolerance at the end (diagnostic, the test until 2026-11-30): {g.get('pose_reached')} of the episodes",
        "hints say hold: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (g.get("hold_said") or {}).items()
                                       if not isinstance(v, dict) and k != "views_each"),
        *settled_lines(g),
        f"interpreter: findings macro-F1 {i.get('findings_macro_f1')} (95 % CI {_interval(i.get('findings_macro_f1_ci95'))}; "
        f"{i.get('findings_macro_f1_supported')} over the terms with {MIN_TERM_SUPPORT}+ positive frames, leaving out "
        f"{_fmt_support(i.get('terms_below_support'))})  size MAE {i.get('size_mae_mm')} mm  "
        f"abstains on {i.get('abstain_correct')} of low-quality frames",
    ]
    for head, v in (r.get("int8") or {}).items():
        if head != "latency_ms":
            lines.append(f"int8 {head}: " + ", ".join(f"{k} {x}" for k, x in v.items() if not isinstance(x, dict)))
    rf = r.get("real_frames") or {}
    lines.append("real frames: " + ", ".join(f"{k} {v}" for k, v in rf.items()))
    lat = r.get("latency_ms") or {}
    lines.append("latency (ORT ms, p50/p99): " + ", ".join(f"{k} {v['p50']}/{v['p99']}" for k, v in lat.items()))
    return lines
