"""The TensorRT engine cache: where engines live, what they are keyed by, and
when a cached engine may be loaded.

Pure Python (no TensorRT, no CUDA) so that all of it is tested on any machine.

An engine is only valid for the exact ONNX model, TensorRT version, GPU and
precision it was built for. Each engine file sits next to a small JSON
sidecar that records those key fields plus the engine's own sha256; nothing
is loaded unless the sidecar matches the key wanted now and the engine bytes
match the sidecar. The sidecar is written last, so an interrupted build leaves
no loadable entry behind.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping

from edge_assist.errors import BackendError

CACHE_FORMAT = 1
# Bump when the way engines are built changes (flags, profiles, precision
# constraints): every cached engine built by an older recipe is then rebuilt.
RECIPE = "1"
ENV_VAR = "EDGE_ASSIST_ENGINE_CACHE"
NO_ENTRY = "no cached engine"

_KEY_LABELS = {
    "model_sha256": "model (sha256)",
    "trt_version": "TensorRT",
    "gpu_name": "GPU",
    "compute_capability": "compute capability",
    "precision": "precision",
    "recipe": "edge-assist build recipe",
}


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. A change in any field means a rebuild."""

    model_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    precision: str  # fp32 | fp16 | int8
    recipe: str = RECIPE

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "EngineKey":
        if not isinstance(d, Mapping):
            raise ValueError("key is not an object")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"key lacks {', '.join(missing)}")
        return cls(**{n: str(d[n]) for n in names})

    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def describe(self) -> str:
        return (
            f"{self.precision}, TensorRT {self.trt_version}, {self.gpu_name} "
            f"(compute {self.compute_capability}), model {self.model_sha256[:12]}"
        )


def key_differences(old: Mapping, new: EngineKey) -> list[str]:
    """Human-readable list of what changed between a stored key and the wanted one."""
    out = []
    for name, label in _KEY_LABELS.items():
        was, now = str(old.get(name, "?")), getattr(new, name)
        if was != now:
            if name == "model_sha256":
                out.append(f"{label} {was[:12]} -> {now[:12]}")
            else:
                out.append(f"{label} {was} -> {now}")
    return out


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Like platformdirs' user cache dir: $XDG_CACHE_HOME/edge-assist/engines,
    else ~/.cache/edge-assist/engines (%LOCALAPPDATA% on Windows)."""
    env = os.environ if env is None else env
    if os.name == "nt" and env.get("LOCALAPPDATA"):
        return Path(env["LOCALAPPDATA"]) / "edge-assist" / "Cache" / "engines"
    xdg = env.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: ignore a relative value
        return Path(xdg) / "edge-assist" / "engines"
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".cache" / "edge-assist" / "engines"


def resolve_cache_dir(cli_value: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Path:
    """--cache-dir, then $EDGE_ASSIST_ENGINE_CACHE, then the user cache dir."""
    env = os.environ if env is None else env
    if cli_value:
        return Path(cli_value).expanduser()
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    return default_cache_dir(env)


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")
    return s or "x"


@dataclass(frozen=True)
class EngineFiles:
    engine: Path
    sidecar: Path


def engine_files(cache_dir: Path, model_path: Path, key: EngineKey) -> EngineFiles:
    stem = f"{_slug(Path(model_path).stem)}.{key.precision}.{key.digest()[:16]}"
    return EngineFiles(Path(cache_dir) / f"{stem}.engine", Path(cache_dir) / f"{stem}.json")


def timing_cache_file(cache_dir: Path, trt_version: str, gpu_name: str, compute_capability: str) -> Path:
    """One timing cache per TensorRT version and GPU, shared by all models."""
    return Path(cache_dir) / f"timing.trt{_slug(trt_version)}.{_slug(gpu_name)}.sm{_slug(compute_capability)}.cache"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CacheDecision:
    load: bool
    reason: str  # why it is loaded, or why it must be (re)built


def read_sidecar(path: Path) -> dict:
    """The parsed sidecar; ValueError with a short reason when it is unusable."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"it is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError("it is not a JSON object")
    if raw.get("format") != CACHE_FORMAT:
        raise ValueError(f"it has format {raw.get('format')!r}, this edge-assist writes format {CACHE_FORMAT}")
    EngineKey.from_dict(raw.get("key"))  # raises ValueError when incomplete
    if not isinstance(raw.get("engine_sha256"), str):
        raise ValueError("it lacks the engine's sha256")
    return raw


def check_cached(files: EngineFiles, key: EngineKey) -> CacheDecision:
    """May the cached engine be loaded for this key? Never says yes to a stale
    or damaged entry; the reason is meant for the user."""
    has_engine, has_sidecar = files.engine.is_file(), files.sidecar.is_file()
    if not has_engine and not has_sidecar:
        return CacheDecision(False, NO_ENTRY)
    if not has_sidecar:
        return CacheDecision(False, f"cached engine {files.engine.name} has no sidecar (an interrupted build?); rebuilding it")
    try:
        side = read_sidecar(files.sidecar)
    except ValueError as exc:
        return CacheDecision(False, f"sidecar {files.sidecar.name} is unusable: {exc}; rebuilding the engine")
    diffs = key_differences(side["key"], key)
    if diffs:
        return CacheDecision(False, f"cached engine {files.engine.name} is stale ({'; '.join(diffs)}); rebuilding it")
    if not has_engine:
        return CacheDecision(False, f"engine file {files.engine.name} is missing next to its sidecar; rebuilding it")
    try:
        data = files.engine.read_bytes()
    except OSError as exc:
        return CacheDecision(False, f"cannot read cached engine {files.engine.name} ({exc.strerror or exc}); rebuilding it")
    if sha256_bytes(data) != side["engine_sha256"]:
        return CacheDecision(False, f"cached engine {files.engine.name} is damaged (its sha256 differs from the sidecar); rebuilding it")
    return CacheDecision(True, f"cached engine {files.engine.name} matches ({key.describe()})")


def explain_miss(cache_dir: Path, model_path: Path, key: EngineKey) -> str | None:
    """When there is no engine for this key, say whether one exists for another
    TensorRT / GPU / model version, and what changed (the 'stale after a
    JetPack upgrade' case)."""
    best = None
    for side_path in sorted(Path(cache_dir).glob("*.json")):
        try:
            side = read_sidecar(side_path)
        except ValueError:
            continue
        if side.get("model_name") != Path(model_path).name or side["key"].get("precision") != key.precision:
            continue
        if best is None or str(side.get("built_at", "")) > str(best.get("built_at", "")):
            best = side
    if best is None:
        return None
    diffs = key_differences(best["key"], key)
    if not diffs:
        return None
    return f"an engine for {Path(model_path).name} exists from an earlier setup, but {'; '.join(diffs)}"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cached engines are not secrets
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def ensure_dir(cache_dir: Path) -> Path:
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(
            f"cannot create the engine cache {cache_dir}: {exc.strerror or exc}; "
            f"choose another with --cache-dir or ${ENV_VAR}"
        ) from exc
    return Path(cache_dir)


def write_entry(files: EngineFiles, key: EngineKey, engine: bytes, *, model_path: Path, info: Mapping | None = None) -> dict:
    """Store an engine and then its sidecar (the commit marker). Returns the sidecar."""
    ensure_dir(files.engine.parent)
    side = {
        "format": CACHE_FORMAT,
        "key": key.to_dict(),
        "engine_file": files.engine.name,
        "engine_sha256": sha256_bytes(engine),
        "engine_bytes": len(engine),
        "model_name": Path(model_path).name,
        "model_path": str(model_path),
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(info or {}),
    }
    try:
        if files.sidecar.exists():  # never leave an old sidecar describing new bytes
            files.sidecar.unlink()
        _atomic_write(files.engine, bytes(engine))
        _atomic_write(files.sidecar, (json.dumps(side, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise BackendError(
            f"cannot write to the engine cache {files.engine.parent}: {exc.strerror or exc}; "
            f"choose another with --cache-dir or ${ENV_VAR}"
        ) from exc
    return side


def discard_entry(files: EngineFiles) -> None:
    for p in (files.sidecar, files.engine):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def list_entries(cache_dir: Path) -> list[dict]:
    """Every sidecar in the cache (unusable ones with an 'error')."""
    out = []
    for side_path in sorted(Path(cache_dir).glob("*.json")):
        try:
            side = read_sidecar(side_path)
        except ValueError as exc:
            out.append({"sidecar": side_path.name, "error": str(exc)})
            continue
        side = dict(side)
        side["sidecar"] = side_path.name
        side["engine_present"] = (side_path.parent / str(side.get("engine_file", ""))).is_file()
        out.append(side)
    return out


def read_timing_cache(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def write_timing_cache(path: Path, data: bytes) -> None:
    ensure_dir(Path(path).parent)
    try:
        _atomic_write(Path(path), bytes(data))
    except OSError as exc:
        raise BackendError(f"cannot write the timing cache {path}: {exc.strerror or exc}") from exc
