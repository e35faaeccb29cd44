"""`edge-assist calibrate`: INT8 QDQ models by static quantisation.

    edge-assist calibrate [--engines engines] [--calibration calibration]

For each head: ONNX Runtime's quant_pre_process (shape inference, graph
optimisation), then quantize_static in QuantFormat.QDQ with symmetric INT8
activations and per-channel symmetric INT8 weights (the form TensorRT builds
an INT8 engine from), calibrated (min-max) on the representative frames in
calibration/frames.npz (preprocessed uint8 frames of calibration patients,
never used for training or evaluation).

Each INT8 model is then timed against its FP32 model (ONNX Runtime, batch 1,
one thread, interleaved runs) and scored on validation patients through the
run-time path. It is kept (manifest int8_file) only where it is at least 5 %
faster and loses at most 1 point (0.01) of its head's metrics; otherwise the
file is removed and the head stays FP32. The decision and the numbers go into
the manifest's "int8" section and the model card.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_assist.manifest import load_manifest, sha256_file
from edge_assist.training.common import CALIB_SEEDS, EXAM_PRESETS, VAL_SEEDS, TrainingError, log
from edge_assist.training.data import INPUT_SIZE, MEAN, STD
from edge_assist.vocab import ACTIONS

CALIB_FILE = "frames.npz"
MAX_LOSS = 0.01  # one point
MIN_SPEEDUP = 1.05
HEADS = ("quality", "guidance", "interpreter")
# The metrics that must not drop by more than MAX_LOSS, per head.
GUARDED = {"quality": ("spearman", "auroc", "reasons_macro_f1"), "guidance": ("top1",), "interpreter": ("findings_macro_f1", "size_mae_mm")}
LOWER_IS_BETTER = {"size_mae_mm": 0.1}  # metric -> the loss allowed, in its own unit (mm)


# -- representative frames ----------------------------------------------------------------------


def build_calibration_frames(out_dir: Path, *, n: int = 128, data_dir: Path = Path("data"), workers: int = 2) -> Path:
    """Render calibration patients, preprocess them the run-time way and keep
    n frames spread over presets and quality levels (uint8, compressed)."""
    from edge_assist.training.make_models import sim_frames

    per_seed = 6
    seeds = list(CALIB_SEEDS)[: max(1, int(np.ceil(n * 1.15 / (per_seed * len(EXAM_PRESETS)))))]
    ds = sim_frames(seeds, per_seed, 31, data_dir, workers=workers, name="calibration")
    rng = np.random.default_rng(0)
    presets = np.array([m["preset"] for m in ds.meta])
    good = ds.quality >= 0.5
    # Stratify: each preset x (good, poor) cell gets its share.
    cells = [np.flatnonzero((presets == p) & (good == g)) for p in EXAM_PRESETS for g in (True, False)]
    pick: list[int] = []
    for i, c in enumerate(cells):
        want = int(round(n * len(c) / max(1, sum(len(x) for x in cells))))
        pick += list(rng.choice(c, size=min(len(c), want), replace=False)) if len(c) else []
    pick = sorted(pick)[:n]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CALIB_FILE
    np.savez_compressed(path, images=ds.images[pick], quality=ds.quality[pick], presets=presets[pick],
                        info=np.array(json.dumps({"seeds": [seeds[0], seeds[-1]], "frames": len(pick), "size": list(INPUT_SIZE),
                                                  "mean": MEAN, "std": STD, "note": "preprocessed uint8; normalise as (x/255-mean)/std"})))
    log(f"calibration: wrote {path} ({len(pick)} frames, {path.stat().st_size / 1e6:.2f} MB)")
    return path


def load_calibration_frames(calibration_dir: Path) -> np.ndarray:
    path = Path(calibration_dir) / CALIB_FILE
    if not path.is_file():
        raise TrainingError(f"{path} not found; build it with `edge-assist calibrate --rebuild-frames` (or `make models`)")
    with np.load(path, allow_pickle=False) as z:
        images = z["images"]
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1:] != INPUT_SIZE:
        raise TrainingError(f"{path}: images must be uint8 (N, {INPUT_SIZE[0]}, {INPUT_SIZE[1]}), got {images.dtype} {images.shape}")
    return images


# -- quantisation -------------------------------------------------------------------------------------


def _reader(frames_u8: np.ndarray, input_name: str, in_ch: int, mean: float, std: float, action_input: str | None = None):
    from onnxruntime.quantization import CalibrationDataReader

    from edge_assist.guidance_memory import one_hot

    def feed(i, x):
        f = {input_name: np.repeat(x[i : i + 1], in_ch, axis=1)}
        if action_input:  # every move in turn, and none
            k = i % (len(ACTIONS) + 1)
            f[action_input] = one_hot(ACTIONS[k] if k < len(ACTIONS) else None)
        return f

    class Reader(CalibrationDataReader):
        def __init__(self):
            x = ((frames_u8.astype(np.float32) / 255.0 - mean) / std)[:, None]
            self.items = iter([feed(i, x) for i in range(len(x))])

        def get_next(self):
            return next(self.items, None)

    return Reader()


def quantize(fp32_path: Path, int8_path: Path, frames_u8: np.ndarray, *, input_name: str = "image", in_ch: int = 1,
             mean: float = MEAN, std: float = STD, action_input: str | None = None) -> Path:
    """Static INT8 QDQ quantisation (symmetric, per-channel weights)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        tmp = Path(td) / "int8.onnx"
        quantize_static(
            str(pre), str(tmp), _reader(frames_u8, input_name, in_ch, mean, std, action_input),
            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
        model = onnx.load(str(tmp))
    onnx.checker.check_model(model)
    if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        raise TrainingError(f"{fp32_path.name}: quantisation produced no QuantizeLinear nodes")
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(int8_path))
    return int8_path


def bench_pair(fp32: Path, int8: Path, shape, iters: int = 400, warmup: int = 50) -> dict:
    """Median / p99 ms of both models, runs interleaved (machine noise hits both)."""
    from edge_assist.training.export import ort_session

    sess = {k: ort_session(p) for k, p in (("fp32", fp32), ("int8", int8))}
    rng = np.random.default_rng(0)
    # Every input at its own shape (a guidance head with memory also takes the previous move).
    feeds = {k: {i.name: (rng.normal(0, 1, shape) if n == 0 else np.zeros([int(d) for d in i.shape])).astype(np.float32)
                 for n, i in enumerate(s.get_inputs())} for k, s in sess.items()}
    t = {"fp32": [], "int8": []}
    for i in range(warmup + iters):
        for k, s in sess.items():
            t0 = time.perf_counter_ns()
            s.run(None, feeds[k])
            if i >= warmup:
                t[k].append((time.perf_counter_ns() - t0) / 1e6)
    return {f"{k}_ms": round(float(np.median(v)), 4) for k, v in t.items()} | {
        f"{k}_p99_ms": round(float(np.percentile(v, 99)), 4) for k, v in t.items()}


# -- the whole step ----------------------------------------------------------------------------------------


def calibrate(engines: Path, calibration_dir: Path, *, val_seeds: int = 12, frames_per_seed: int = 8, keep: str = "auto") -> dict:
    """Build INT8 models for every head, measure, keep the ones that pay off.
    keep: 'auto' (the rule above), 'all' or 'none'."""
    from edge_assist.heads import HeadSet
    from edge_assist.training.evaluate import EvalSize, frame_metrics, held_out_frames
    from edge_assist.training.export import read_manifest_json, write_manifest

    engines = Path(engines)
    frames_u8 = load_calibration_frames(calibration_dir)
    raw = read_manifest_json(engines)
    manifest = load_manifest(engines)
    cand: dict[str, Path] = {}
    for name in HEADS:
        spec = manifest.heads[name]
        out = engines / f"{name}.int8.onnx"
        t0 = time.perf_counter()
        quantize(spec.path, out, frames_u8, input_name=spec.input_name, in_ch=spec.frames, action_input=spec.action_input)
        log(f"calibrate: {out} ({out.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - t0:.1f} s)")
        cand[name] = out
    # Score FP32 and all INT8 candidates on validation patients, through the run-time path.
    size = EvalSize(frame_seeds=val_seeds, frames_per_seed=frames_per_seed, loop_seeds=0, latency_iters=0, real_frames=0, hold_seeds=0)
    frames = held_out_frames(size, seeds=VAL_SEEDS)
    with HeadSet(manifest, precision="fp32") as h:
        m32 = frame_metrics(h, frames, "calibrate: fp32")
    for name, p in cand.items():
        manifest.heads[name].int8_path = p
    with HeadSet(manifest, precision="int8") as h:
        m8 = frame_metrics(h, frames, "calibrate: int8")
    report: dict = {}
    for name in HEADS:
        spec = manifest.heads[name]
        speed = bench_pair(spec.path, cand[name], spec.input_shape)
        # deltas: int8 - fp32, signed so that negative is worse; a loss is judged
        # against MAX_LOSS (scores) or LOWER_IS_BETTER's allowance (errors)
        deltas = {k: round((float(m8[name][k]) - float(m32[name][k])) * (-1 if k in LOWER_IS_BETTER else 1), 4) for k in GUARDED[name]}
        allowed = {k: LOWER_IS_BETTER.get(k, MAX_LOSS) for k in deltas}
        worst = min(deltas, key=lambda k: deltas[k] / allowed[k])
        faster = speed["int8_ms"] * MIN_SPEEDUP <= speed["fp32_ms"]
        accurate = deltas[worst] >= -allowed[worst]
        kept = {"auto": faster and accurate, "all": True, "none": False}[keep]
        why = "" if kept else ("forced off" if keep == "none" else
                               "; ".join(w for w, bad in (("not faster", not faster), (f"{worst} drops {-deltas[worst]:.3f}", not accurate)) if bad))
        report[name] = {
            **speed, "speedup": round(speed["fp32_ms"] / max(speed["int8_ms"], 1e-9), 3),
            "metric": worst, "fp32_value": m32[name][worst], "int8_value": m8[name][worst], "deltas": deltas,
            "kept": kept, "why": why, "bytes": cand[name].stat().st_size,
        }
        h = raw["heads"][name]
        if kept:
            h["int8_file"] = cand[name].name
            h["int8_sha256"] = sha256_file(cand[name])
        else:
            h.pop("int8_file", None)
            h.pop("int8_sha256", None)
            cand[name].unlink()
        log(f"calibrate: {name}: fp32 {speed['fp32_ms']:.3f} ms, int8 {speed['int8_ms']:.3f} ms; {deltas}; "
            + ("kept" if kept else f"dropped ({why})"))
    raw["int8"] = {
        "calibration": f"static QDQ (symmetric INT8 activations, per-channel INT8 weights, min-max) over {len(frames_u8)} "
                       f"frames in calibration/{CALIB_FILE}; metrics on {len(frames)} validation frames",
        "rule": f"kept where >= {MIN_SPEEDUP:.2f}x faster and no guarded metric drops by more than {MAX_LOSS}",
        "heads": report,
    }
    write_manifest(engines, raw)
    return raw["int8"]
