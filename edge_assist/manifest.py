"""engines/manifest.json: what each model file is and how to use it.

A model never travels without its metadata: input shape, preprocessing,
labels, how to decode outputs, version, metrics and a content hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_assist.errors import ManifestError

HEAD_NAMES = ("quality", "guidance", "interpreter")
# Optional: the lesion head's second look at source resolution (edge_assist.lesion_crop), which
# takes its own square crop, not the preprocessed frame; the move check (edge_assist.move_check),
# which takes two preprocessed frames, before and after a move.
OPTIONAL_HEADS = ("lesion", "move_check")
FORMAT = 1

# The outputs each head must name (role -> ONNX output name is in the manifest).
REQUIRED_OUTPUTS = {
    "quality": ("score", "reasons"),
    "guidance": ("logits",),
    "interpreter": ("structures", "lesion", "size", "echogenicity", "margins", "location"),
    "lesion": ("echogenicity", "margins", "mask"),
    "move_check": ("better",),
}


def default_engines_dir() -> Path:
    """engines/ next to the package (a source checkout), else the CWD's."""
    here = Path(__file__).resolve().parent.parent / "engines"
    return here if here.is_dir() else Path("engines")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class HeadSpec:
    name: str
    path: Path
    int8_path: Path | None
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    frames: int  # how many consecutive preprocessed frames the input stacks
    outputs: dict[str, str]
    labels: dict[str, list[str]]
    decode: dict[str, Any]
    version: str
    sha256: str | None
    int8_sha256: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    # Guidance with memory (edge_assist.guidance_memory): the name of the
    # previous-move input and the live reference interval; None without.
    action_input: str | None = None
    memory_interval_ms: float | None = None

    def model_path(self, precision: str = "fp32") -> Path:
        if precision == "int8":
            if self.int8_path is None:
                raise ManifestError(f"{self.name}: no INT8 model in the manifest; run `edge-assist calibrate` or use fp32")
            return self.int8_path
        return self.path


@dataclass
class Manifest:
    root: Path
    preprocess: dict[str, Any]
    heads: dict[str, HeadSpec]
    raw: dict[str, Any]

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.preprocess["size"]
        return int(h), int(w)


def _need(obj: dict, key: str, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise ManifestError(f"manifest {where} lacks {key!r}; regenerate it with `edge-assist export`")
    return obj[key]


def load_manifest(engines_dir: str | Path | None = None, *, verify_hash: bool = True) -> Manifest:
    root = Path(engines_dir) if engines_dir is not None else default_engines_dir()
    path = root / "manifest.json"
    if not root.is_dir() or not path.is_file():
        raise ManifestError(
            f"no trained models: {path} is missing; run `make models` (or `edge-assist export`) to create them"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); regenerate it with `edge-assist export`") from exc
    if raw.get("format") != FORMAT:
        raise ManifestError(f"{path} has format {raw.get('format')!r}, this edge-assist reads format {FORMAT}; re-export the models")
    pre = _need(raw, "preprocess", "top level")
    size = _need(pre, "size", "preprocess")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ManifestError(f"{path}: preprocess.size must be [height, width], got {size!r}")
    heads_raw = _need(raw, "heads", "top level")
    heads = {}
    for name in HEAD_NAMES + tuple(n for n in OPTIONAL_HEADS if n in heads_raw):
        h = _need(heads_raw, name, "heads")
        where = f"heads.{name}"
        inp = _need(h, "input", where)
        outputs = _need(h, "outputs", where)
        for role in REQUIRED_OUTPUTS[name]:
            _need(outputs, role, f"{where}.outputs")
        file = root / _need(h, "file", where)
        if not file.is_file():
            raise ManifestError(f"{where}: model file {file} is missing; run `make models` or restore engines/")
        int8 = h.get("int8_file")
        int8_path = root / int8 if int8 else None
        if int8_path is not None and not int8_path.is_file():
            raise ManifestError(f"{where}: INT8 model {int8_path} is missing; run `edge-assist calibrate` or drop int8_file")
        spec = HeadSpec(
            name=name,
            path=file,
            int8_path=int8_path,
            input_name=_need(inp, "name", f"{where}.input"),
            input_shape=tuple(int(d) for d in _need(inp, "shape", f"{where}.input")),
            input_dtype=inp.get("dtype", "float32"),
            frames=int(inp.get("frames", 1)),
            outputs=dict(outputs),
            labels={k: list(v) for k, v in h.get("labels", {}).items()},
            decode=dict(h.get("decode", {})),
            version=str(h.get("version", "0")),
            sha256=h.get("sha256"),
            int8_sha256=h.get("int8_sha256"),
            metrics=dict(h.get("metrics", {})),
        )
        mem = h.get("memory")
        if mem is not None:
            if name != "guidance" or not isinstance(mem, dict) or spec.frames != 2:
                raise ManifestError(f"{where}.memory: only a guidance head with two frames may have memory; re-export it")
            spec.action_input = str(_need(mem, "action_input", f"{where}.memory"))
            try:
                spec.memory_interval_ms = float(mem.get("interval_ms", 400.0))
            except (TypeError, ValueError):
                raise ManifestError(f"{where}.memory.interval_ms must be a number of milliseconds") from None
            if not spec.memory_interval_ms > 0:
                raise ManifestError(f"{where}.memory.interval_ms must be > 0")
        if name == "move_check":
            if spec.input_shape != (1, 2, *size):
                raise ManifestError(f"{where}: input shape {spec.input_shape} must be [1, 2, {size[0]}, {size[1]}] (two frames); re-export it")
        elif name in OPTIONAL_HEADS:
            if len(spec.input_shape) != 4 or spec.input_shape[-1] != spec.input_shape[-2] or spec.input_shape[1] != 1:
                raise ManifestError(f"{where}: input shape {spec.input_shape} must be [1, 1, N, N] (a square crop); re-export it")
        elif spec.input_shape[-2:] != tuple(size):
            raise ManifestError(f"{where}: input shape {spec.input_shape} does not match preprocess.size {size}")
        if verify_hash:
            for p, digest in ((spec.path, spec.sha256), (spec.int8_path, spec.int8_sha256)):
                if p is not None and digest and sha256_file(p) != digest:
                    raise ManifestError(f"{p.name} does not match its manifest entry (sha256 differs); re-run `edge-assist export` or restore the file")
        heads[name] = spec
    return Manifest(root=root, preprocess=dict(pre), heads=heads, raw=raw)
