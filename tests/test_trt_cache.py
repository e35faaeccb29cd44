"""The TensorRT engine cache and build decisions, without TensorRT or a GPU."""

import dataclasses
import json

import pytest

from edge_assist.backends.trt_build import BuildResult, EngineRecord, ensure_engine, load_or_rebuild
from edge_assist.backends.trt_cache import (
    ENV_VAR,
    NO_ENTRY,
    EngineKey,
    check_cached,
    default_cache_dir,
    engine_files,
    explain_miss,
    list_entries,
    read_sidecar,
    resolve_cache_dir,
    timing_cache_file,
    write_entry,
)
from edge_assist.backends.trt_policy import Platform
from edge_assist.errors import BackendError

KEY = EngineKey("a" * 64, "10.3.0", "Orin", "8.7", "fp16")
ORIN = Platform("10.3.0", "Orin", "8.7", integrated=True, can_map_host_memory=True)


# --- keys -----------------------------------------------------------------

@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "b" * 64},
        {"trt_version": "10.4.0"},
        {"gpu_name": "NVIDIA GeForce RTX 4090"},
        {"compute_capability": "8.9"},
        {"precision": "int8"},
        {"recipe": "2"},
    ],
)
def test_every_key_field_changes_the_key_and_the_file(change, tmp_path):
    other = dataclasses.replace(KEY, **change)
    assert other.digest() != KEY.digest()
    model = tmp_path / "quality.onnx"
    assert engine_files(tmp_path, model, other).engine != engine_files(tmp_path, model, KEY).engine


def test_key_is_stable_and_round_trips():
    assert EngineKey(**KEY.to_dict()).digest() == KEY.digest()
    assert EngineKey.from_dict(json.loads(json.dumps(KEY.to_dict()))) == KEY
    with pytest.raises(ValueError, match="lacks"):
        EngineKey.from_dict({"model_sha256": "x"})


def test_engine_file_names(tmp_path):
    files = engine_files(tmp_path, tmp_path / "quality int8.onnx", KEY)
    assert files.engine.parent == tmp_path
    assert files.engine.name.startswith("quality-int8.fp16.") and files.engine.suffix == ".engine"
    assert files.sidecar.with_suffix(".engine") == files.engine
    tc = timing_cache_file(tmp_path, "10.3.0", "NVIDIA GeForce RTX 4090", "8.9")
    assert tc.name == "timing.trt10.3.0.NVIDIA-GeForce-RTX-4090.sm8.9.cache"


# --- where the cache lives ------------------------------------------------------------

def test_cache_dir_precedence(tmp_path):
    env = {"HOME": "/home/u", "XDG_CACHE_HOME": "/xdg", ENV_VAR: "/from/env"}
    assert resolve_cache_dir("/from/cli", env).as_posix() == "/from/cli"
    assert resolve_cache_dir(tmp_path / "c", env) == tmp_path / "c"
    assert resolve_cache_dir(None, env).as_posix() == "/from/env"
    del env[ENV_VAR]
    assert resolve_cache_dir(None, env).as_posix() == "/xdg/edge-assist/engines"
    del env["XDG_CACHE_HOME"]
    assert resolve_cache_dir(None, env).as_posix() == "/home/u/.cache/edge-assist/engines"
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    assert default_cache_dir({"HOME": "/home/u", "XDG_CACHE_HOME": "rel"}).as_posix() == "/home/u/.cache/edge-assist/engines"


def test_default_cache_is_outside_the_repository():
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    assert repo not in default_cache_dir({"HOME": "/home/u"}).parents


# --- may a cached engine be loaded? ------------------------------------------------------

def _entry(tmp_path, key=KEY, engine=b"ENGINE-BYTES"):
    model = tmp_path / "quality.onnx"
    files = engine_files(tmp_path / "cache", model, key)
    write_entry(files, key, engine, model_path=model, info={"build_seconds": 1.0})
    return files


def test_a_matching_entry_is_loaded(tmp_path):
    files = _entry(tmp_path)
    d = check_cached(files, KEY)
    assert d.load and "matches" in d.reason
    side = read_sidecar(files.sidecar)
    assert side["key"] == KEY.to_dict() and side["model_name"] == "quality.onnx"
    assert not [p for p in files.engine.parent.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave nothing


def test_no_entry(tmp_path):
    files = engine_files(tmp_path, tmp_path / "quality.onnx", KEY)
    d = check_cached(files, KEY)
    assert not d.load and d.reason == NO_ENTRY


def test_engine_without_sidecar_is_rebuilt(tmp_path):
    files = _entry(tmp_path)
    files.sidecar.unlink()
    d = check_cached(files, KEY)
    assert not d.load and "no sidecar" in d.reason


@pytest.mark.parametrize(
    "content, why",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"format": 99}', "format 99"),
        ('{"format": 1, "key": {"precision": "fp16"}}', "lacks"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
    ],
)
def test_an_unreadable_sidecar_means_rebuild(tmp_path, content, why):
    files = _entry(tmp_path)
    if isinstance(content, bytes):
        files.sidecar.write_bytes(content)
    else:
        files.sidecar.write_text(content)
    d = check_cached(files, KEY)
    assert not d.load
    assert "unusable" in d.reason and why in d.reason and "rebuilding" in d.reason


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("trt_version", "8.6.2", "TensorRT 8.6.2 -> 10.3.0"),
        ("gpu_name", "Xavier", "GPU Xavier -> Orin"),
        ("compute_capability", "7.2", "compute capability 7.2 -> 8.7"),
        ("precision", "fp32", "precision fp32 -> fp16"),
        ("model_sha256", "c" * 64, "model (sha256) cccccccccccc -> aaaaaaaaaaaa"),
    ],
)
def test_a_stale_sidecar_is_never_loaded(tmp_path, field, value, words):
    # A sidecar whose key differs from the one wanted (e.g. written by hand or
    # by an older edge-assist under the same name): stale, with what changed.
    files = _entry(tmp_path)
    side = json.loads(files.sidecar.read_text())
    side["key"][field] = value
    files.sidecar.write_text(json.dumps(side))
    d = check_cached(files, KEY)
    assert not d.load and "stale" in d.reason and words in d.reason


def test_a_damaged_engine_is_never_loaded(tmp_path):
    files = _entry(tmp_path)
    files.engine.write_bytes(b"ENGINE-BYTES-truncated"[:8])
    d = check_cached(files, KEY)
    assert not d.load and "damaged" in d.reason


def test_sidecar_without_engine(tmp_path):
    files = _entry(tmp_path)
    files.engine.unlink()
    d = check_cached(files, KEY)
    assert not d.load and "missing" in d.reason


def test_explain_miss_after_a_tensorrt_upgrade(tmp_path):
    old = dataclasses.replace(KEY, trt_version="8.6.2")
    _entry(tmp_path, old)
    msg = explain_miss(tmp_path / "cache", tmp_path / "quality.onnx", KEY)
    assert msg and "earlier setup" in msg and "TensorRT 8.6.2 -> 10.3.0" in msg
    assert explain_miss(tmp_path / "cache", tmp_path / "other.onnx", KEY) is None


def test_write_entry_refuses_an_unusable_cache_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    files = engine_files(blocker / "cache", tmp_path / "quality.onnx", KEY)
    with pytest.raises(BackendError, match="cannot create the engine cache .*--cache-dir"):
        write_entry(files, KEY, b"x", model_path=tmp_path / "quality.onnx")


def test_list_entries(tmp_path):
    files = _entry(tmp_path)
    (files.engine.parent / "broken.json").write_text("{")
    entries = list_entries(files.engine.parent)
    ok = [e for e in entries if "error" not in e]
    bad = [e for e in entries if "error" in e]
    assert len(ok) == 1 and ok[0]["engine_present"] and ok[0]["key"]["precision"] == "fp16"
    assert len(bad) == 1 and bad[0]["sidecar"] == "broken.json"


# --- ensure_engine: the whole decision, with a fake build step ------------------------------

class FakeBuild:
    def __init__(self):
        self.calls = []

    def __call__(self, model_path, precision):
        self.calls.append((model_path.name, precision))
        return BuildResult(f"engine:{model_path.name}:{precision}:{len(self.calls)}".encode(), None, "layers: 3 fp16",
                           {"layer_precisions": {"fp16": 3}})


@pytest.fixture
def model(tiny_engines):
    return tiny_engines / "quality.onnx"


def _ensure(model, cache, build, logs, precision="fp16", platform=ORIN, **kw) -> EngineRecord:
    return ensure_engine(model, precision, platform=platform, cache_dir=cache, build=build, log=logs.append, **kw)


def test_first_open_builds_visibly_then_the_cache_is_used(model, tmp_path):
    build, logs, cache = FakeBuild(), [], tmp_path / "cache"
    rec = _ensure(model, cache, build, logs)
    assert rec.built and rec.precision == "fp16" and rec.engine_path.is_file()
    text = "\n".join(logs)
    assert "no cached engine for fp16, TensorRT 10.3.0, Orin" in text
    assert "can take minutes the first time" in text and "built in" in text
    assert rec.sidecar["layer_precisions"] == {"fp16": 3} and "build_seconds" in rec.sidecar

    logs.clear()
    again = _ensure(model, cache, build, logs)
    assert not again.built and again.engine_path == rec.engine_path and len(build.calls) == 1
    assert logs == []  # a cache hit is quiet


def test_a_tensorrt_upgrade_rebuilds_and_says_why(model, tmp_path):
    build, logs, cache = FakeBuild(), [], tmp_path / "cache"
    first = _ensure(model, cache, build, logs, platform=dataclasses.replace(ORIN, trt_version="8.6.2"))
    logs.clear()
    rec = _ensure(model, cache, build, logs)
    assert rec.built and rec.engine_path != first.engine_path and len(build.calls) == 2
    assert any("earlier setup" in m and "TensorRT 8.6.2 -> 10.3.0" in m for m in logs)


@pytest.mark.parametrize("change", [{"gpu_name": "NVIDIA RTX A2000"}, {"compute_capability": "8.6"}])
def test_another_gpu_rebuilds(model, tmp_path, change):
    build, logs, cache = FakeBuild(), [], tmp_path / "cache"
    _ensure(model, cache, build, logs)
    rec = _ensure(model, cache, build, logs, platform=dataclasses.replace(ORIN, **change))
    assert rec.built and len(build.calls) == 2


def test_a_changed_model_rebuilds(model, tmp_path):
    build, logs, cache = FakeBuild(), [], tmp_path / "cache"
    _ensure(model, cache, build, logs)
    model.write_bytes(model.read_bytes() + b"\n")  # still the same name, different sha256
    logs.clear()
    rec = _ensure(model, cache, build, logs)
    assert rec.built and len(build.calls) == 2
    assert any("model (sha256)" in m for m in logs)


def test_corrupted_cache_entries_rebuild_with_a_message(model, tmp_path):
    build, logs, cache = FakeBuild(), [], tmp_path / "cache"
    rec = _ensure(model, cache, build, logs)
    rec.engine_path.write_bytes(b"\x00" * 10)
    logs.clear()
    rec2 = _ensure(model, cache, build, logs)
    assert rec2.built and any("damaged" in m for m in logs)

    rec2.sidecar_path.write_text("{ half a sidecar")
    logs.clear()
    rec3 = _ensure(model, cache, build, logs)
    assert rec3.built and any("unusable" in m for m in logs) and len(build.calls) == 3
    assert check_cached(engine_files(cache, model, rec3.key), rec3.key).load


def test_force_rebuilds(model, tmp_path):
    build, logs, cache = FakeBuild(), [], tmp_path / "cache"
    _ensure(model, cache, build, logs)
    logs.clear()
    rec = _ensure(model, cache, build, logs, force=True)
    assert rec.built and len(build.calls) == 2 and any("--force" in m for m in logs)


def test_precision_refusal_builds_nothing(model, tmp_path):
    build, logs = FakeBuild(), []
    no_fp16 = dataclasses.replace(ORIN, gpu_name="Quadro P2000", compute_capability="6.1", fast_fp16=False)
    with pytest.raises(BackendError, match="no fast FP16.*nothing was built"):
        _ensure(model, tmp_path / "cache", build, logs, platform=no_fp16)
    assert build.calls == [] and not (tmp_path / "cache").exists()


def test_int8_needs_a_qdq_model(model, tmp_path):
    build = FakeBuild()
    with pytest.raises(BackendError, match="no quantisation .* `edge-assist calibrate`"):
        _ensure(model, tmp_path / "cache", build, [], precision="int8")
    assert build.calls == []


def test_missing_model(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        _ensure(tmp_path / "none.onnx", tmp_path / "cache", FakeBuild(), [])


# --- an engine TensorRT cannot deserialise is rebuilt, never used ----------------------------

def test_load_or_rebuild(model, tmp_path):
    build, logs, cache = FakeBuild(), [], tmp_path / "cache"

    def ensure(force=False, rebuild_reason=None):
        return _ensure(model, cache, build, logs, force=force, rebuild_reason=rebuild_reason)

    ensure()  # a cached engine that this "TensorRT" will not read
    answers = iter([None, "ENGINE"])
    engine, rec = load_or_rebuild(ensure, lambda data: next(answers), logs.append)
    assert engine == "ENGINE" and rec.built and len(build.calls) == 2
    assert any("cannot be loaded by this TensorRT; rebuilding" in m for m in logs)

    with pytest.raises(BackendError, match="cannot load the engine it has just built"):
        load_or_rebuild(ensure, lambda data: None, logs.append)
