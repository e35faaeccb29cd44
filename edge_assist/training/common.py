"""Shared by training, export, calibration and evaluation: seeds, the
patient-seed split, atomic file writes, progress bars.

Importing this module does not import torch (evaluation must run without
it); functions that need torch import it themselves.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edge_assist.errors import EdgeAssistError

# -- the patient-seed split --------------------------------------------------------
# Virtual patients are independent per (preset, seed). Training, validation
# (model selection, temperature / threshold fitting) and evaluation use
# disjoint seed ranges, so evaluation is always on patients never seen.
TRAIN_SEEDS = range(0, 10_000)
VAL_SEEDS = range(10_000, 20_000)
EVAL_SEEDS = range(50_000, 60_000)  # `edge-assist eval`: held-out patients only
CALIB_SEEDS = range(30_000, 31_000)  # the INT8 calibration frames
EXAM_PRESETS = ("liver", "thyroid", "cardiac")

DEFAULT_SEED = 1234


class TrainingError(EdgeAssistError):
    """A training/export/calibration problem the user can fix."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # evaluation without torch
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        # A GPU gives the same weights twice only with deterministic kernels: on
        # an H200, two 1-epoch runs with one seed differed in the 4th digit of
        # the loss without this. cuBLAS reads its setting when it starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def training_threads(threads: int | None = None) -> int:
    """The torch threads a training process uses: `threads`, else
    EDGE_ASSIST_THREADS, else one per core (shared out between the local
    processes of a DDP run)."""
    n = threads or int(os.environ.get("EDGE_ASSIST_THREADS", "0")) or (os.cpu_count() or 1)
    if os.environ.get("WORLD_SIZE") and int(os.environ["WORLD_SIZE"]) > 1 and not threads:
        n = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
    return n


def set_torch_threads(threads: int | None = None) -> int:
    import torch

    n = training_threads(threads)
    torch.set_num_threads(n)
    return n


def training_device():
    """Where a single-process training run puts its model: the first CUDA GPU
    when there is one, else the CPU. EDGE_ASSIST_DEVICE (cpu, cuda, cuda:1)
    overrides; `make models` sets cpu, since the committed engines are the CPU
    run's weights (a GPU's kernels round differently)."""
    import torch

    name = os.environ.get("EDGE_ASSIST_DEVICE", "").strip()
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError(f"EDGE_ASSIST_DEVICE={name}, but torch sees no CUDA GPU here; unset it or set cpu")
        return dev
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def training_memory_format():
    """How quality and guidance lay out their convolutions' tensors while
    training. EDGE_ASSIST_CHANNELS_LAST=1 chooses channels-last: on this
    project's 2-core CPU their epochs take 1.2-1.5x less time (the backward
    convolutions are faster so). Off by default, and off for `make models`:
    the kernels round differently, so the committed quality and guidance
    heads are what the default layout gives (docs/TRAINING.md, "Channels-last
    training")."""
    import torch

    on = os.environ.get("EDGE_ASSIST_CHANNELS_LAST", "").strip().lower() in ("1", "true", "yes", "on")
    return torch.channels_last if on else torch.contiguous_format


def model_device(model):
    """The device a model's weights are on."""
    return next(model.parameters()).device


def to_device(batch: dict, device) -> dict:
    """A dict of tensors moved to a device (other values kept)."""
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", enabled: bool = True, leave: bool = False):
    """A tqdm bar on stderr (quiet on non-main ranks and when disabled)."""
    from tqdm import tqdm

    return tqdm(
        iterable, total=total, desc=desc, disable=not enabled, leave=leave, dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr,
    )


# One atomic writer for the whole project (tmp file beside the target, fsync, rename).
from edge_assist.record import atomic_write_bytes  # noqa: E402


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file: a checkpoint is never half written."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def torch_load(path: Path) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} not found; train it first (`edge-assist train ...`)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupt or foreign file
        raise TrainingError(f"cannot read checkpoint {path} ({exc.__class__.__name__}: {exc}); delete it and retrain") from exc


def optimiser_step(loss, opt, sched=None) -> float:
    """One training step on `loss` (gradients cleared first); its value as a float."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return float(loss.detach())


def log(msg: str, *, enabled: bool = True) -> None:
    if enabled:
        print(msg, file=sys.stderr, flush=True)


# -- small metrics (numpy only: evaluation and training share them) -----------------

def rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 1-based."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def auroc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U), ties counted half."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def f1_binary(y_true, y_pred) -> float:
    t, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp = float((t & p).sum())
    fp = float((~t & p).sum())
    fn = float((t & ~p).sum())
    if tp + fp + fn == 0:
        return float("nan")  # the class never occurs and is never predicted
    return 2 * tp / (2 * tp + fp + fn)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float]:
    """95 % (z = 1.96) Wilson score interval of a success rate: unlike the
    normal approximation it stays inside [0, 1] and is right near 0 and 1.
    [nan, nan] for n = 0."""
    if n <= 0:
        return [float("nan"), float("nan")]
    p = successes / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [round(float(max(0.0, centre - half)), 4), round(float(min(1.0, centre + half)), 4)]


def macro_f1_multilabel(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, list[float]]:
    """Mean F1 over the label columns that occur (in truth or prediction)."""
    per = [f1_binary(y_true[:, k], y_pred[:, k]) for k in range(y_true.shape[1])]
    vals = [v for v in per if not np.isnan(v)]
    return (float(np.mean(vals)) if vals else float("nan")), per


def macro_f1_multiclass(y_true, y_pred, n_classes: int) -> float:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    vals = [f1_binary(t == k, p == k) for k in range(n_classes)]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


# -- simulator frames through the run-time preprocessing ---------------------------------

_GEOMETRY_CACHE: dict = {}


def sim_region(truth: dict, image_shape: tuple[int, int]):
    """The ScanRegion the live simulator source attaches to a frame (full
    image, probe kind, mm per pixel, fan mask), rebuilt from its truth."""
    from edge_assist.sim.geometry import PROBES, BeamGeometry

    key = (truth["probe"], float(truth["depth_mm"]), tuple(image_shape[:2]))
    region = _GEOMETRY_CACHE.get(key)
    if region is None:
        region = BeamGeometry(PROBES[truth["probe"]], float(truth["depth_mm"]), tuple(image_shape[:2])).region()
        if len(_GEOMETRY_CACHE) > 256:
            _GEOMETRY_CACHE.clear()
        _GEOMETRY_CACHE[key] = region
    return region


def expert_action(vp, truth: dict, threshold: float | None = None, centre_depth: bool = False,
                  centre_view: float | None = None) -> str:
    """The simulator's optimal action, refined where it stops short: inside
    every tolerance ('hold', at target) while the truth quality is still
    below the threshold (a rib shadow, gain and depth each a little off), it
    takes the step that most reduces the largest remaining error instead.
    Following this expert reaches a diagnostic view from every random start
    tried; the plain policy then holds on a poor view in ~10 % of them.

    centre_depth: once the gain is within tolerance, set the display depth to
    the target's (within half a step) before any other move or hold, not only
    within its tolerance: one step inside tolerance looks much like two steps,
    which is outside, so the labels then ask for the same move at both.

    centre_view: at the target view (the simulator holds: view offset <= 1,
    settings within tolerance) the label is still a move while the view
    offset exceeds this: a step of the pose component furthest off (in
    units of its tolerance) of those a step brings closer. The reason is
    the depth's: a view just inside the target view's edge looks like one
    just outside it, where the hints must not say hold (a hold there ends
    the search one step short)."""
    from edge_assist.sim.patient import ACTION_EFFECT, ERROR_KEYS, ERROR_NAMES, STEP
    from edge_assist.vocab import QUALITY_THRESHOLD

    thr = QUALITY_THRESHOLD if threshold is None else threshold
    action = vp.optimal_action()
    if centre_depth and (action != "hold" or truth.get("at_target")) and (ACTION_EFFECT[action] or ("",))[0] not in ("depth", "gain"):
        e = float(truth["pose_error"][ERROR_NAMES["depth"]])
        if abs(e) > 0.5 * STEP["depth"]:
            return _move_reducing("depth", e) or action
    if (centre_view is not None and action == "hold" and truth.get("at_target")
            and float(truth.get("view_offset", 0.0)) > centre_view):
        step = _step_furthest(truth["pose_error"], ERROR_KEYS, vp.tol)
        if step is not None:
            return step
    if action != "hold" or not truth.get("at_target") or truth["quality"] >= thr:
        return action
    return _step_furthest(truth["pose_error"], ERROR_NAMES, STEP) or action


def _step_furthest(pose_error: dict, components, units: dict) -> str | None:
    """Of `components` that a step brings closer to the target (more than
    half a step off), the move for the one furthest off in `units` (steps,
    or tolerances); None when there is none (as near as the steps reach)."""
    from edge_assist.sim.patient import ERROR_NAMES, STEP

    errors = {k: float(pose_error[ERROR_NAMES[k]]) for k in components}
    movable = [k for k in components if abs(errors[k]) > 0.5 * STEP[k]]
    if not movable:
        return None
    k = max(movable, key=lambda c: abs(errors[c]) / units[c])
    return _move_reducing(k, errors[k])


def _move_reducing(component: str, error: float) -> str | None:
    """The move that steps `component` towards zero error."""
    from edge_assist.sim.patient import ACTION_EFFECT

    return next((a for a, eff in ACTION_EFFECT.items() if eff == (component, -1 if error > 0 else +1)), None)
