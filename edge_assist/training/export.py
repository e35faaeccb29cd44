"""Export trained heads to ONNX (opset 18, BatchNorm folded, batch 1) with
their manifest entries, and write the model card.

    edge-assist export --from RUN_DIR --out engines

RUN_DIR holds quality.pt, guidance.pt and the interpreter checkpoint (as
written by `edge-assist train ...`); each can also be named on its own.
Every exported file is checked against its torch module on ONNX Runtime
(max abs difference <= 1e-4, recorded in the manifest).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_assist import DISCLAIMER, __version__
from edge_assist.guidance_memory import ACTION_INPUT as ACTION_INPUT_NAME
from edge_assist.guidance_memory import DEFAULT_INTERVAL_MS as MEMORY_INTERVAL_MS
from edge_assist.manifest import FORMAT, sha256_file
from edge_assist.training.common import TrainingError, log, write_json
from edge_assist.training.data import INPUT_SIZE, MEAN, STD, normalise
from edge_assist.vocab import ACTIONS, ECHOGENICITY, LOCATIONS, MARGINS, QUALITY_REASONS, QUALITY_THRESHOLD, STRUCTURES

OPSET = 18
INPUT_NAME = "image"
PARITY_TOL = 1e-4
INTERPRETER_OUTPUT_NAMES = ("structure_logits", "lesion_logit", "lesion_size", "echo_logits", "margin_logits", "location_logits")

ROLES = {
    "quality": {"score": "score", "reasons": "reason_logits"},
    "guidance": {"logits": "action_logits"},
    "interpreter": {
        "structures": "structure_logits", "lesion": "lesion_logit", "size": "lesion_size",
        "echogenicity": "echo_logits", "margins": "margin_logits", "location": "location_logits",
    },
    "lesion": {"echogenicity": "echo_logits", "margins": "margin_logits", "mask": "lesion_mask"},
    "move_check": {"better": "better_logits"},
}
LABELS = {
    "quality": {"reasons": list(QUALITY_REASONS)},
    "guidance": {"actions": list(ACTIONS)},
    "interpreter": {"structures": list(STRUCTURES), "echogenicity": list(ECHOGENICITY), "margins": list(MARGINS),
                    "locations": list(LOCATIONS)},
    "lesion": {"echogenicity": list(ECHOGENICITY), "margins": list(MARGINS)},
    "move_check": {"actions": list(ACTIONS)},
}
OUTPUT_NAMES = {"quality": ("score", "reason_logits"), "guidance": ("action_logits",), "interpreter": INTERPRETER_OUTPUT_NAMES,
                "lesion": ("echo_logits", "margin_logits", "lesion_mask"), "move_check": ("better_logits",)}


def _Tuple(m):
    """Makes any module's outputs a flat tuple (what the exporter names)."""
    from torch import nn

    class TupleOut(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.m = inner

        def forward(self, *inputs):
            o = self.m(*inputs)
            if isinstance(o, dict):
                o = tuple(o.values())
            return tuple(o) if isinstance(o, (tuple, list)) else (o,)

    return TupleOut(m)


def export_onnx(module, path: Path, *, in_ch: int, output_names, opset: int = OPSET, head: str = "", action_in: int = 0,
                input_hw: tuple[int, int] = INPUT_SIZE, input_name: str = INPUT_NAME) -> Path:
    """torch module -> single-file ONNX with a fixed [1, in_ch, *input_hw] input
    (and, for guidance with memory, a [1, action_in] previous-move input)."""
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _Tuple(module).eval()
    args = (torch.zeros(1, in_ch, *input_hw),) + ((torch.zeros(1, action_in),) if action_in else ())
    input_names = [input_name] + ([ACTION_INPUT_NAME] if action_in else [])
    import logging
    import warnings

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notes
    with tempfile.TemporaryDirectory() as td, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tmp = Path(td) / "model.onnx"
        try:
            with torch.no_grad():
                torch.onnx.export(module, args, str(tmp), input_names=input_names, output_names=list(output_names),
                                  opset_version=opset, dynamo=True, external_data=False, optimize=True, verbose=False)
        except Exception as exc:
            raise TrainingError(f"ONNX export of {head or path.name} failed: {exc.__class__.__name__}: {exc}") from exc
        model = onnx.load(str(tmp))
    model.doc_string = ""
    # The exporter tags every node with its Python stack trace (absolute paths and
    # line numbers): drop them, so the same weights give the same file anywhere.
    for node in list(model.graph.node) + [n for f in model.functions for n in f.node]:
        del node.metadata_props[:]
    model.producer_name, model.producer_version = "edge-assist", __version__
    del model.metadata_props[:]
    for k, v in (("head", head), ("disclaimer", DISCLAIMER)):
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    names = [o.name for o in model.graph.output]
    if names != list(output_names):
        raise TrainingError(f"{head}: exported outputs {names} differ from {list(output_names)}")
    if [i.name for i in model.graph.input] != input_names:
        raise TrainingError(f"{head}: exported inputs {[i.name for i in model.graph.input]} differ from {input_names}")
    fd, tmp_out = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    onnx.save(model, tmp_out)
    os.chmod(tmp_out, 0o644)  # mkstemp makes 0600; model files are shared artefacts
    os.replace(tmp_out, path)
    return path


def ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity(module, path: Path, inputs: np.ndarray, actions: np.ndarray | None = None) -> float:
    """Max |ORT - torch| over all outputs and the given [N, C, H, W] inputs
    (and [N, A] previous-move inputs), run one by one."""
    import torch

    sess = ort_session(path)
    names = [i.name for i in sess.get_inputs()]
    ref = _Tuple(module).eval()
    worst = 0.0
    with torch.no_grad():
        for k, x in enumerate(inputs):
            feed = [x[None].astype(np.float32)] + ([actions[k][None].astype(np.float32)] if actions is not None else [])
            got = sess.run(None, dict(zip(names, feed)))
            want = [t.numpy() for t in ref(*(torch.from_numpy(f) for f in feed))]
            for g, w in zip(got, want):
                worst = max(worst, float(np.max(np.abs(g.reshape(w.shape) - w))))
    return worst


def parity_inputs(in_ch: int, frames_u8: np.ndarray | None = None, n: int = 8, seed: int = 0) -> np.ndarray:
    """Real frames when given (normalised as at run time), else speckle-like noise."""
    rng = np.random.default_rng(seed)
    if frames_u8 is not None and len(frames_u8):
        pick = frames_u8[rng.choice(len(frames_u8), size=min(n, len(frames_u8)), replace=False)]
        x = ((pick.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]
        return np.repeat(x, in_ch, axis=1)
    u8 = rng.rayleigh(60, size=(n, in_ch, *INPUT_SIZE)).clip(0, 255)
    return ((u8 / 255.0 - MEAN) / STD).astype(np.float32)


def parity_actions(n: int, action_in: int, seed: int = 0) -> np.ndarray | None:
    """One-hot previous moves for the parity check, every other one none (zeros)."""
    if not action_in:
        return None
    a = np.zeros((n, action_in), np.float32)
    rng = np.random.default_rng(seed)
    for i in range(0, n, 2):
        a[i, rng.integers(action_in)] = 1.0
    return a


def head_entry(head: str, path: Path, *, in_ch: int, decode: dict, labels: dict | None = None, version: str | None = None,
               metrics: dict | None = None, training: dict | None = None, action_in: int = 0,
               input_hw: tuple[int, int] = INPUT_SIZE, input_name: str = INPUT_NAME) -> dict:
    sha = sha256_file(path)
    entry = {
        "file": path.name,
        "sha256": sha,
        "version": version or f"{__version__}+{sha[:8]}",
        "input": {"name": input_name, "shape": [1, in_ch, *input_hw], "dtype": "float32", "frames": in_ch},
        "outputs": dict(ROLES[head]),
        "labels": labels or LABELS[head],
        "decode": decode,
        "metrics": metrics or {},
        "bytes": path.stat().st_size,
    }
    if action_in:
        # Guidance with memory: frame 0 is the one before the previous move,
        # frame 1 the current one; the run time keeps the frame shown about
        # interval_ms ago and the hint shown then (edge_assist.guidance_memory).
        entry["memory"] = {"action_input": ACTION_INPUT_NAME, "interval_ms": MEMORY_INTERVAL_MS}
    if training:
        entry["training"] = training
    return entry


# -- per-head export ---------------------------------------------------------------------------


def export_quality_or_guidance(ckpt: Path, out_dir: Path, frames_u8: np.ndarray | None = None) -> dict:
    from edge_assist.training.models import export_module
    from edge_assist.training.train import load_head

    model, ck = load_head(ckpt)
    head = ck["head"]
    in_ch, action_in = int(model.cfg.in_ch), int(getattr(model.cfg, "action_in", 0))
    path = export_onnx(export_module(head, model), Path(out_dir) / f"{head}.onnx", in_ch=in_ch, output_names=OUTPUT_NAMES[head], head=head,
                       action_in=action_in)
    ref = export_module(head, model)  # the trained model as exported (eval mode)
    diff = parity(ref, path, parity_inputs(in_ch, frames_u8), parity_actions(8, action_in))
    unfolded = _unfolded(head, model)
    diff = max(diff, parity(unfolded, path, parity_inputs(in_ch, frames_u8, seed=1), parity_actions(8, action_in, seed=1)))
    if diff > PARITY_TOL:
        raise TrainingError(f"{head}: ONNX Runtime differs from torch by {diff:.2e} (> {PARITY_TOL}); not exported")
    decode = {k: v for k, v in ck.get("decode", {}).items()}
    training = {"val": ck.get("val", {}), "data": ck.get("data", {}), "epochs": len(ck.get("history", [])),
                "seed": ck.get("run_key", {}).get("seed")}
    entry = head_entry(head, path, in_ch=in_ch, decode=decode, training=training, action_in=action_in)
    entry["parity_max_abs_diff"] = float(f"{diff:.3g}")
    log(f"export: {path} ({path.stat().st_size / 1e6:.2f} MB, parity {diff:.1e})")
    return entry


def _unfolded(head: str, model):
    from edge_assist.training.models import GuidanceExport, QualityExport

    import copy

    m = copy.deepcopy(model).eval()
    return QualityExport(m).eval() if head == "quality" else GuidanceExport(m).eval()


def export_interpreter(ckpt: Path, out_dir: Path, frames_u8: np.ndarray | None = None) -> dict:
    from edge_assist.training.interpreter import interpreter_manifest_entry, load_student
    from edge_assist.training.models import fold_batchnorm

    import copy

    student = load_student(Path(ckpt)).eval()
    folded = fold_batchnorm(copy.deepcopy(student)).eval()
    path = export_onnx(folded, Path(out_dir) / "interpreter.onnx", in_ch=1, output_names=student.output_names, head="interpreter")
    diff = max(parity(student, path, parity_inputs(1, frames_u8)), parity(folded, path, parity_inputs(1, None, seed=1)))
    if diff > PARITY_TOL:
        raise TrainingError(f"interpreter: ONNX Runtime differs from torch by {diff:.2e} (> {PARITY_TOL}); not exported")
    theirs = dict(interpreter_manifest_entry(Path(ckpt)))
    decode = dict(theirs.get("decode", {}))
    decode.setdefault("quality_threshold", QUALITY_THRESHOLD)
    entry = head_entry("interpreter", path, in_ch=1, decode=decode, labels=theirs.get("labels") or LABELS["interpreter"],
                       training={k: v for k, v in theirs.items() if k not in ("labels", "decode", "outputs", "input", "file")})
    entry["outputs"] = dict(theirs["outputs"])  # with the lesion mask when the student has one
    entry["parity_max_abs_diff"] = float(f"{diff:.3g}")
    log(f"export: {path} ({path.stat().st_size / 1e6:.2f} MB, parity {diff:.1e})")
    return entry


def export_lesion(ckpt: Path, out_dir: Path, crops_u8: np.ndarray | None = None) -> dict:
    """The lesion head (edge_assist.lesion_crop): crop [1,1,64,64] -> echogenicity, margins, mask."""
    from edge_assist.lesion_crop import CONTEXT, CROP_SIZE, MIN_SIDE_PX
    from edge_assist.training.lesion import BOX_THRESHOLD, INPUT_NAME as CROP_INPUT, load_lesion_checkpoint
    from edge_assist.training.models import fold_batchnorm

    import copy

    model, ck = load_lesion_checkpoint(Path(ckpt))
    folded = fold_batchnorm(copy.deepcopy(model)).eval()
    hw = (CROP_SIZE, CROP_SIZE)
    path = export_onnx(folded, Path(out_dir) / "lesion.onnx", in_ch=1, output_names=OUTPUT_NAMES["lesion"], head="lesion",
                       input_hw=hw, input_name=CROP_INPUT)
    rng = np.random.default_rng(0)
    noise = rng.rayleigh(60, size=(8, *hw)).clip(0, 255)
    real = crops_u8[rng.choice(len(crops_u8), size=min(8, len(crops_u8)), replace=False)] if crops_u8 is not None and len(crops_u8) else noise
    diff = max(parity(model, path, normalise(real)), parity(folded, path, normalise(noise)))
    if diff > PARITY_TOL:
        raise TrainingError(f"lesion: ONNX Runtime differs from torch by {diff:.2e} (> {PARITY_TOL}); not exported")
    decode = {"temperature": float(ck.get("temperature", 1.0)), "box_threshold": BOX_THRESHOLD, "context": CONTEXT,
              "min_side_px": MIN_SIDE_PX}
    training = {"val": (ck.get("history") or [{}])[-1].get("val_true_box", {}), "epochs": len(ck.get("history", [])),
                "seed": ck.get("settings", {}).get("seed"), "data": ck.get("data", {})}
    entry = head_entry("lesion", path, in_ch=1, decode=decode, training=training, input_hw=hw, input_name=CROP_INPUT)
    entry["parity_max_abs_diff"] = float(f"{diff:.3g}")
    log(f"export: {path} ({path.stat().st_size / 1e6:.2f} MB, parity {diff:.1e})")
    return entry


def find_checkpoints(run_dir: Path | None, quality=None, guidance=None, interpreter=None, lesion=None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for head, given in (("quality", quality), ("guidance", guidance), ("interpreter", interpreter)):
        if given:
            found[head] = Path(given)
            continue
        if run_dir is None:
            continue
        for cand in (Path(run_dir) / f"{head}.pt", Path(run_dir) / head / f"{head}.pt"):
            if cand.is_file():
                found[head] = cand
                break
    missing = [h for h in ("quality", "guidance", "interpreter") if h not in found]
    if missing:
        raise TrainingError(f"no checkpoint for {', '.join(missing)} (looked in {run_dir}); train them first or name them with --{missing[0]}")
    if lesion:  # optional: the lesion head's second look
        found["lesion"] = Path(lesion)
    elif run_dir is not None:
        for cand in (Path(run_dir) / "lesion.pt", Path(run_dir) / "lesion" / "lesion.pt"):
            if cand.is_file():
                found["lesion"] = cand
                break
    for h, p in found.items():
        if not Path(p).is_file():
            raise TrainingError(f"{h} checkpoint {p} not found")
    return found


def export_all(checkpoints: dict[str, Path], out_dir: Path, *, frames_u8: np.ndarray | None = None, extra: dict | None = None,
               crops_u8: np.ndarray | None = None) -> Path:
    """Export the three heads (and the lesion head when checkpoints name one)
    into out_dir and write manifest.json and MODEL_CARD.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    heads = {
        "quality": export_quality_or_guidance(checkpoints["quality"], out_dir, frames_u8),
        "guidance": export_quality_or_guidance(checkpoints["guidance"], out_dir, frames_u8),
        "interpreter": export_interpreter(checkpoints["interpreter"], out_dir, frames_u8),
    }
    if checkpoints.get("lesion"):
        heads["lesion"] = export_lesion(checkpoints["lesion"], out_dir, crops_u8)
    elif (out_dir / "lesion.onnx").exists():  # a lesion model from an earlier export no longer belongs
        (out_dir / "lesion.onnx").unlink()
    if (out_dir / "move_check.onnx").exists():  # it learnt from the guidance head this export may replace
        (out_dir / "move_check.onnx").unlink()  # (training/move_check.py; `edge-assist train move-check` makes it again)
    for h in heads.values():
        if h["bytes"] > 10e6:
            raise TrainingError(f"{h['file']} is {h['bytes'] / 1e6:.1f} MB, over the 10 MB budget")
    manifest = {
        "format": FORMAT,
        "created_by": f"edge-assist {__version__} export",
        "preprocess": {"size": list(INPUT_SIZE), "mean": MEAN, "std": STD},
        "heads": heads,
        **(extra or {}),
    }
    # Stale INT8 files would no longer match: calibration is redone after export.
    for h in ("quality", "guidance", "interpreter", "lesion"):
        old = out_dir / f"{h}.int8.onnx"
        if old.exists():
            old.unlink()
    write_manifest(out_dir, manifest)
    return out_dir / "manifest.json"


def read_manifest_json(engines: Path) -> dict:
    p = Path(engines) / "manifest.json"
    if not p.is_file():
        raise TrainingError(f"{p} not found; run `edge-assist export` first")
    return json.loads(p.read_text(encoding="utf-8"))


def write_manifest(engines: Path, manifest: dict) -> None:
    write_json(Path(engines) / "manifest.json", manifest)
    write_model_card(Path(engines), manifest)


# -- the model card -------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


TARGETS = {
    "quality": {"spearman": ">= 0.9", "auroc": ">= 0.97", "reasons_macro_f1": ">= 0.85"},
    "guidance": {"closed_loop_success": ">= 0.90 (aim 0.95)", "top1": ">= 0.8"},
    "interpreter": {"findings_macro_f1": ">= 0.85", "size_mae_mm": "<= 3", "abstain_correct": ">= 0.99"},
}


def write_model_card(engines: Path, manifest: dict) -> Path:
    heads = manifest.get("heads", {})
    ev = manifest.get("evaluation", {})
    lines = [
        "# edge-assist models: model card",
        "",
        f"> {DISCLAIMER} The models were trained on simulated data only and must not be used for diagnosis.",
        "",
        "Generated by `edge-assist export` / `calibrate` / `eval` from `manifest.json`; do not edit by hand.",
        "Reproduce with `make models` (`EDGE_ASSIST_THREADS=2 edge-assist train all --out engines`).",
        "",
        "## Intended use",
        "",
        "Research, teaching and engineering of real-time ultrasound assistance: an operator-facing overlay that",
        "rates image quality (with reasons), suggests the next probe move towards a standard view, and drafts a",
        "short structured description of the frame. Not a medical device; not for diagnosis, triage or any",
        "clinical decision.",
        "",
        "## Models",
        "",
        "| head | file | input | outputs | size | parity (ORT vs torch) | INT8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, h in heads.items():
        shape = "x".join(str(d) for d in h["input"]["shape"])
        int8 = h.get("int8_file") or "no (fp32 kept)"
        size = f"{h.get('bytes', 0) / 1e6:.2f} MB"
        lines.append(f"| {name} | `{h['file']}` | {shape} | {', '.join(h['outputs'].values())} | {size} | {h.get('parity_max_abs_diff', 'n/a')} | {int8} |")
    lines += [
        "",
        "All heads are plain convolutional networks (3x3 conv + BatchNorm + ReLU, BatchNorm folded at export), ONNX",
        f"opset {OPSET}, batch 1. Preprocessing (the same code at training and run time, `edge_assist.preprocess`):",
        f"scan-region crop, grey, resize to {INPUT_SIZE[0]}x{INPUT_SIZE[1]}, (pixel/255 - {MEAN}) / {STD}. The lesion head",
        "(when present) reads a square crop of the scan region at the source's resolution around the lesion the",
        "interpreter's mask shows, resized to its input and normalised the same way (`edge_assist.lesion_crop`).",
        "The move check (when present) reads two preprocessed frames, before and after a probe move, and gives for",
        "each move the logit that it brought the pose component it changes closer to the target view; the hints",
        "undo a slide, rotation, fan or rock it calls worse (`edge_assist.move_check`).",
        "",
        "## Training data",
        "",
    ]
    data = manifest.get("data")
    if data:
        for k, v in data.items():
            lines.append(f"- {k}: {_fmt(v)}")
    else:
        lines.append("- see the `training` entry of each head in manifest.json")
    lines += [
        "",
        "Everything is rendered by the built-in virtual patient (`edge_assist.sim`): procedural liver/kidney, thyroid",
        "and cardiac phantoms, a convolution-model B-mode renderer, and artefacts (contact loss, rib and gas",
        "shadows, gain and TGC errors, wrong depth, motion blur, noise, off-target poses). Labels are the",
        "simulator's ground truth. Guidance frames are collected along probe trajectories (noisy expert, then",
        "DAgger rounds with the trained policy) and labelled with the expert's next move.",
        "",
        "## Evaluation (held-out virtual patients, ONNX Runtime, the run-time decode)",
        "",
    ]
    if ev:
        lines += ["| head | metric | fp32 | target |", "|---|---|---|---|"]
        for head in ("quality", "guidance", "interpreter"):
            for k, v in (ev.get(head) or {}).items():
                lines.append(f"| {head} | {k} | {_fmt(v)} | {TARGETS.get(head, {}).get(k, '')} |")
        if ev.get("latency_ms"):
            lines += ["", "Latency, ORT, 1 thread, batch 1 (median / p99 ms): " + "; ".join(
                f"{h} {v['p50']:.3f} / {v['p99']:.3f}" for h, v in ev["latency_ms"].items())]
        if ev.get("real_frames"):
            lines += ["", "Quality score on pydicom's real ultrasound examples: " + ", ".join(
                f"{k} {_fmt(v)}" for k, v in ev["real_frames"].items()) + "."]
        if ev.get("setup"):
            lines += ["", "Setup: " + _fmt(ev["setup"])]
    else:
        lines.append("Not evaluated yet: run `edge-assist eval`.")
    int8 = manifest.get("int8")
    if int8:
        lines += ["", "## INT8 (static QDQ quantisation, ONNX Runtime)", "",
                  "| head | fp32 ms | int8 ms | metric | fp32 | int8 | kept |", "|---|---|---|---|---|---|---|"]
        for head, r in int8.get("heads", {}).items():
            lines.append(f"| {head} | {r.get('fp32_ms', float('nan')):.3f} | {r.get('int8_ms', float('nan')):.3f} | {r.get('metric', '')} | "
                         f"{_fmt(r.get('fp32_value'))} | {_fmt(r.get('int8_value'))} | {'yes' if r.get('kept') else 'no: ' + r.get('why', '')} |")
        lines += ["", "INT8 is kept only where it is faster and loses at most 1 point of its head's metric; "
                  f"{int8.get('calibration', '')}"]
    lines += [
        "",
        "## Limits",
        "",
        "- Trained and evaluated on simulated images only. Real scanners differ (speckle, processing, probes,",
        "  presets, anatomy, pathology); expect a domain gap. Real-frame scores above are a sanity check, not a",
        "  validation.",
        "- Three scan presets (RUQ liver/kidney, thyroid, parasternal-like cardiac window); anything else is out of",
        "  distribution. Lesions are simple ellipsoids with four echogenicities and two margin types.",
        "- Guidance follows the simulator's action set and step sizes, in the probe's frame; it knows the target",
        "  view only as it was trained; it cannot see out of plane except through the anatomy in view. With several",
        "  components off at once, the direction of an out-of-plane slide, a rotation or a fan is often not read",
        "  from one frame (docs/TRAINING.md measures it), so the closed-loop figure above is the one to read; it",
        "  is at the 90 % target, not clear of it (read its interval; validation starts read a point or so less),",
        "  and one start in ten still does not reach the view. The target view is judged by what the beam cuts (the simulator's",
        "  view offset; since 2026-11-30), not one pose component at a time (`pose_reached`: the share of episodes",
        "  ending with every component within its tolerance). Treat the arrow as a research baseline, not",
        "  advice. The hints show `hold` only where contact is lost, or where the quality head finds the view good",
        "  and the guidance head's best move is hold at 0.3 or more (or the quality is clearly good, 0.85+), and",
        "  they never show a move that leads back to where the last eight moves have been (the next-best move that",
        "  does not comes first), except on purpose: where the quality meter read good and then fell 0.3 below",
        "  that within six moves, they show the way back to that view and hold there if the meter reads good",
        "  again (`went_back` above); that hold says the best view seen, not the target view. Where the move check",
        "  (when present) calls the last slide, rotation, fan or rock worse, they show its reverse for two moves",
        "  (`undone` above); it reads two frames, and the operator is taken to have made the move shown. The labels ask for a",
        "  centring move until the view is near the middle of the target view (`Plan.centre_view`), so on a view",
        "  that is already diagnostic the arrow may still ask for a small move (`hold_said` above): read the",
        "  quality meter to know the view is good. An operator who stops where the hints first say hold ends on",
        "  the target view far less often than the closed loop reaches it (`closed_loop_settled` above, and",
        "  `settled` in `closed_loop_paced` for the smoothed hints as the pipeline shows them; liver",
        "  views above all, where the hold rarely comes): the hold, when it comes, is mostly right, but its",
        "  absence does not mean the view is wrong.",
        "- The gallbladder (in about a quarter of the liver phantoms' target views since 2026-12-01) is the",
        "  structure the interpreter knows least: its F1 rests on a few dozen held-out frames and its own",
        "  threshold (`decode.structure_thresholds`, fitted on validation) trades its misses against false",
        "  reports. A term on fewer than 20 positive frames moves the macro-F1 by up to 0.09 on its own",
        "  (`findings_macro_f1_supported` is the mean over the terms with 20 or more positive frames, and",
        "  `terms_below_support` names the rest). The `_ci95` entries are 95 % intervals: closed-loop success",
        "  over its episodes (Wilson), findings macro-F1 over held-out patients (bootstrap). Small or",
        "  anechoic liver lesions are hard to tell from vessels at 128 px. On liver and cardiac views a 128 px",
        "  input pixel is about 1.6 mm,",
        "  and most of their lesions are under 10 pixels across.",
        "- The lesion head takes a second look where the interpreter reports a lesion and its mask shows where:",
        "  a box 2.5 times the lesion's long axis, cut from the frame at the source's own resolution and resized",
        "  to 64x64. Its echogenicity, margins and measured size replace the interpreter's, and the location is",
        "  the depth third its mask's centre lies in (`second_look` in the findings). Where the interpreter's mask",
        "  shows nothing, or it reports no lesion (a fifth of the held-out lesions), there is no second look;",
        "  lesions it misses stay missed. It was trained on the simulator's 256x256 frames, where a liver pixel is",
        "  about 0.8 mm; a scanner's frames are finer, which it has not seen.",
        "- Lesion size is reported in mm only when the source gives pixel spacing. It is measured along the lesion's",
        "  long axis on the lesion head's mask, else on the interpreter's; where neither shows the lesion it is",
        "  regressed from the whole frame, and the findings mark it as an estimate (`size_measured`).",
        "- The interpreter abstains below its quality threshold; its sentences are templates from structured",
        "  findings, not free text.",
        "",
    ]
    path = Path(engines) / "MODEL_CARD.md"
    from edge_assist.training.common import atomic_write_bytes

    atomic_write_bytes(path, "\n".join(lines).encode("utf-8"))
    return path
