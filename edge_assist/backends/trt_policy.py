"""Decisions of the TensorRT path that need no TensorRT: which precision to
build, when to refuse, whether a built engine really runs in the precision
that was asked for, and how to explain an unavailable backend.

Pure functions, tested on any machine (tests/test_trt_policy.py).
"""

from __future__ import annotations

import json
import mmap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edge_assist.backends.base import BackendStatus
from edge_assist.errors import BackendError

PRECISIONS = ("fp32", "fp16", "int8")
MIN_TRT_MAJOR = 10


@dataclass(frozen=True)
class Platform:
    """What the build depends on, read once from TensorRT and the GPU."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    integrated: bool = False
    can_map_host_memory: bool = False
    fast_fp16: bool = True
    fast_int8: bool = True


def fast_precisions_for_cc(major: int, minor: int) -> tuple[bool, bool]:
    """(fast FP16, fast INT8) from the compute capability, for TensorRT
    versions without builder.platform_has_fast_fp16 / _int8.

    FP16 is fast from 5.3 on, except consumer Pascal (6.1: 1/64 rate).
    INT8 needs DP4A or tensor cores: 6.1 and later, except Jetson TX2 (6.2).
    """
    cc = (int(major), int(minor))
    fp16 = cc >= (5, 3) and cc != (6, 1)
    int8 = cc >= (6, 1) and cc != (6, 2)
    return fp16, int8


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def precision_refusal(precision: str, platform: Platform) -> str | None:
    """The one-line reason to refuse building `precision` on this GPU, or None.
    Refusing beats building quietly in another precision."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}"
    gpu = f"{platform.gpu_name} (compute capability {platform.compute_capability})"
    if precision == "fp16" and _major(platform.trt_version) >= 11:
        return (
            f"TensorRT {platform.trt_version} builds only strongly typed networks (it removed the FP16 builder flag): "
            "an FP16 engine needs an FP16 ONNX model, which edge-assist does not make yet; nothing was built. "
            "Use --precision fp32 or int8, or TensorRT 10"
        )
    if precision == "fp16" and not platform.fast_fp16:
        return (
            f"{gpu} has no fast FP16: an FP16 engine would not be faster and TensorRT would run it in FP32; "
            "nothing was built. Use --precision fp32"
        )
    if precision == "int8" and not platform.fast_int8:
        alt = "fp16" if platform.fast_fp16 else "fp32"
        return f"{gpu} has no fast INT8: nothing was built. Use --precision {alt}"
    return None


def onnx_has_qdq(path: str | Path) -> bool:
    """True when the ONNX model holds QuantizeLinear/DequantizeLinear nodes
    (the QDQ models `edge-assist calibrate` writes). Operator types are plain
    strings in the protobuf, so a byte search is enough and needs no onnx."""
    p = Path(path)
    if p.stat().st_size == 0:
        return False
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(b"QuantizeLinear") != -1  # also matches DequantizeLinear


def resolve_precision(requested: str, model_is_qdq: bool, model_name: str) -> tuple[str, str | None]:
    """(precision to build, a note to show or None).

    INT8 comes only from QDQ models (explicit quantisation, no calibrator). A
    QDQ model is INT8 by construction: opened with the default fp32 it builds
    INT8 and says so; asked for fp16 it refuses rather than guess.
    """
    if requested not in PRECISIONS:
        raise BackendError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    if model_is_qdq:
        if requested == "int8":
            return "int8", None
        if requested == "fp32":
            return "int8", f"{model_name} is an INT8 (QDQ) model: using an INT8 engine (explicit quantisation from its Q/DQ scales)"
        raise BackendError(
            f"{model_name} is an INT8 (QDQ) model, fp16 was asked for; use --precision int8 for it, "
            "or build fp16 from the FP32 model"
        )
    if requested == "int8":
        raise BackendError(
            f"{model_name} has no quantisation (Q/DQ) nodes: INT8 engines are built only from the QDQ models "
            "that `edge-assist calibrate` writes (manifest int8_file); no calibrator is used"
        )
    return requested, None


# --- what the built engine really runs -------------------------------------

_BOOKKEEPING = {"reformat", "noop", "constant", "shuffle", "identity", "shape", "cast"}


def classify_format(text: str) -> str:
    """Map an engine inspector 'Format/Datatype' string to a precision."""
    t = str(text).lower()
    if "int8" in t:
        return "int8"
    if "bf16" in t or "bfloat" in t:
        return "bf16"
    if "fp8" in t:
        return "fp8"
    if "fp16" in t or "half" in t:
        return "fp16"
    if "fp32" in t or "float" in t:
        return "fp32"
    if "int32" in t or "int64" in t or "bool" in t:
        return "int"
    return "unknown"


def layer_precisions(info: str | dict | None) -> Counter | None:
    """Count compute layers by precision from IEngineInspector JSON
    (ProfilingVerbosity.DETAILED). A layer counts as the lowest precision it
    reads or writes (an INT8 convolution that writes FP32 is INT8 work);
    fused subgraphs (Myelin) count as "fused". None when the information is
    not there."""
    if info is None:
        return None
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError:
            return None
    layers = info.get("Layers") if isinstance(info, dict) else None
    if not isinstance(layers, list):
        return None
    order = ["int8", "fp8", "fp16", "bf16", "fp32"]
    counts: Counter = Counter()
    for layer in layers:
        if not isinstance(layer, dict):  # LayerInformationFormat.ONELINE gives strings
            return None
        kind = str(layer.get("LayerType", "")).lower()
        if kind in _BOOKKEEPING:
            continue
        if kind in ("myelin", "foreignnode") or "ForeignNode" in str(layer.get("Name", "")):
            counts["fused"] += 1  # a fused subgraph: its IO types say nothing about the math inside
            continue
        seen = set()
        for t in list(layer.get("Inputs", [])) + list(layer.get("Outputs", [])):
            if isinstance(t, dict):
                # TensorRT 10: "Format/Datatype"; TensorRT 11 splits it into "DataType" and "Format".
                seen.add(classify_format(t.get("DataType") or t.get("Format/Datatype") or t.get("Format", "")))
        found = [p for p in order if p in seen]
        counts[found[0] if found else "other"] += 1
    return counts if counts else None


def check_layer_precisions(precision: str, counts: Counter | None) -> tuple[bool, str]:
    """(acceptable, summary). Refuses an engine with no layer at all in the
    precision that was asked for (TensorRT fell back everywhere)."""
    if counts is None:
        return True, "per-layer precisions not reported by this TensorRT; not checked"
    summary = ", ".join(f"{n} {p}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    if precision in ("fp16", "int8") and counts.get(precision, 0) == 0 and counts.get("fused", 0):
        return True, (
            f"layers: {summary} (the inspector does not show the precision inside fused layers; "
            f"{'the FP16 constraints were enforced by the build' if precision == 'fp16' else 'not fully checked'})"
        )
    if precision in ("fp16", "int8") and counts.get(precision, 0) == 0:
        return False, (
            f"the built engine runs no layer in {precision} ({summary}): TensorRT fell back to higher precision "
            f"everywhere; refusing to cache it as {precision}"
        )
    return True, f"layers: {summary}"


# --- shapes -------------------------------------------------------------

def static_shape(name: str, dims: Sequence[int]) -> tuple[int, ...]:
    """The fixed shape to build for: a dynamic batch (dim 0) becomes 1; any
    other dynamic dimension is refused (buffers are allocated once)."""
    dims = tuple(int(d) for d in dims)
    bad = [i for i, d in enumerate(dims) if d < 0 and i != 0]
    if bad:
        raise BackendError(
            f"input {name!r} has dynamic dimensions {bad} in shape {dims}; the TensorRT backend needs a fixed input "
            "size: re-export the model with fixed height and width"
        )
    return tuple(1 if d < 0 else d for d in dims)


# --- availability ----------------------------------------------------------

def trt_version_problem(version: str) -> str | None:
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        return f"cannot read the TensorRT version {version!r}"
    if major < MIN_TRT_MAJOR:
        return (
            f"TensorRT {version} is too old: this backend needs TensorRT {MIN_TRT_MAJOR} or newer "
            "(JetPack 6.1 or newer on Jetson, a TensorRT 10 wheel on x86); see docs/TENSORRT.md"
        )
    return None


TRT_MISSING_HINT = (
    "on Jetson they come with JetPack (python3-libnvinfer), not from the package index; "
    "on x86 pip install 'edge-assist[gpu]'; see docs/TENSORRT.md"
)
CUDA_MISSING_HINT = "pip install cuda-python (or pycuda) for CUDA memory and streams"


def compose_status(
    *,
    trt_version: str | None,
    trt_error: str | None,
    cuda_kind: str | None,
    cuda_error: str | None,
    gpus: Sequence[str] = (),
) -> BackendStatus:
    """One BackendStatus that names every missing piece, or what will be used."""
    problems = []
    if trt_error:
        problems.append(trt_error)
    elif trt_version is not None:
        old = trt_version_problem(trt_version)
        if old:
            problems.append(old)
    if cuda_error:
        problems.append(cuda_error)
    if problems:
        return BackendStatus("trt", False, "; ".join(problems))
    return BackendStatus(
        "trt", True, f"TensorRT {trt_version}, {cuda_kind}; GPU: {', '.join(gpus) or '?'}",
        tuple(f"cuda:{i}" for i in range(len(gpus))),
    )
