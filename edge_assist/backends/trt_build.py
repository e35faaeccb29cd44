"""Building TensorRT engines from the ONNX models, through the keyed cache.

- `ensure_engine` decides: load the cached engine, or (re)build it and say why.
  It takes the build step as a function, so the decisions are tested without
  TensorRT.
- `build_engine` is that step with TensorRT 10: ONNX parser, workspace limit,
  FP16 with precision constraints or INT8 from Q/DQ scales (explicit
  quantisation, no calibrator), a timing cache kept between builds, visible
  progress (IProgressMonitor, plus a heartbeat when TensorRT is quiet), and a
  check of the built engine's layer precisions.
- `EngineBuilder` holds what one process needs for that (TensorRT, CUDA, the
  platform) and is shared by `edge-assist engines build` and the trt backend.

TensorRT and CUDA are imported inside functions only.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edge_assist.backends.trt_cache import (
    NO_ENTRY,
    EngineKey,
    check_cached,
    engine_files,
    ensure_dir,
    explain_miss,
    read_sidecar,
    read_timing_cache,
    resolve_cache_dir,
    timing_cache_file,
    write_entry,
    write_timing_cache,
)
from edge_assist.backends.trt_policy import (
    Platform,
    check_layer_precisions,
    fast_precisions_for_cc,
    layer_precisions,
    onnx_has_qdq,
    precision_refusal,
    resolve_precision,
    static_shape,
)
from edge_assist.errors import BackendError
from edge_assist.manifest import sha256_file

Log = Callable[[str], None]

FIRST_BUILD_NOTE = "this can take minutes the first time; later builds reuse the timing cache"


def default_log(msg: str) -> None:
    print(f"edge-assist: {msg}", file=sys.stderr, flush=True)


def detect_platform(trt_version: str, device) -> Platform:
    """Platform from the TensorRT version and a trt_cuda.DeviceInfo. Fast
    FP16/INT8 come from the compute capability here; the builder's own answer
    (where TensorRT still has it) is checked again before building."""
    fp16, int8 = fast_precisions_for_cc(device.major, device.minor)
    return Platform(
        trt_version=str(trt_version),
        gpu_name=device.name,
        compute_capability=device.compute_capability,
        integrated=bool(device.integrated),
        can_map_host_memory=bool(device.can_map_host_memory),
        fast_fp16=fp16,
        fast_int8=int8,
    )


# --- progress ----------------------------------------------------------------

class Heartbeat:
    """Says 'still building' when nothing else was printed for `every_s`
    seconds, so a long build never looks hung. `beat()` is called by whoever
    waits for the build (see run_build)."""

    def __init__(self, label: str, log: Log, every_s: float = 10.0, clock=time.monotonic):
        self.label, self.log, self.every_s, self.clock = label, log, float(every_s), clock
        self._lock = threading.Lock()
        self._start = self._last = clock()

    def touch(self) -> None:
        with self._lock:
            self._last = self.clock()

    def beat(self) -> bool:
        """Print if quiet for long enough; True when it printed."""
        now = self.clock()
        with self._lock:
            if now - self._last < self.every_s:
                return False
            self._last = now
        self.log(f"{self.label}: still building ({now - self._start:.0f} s so far) ...")
        return True


def run_build(fn: Callable[[], object], heartbeat: Heartbeat, cancel: Callable[[], None], *,
              log: Log = default_log, poll_s: float = 0.5, setup=None, teardown=None):
    """Run fn() (TensorRT's build, which releases the GIL) in a worker thread
    while this thread prints heartbeats. Ctrl-C here calls cancel() (the
    progress monitor then asks TensorRT to stop at its next step), waits for
    the worker and re-raises. setup/teardown run in the worker (pycuda needs
    its CUDA context pushed there)."""
    box: dict = {}

    def work():
        try:
            if setup is not None:
                setup()
            try:
                box["value"] = fn()
            finally:
                if teardown is not None:
                    teardown()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="trt-build", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(poll_s)
            heartbeat.beat()
    except KeyboardInterrupt:
        cancel()
        log(f"{heartbeat.label}: cancelling the build (TensorRT stops at its next step) ...")
        worker.join()
        raise
    if "error" in box:
        raise box["error"]
    return box.get("value")


class ProgressReporter:
    """Turns TensorRT's IProgressMonitor callbacks into a few readable lines
    (phases up to `max_depth`, percentages at most every `min_interval_s`).
    Thread-safe: TensorRT may call it from its own threads. `cancel()` makes
    the next step_complete ask TensorRT to stop."""

    def __init__(self, label: str, log: Log, heartbeat: Heartbeat | None = None,
                 min_interval_s: float = 2.0, max_depth: int = 2, clock=time.monotonic):
        self.label, self.log, self.heartbeat = label, log, heartbeat
        self.min_interval_s, self.max_depth, self.clock = float(min_interval_s), int(max_depth), clock
        self._phases: dict[str, tuple[int, int]] = {}  # name -> (depth, steps)
        self._lock = threading.Lock()
        self._last_print = float("-inf")
        self._cancelled = False

    def _say(self, msg: str) -> None:
        self._last_print = self.clock()
        self.log(f"{self.label}: {msg}")
        if self.heartbeat is not None:
            self.heartbeat.touch()

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            depth = 0 if parent_phase is None else self._phases.get(parent_phase, (0, 0))[0] + 1
            self._phases[phase_name] = (depth, max(1, int(num_steps)))
            if depth < self.max_depth:
                self._say(f"{'  ' * depth}{phase_name} ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            if self._cancelled:
                return False
            depth, steps = self._phases.get(phase_name, (0, 1))
            if depth < self.max_depth and self.clock() - self._last_print >= self.min_interval_s:
                self._say(f"{'  ' * depth}{phase_name}: {min(100, int(100 * (int(step) + 1) / steps))}%")
            return True

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            self._phases.pop(phase_name, None)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True


def _make_progress_monitor(trt, reporter: ProgressReporter):
    """A trt.IProgressMonitor forwarding to `reporter`, or None where this
    TensorRT has none. Callbacks never let an exception reach TensorRT."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self):
            base.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                reporter.phase_start(phase_name, parent_phase, num_steps)
            except Exception:  # noqa: BLE001 - progress output must not break a build
                pass

        def step_complete(self, phase_name, step):
            try:
                return reporter.step_complete(phase_name, step)
            except KeyboardInterrupt:
                return False
            except Exception:  # noqa: BLE001
                return True

        def phase_finish(self, phase_name):
            try:
                reporter.phase_finish(phase_name)
            except Exception:  # noqa: BLE001
                pass

    return _Monitor()


_LOGGER = None
_LOGGER_LOCK = threading.Lock()


def make_logger(trt, log: Log):
    """The process-wide trt.ILogger (TensorRT wants one logger for all its
    builders and runtimes). Forwards warnings and errors to the most recent
    `log` and remembers the last errors for exception messages."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None:
            sev = trt.ILogger.Severity

            class _Logger(trt.ILogger):
                def __init__(self):
                    trt.ILogger.__init__(self)
                    self.errors: list[str] = []
                    self.target: Log = default_log

                def log(self, severity, msg):
                    level = int(severity)
                    if level <= int(sev.ERROR):
                        self.errors = (self.errors + [str(msg)])[-5:]
                    if level <= int(sev.WARNING):
                        name = getattr(severity, "name", str(severity))
                        self.target(f"TensorRT {str(name).lower()}: {msg}")

            _LOGGER = _Logger()
        _LOGGER.target = log
        return _LOGGER


# --- the build step (TensorRT) ----------------------------------------------------

@dataclass
class BuildResult:
    engine: bytes
    layers: Counter | None
    summary: str
    info: dict = field(default_factory=dict)


_FP16_CONSTRAINED = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY")


def build_engine(
    trt,
    model_path: Path,
    precision: str,
    *,
    platform: Platform,
    cache_dir: Path,
    workspace_mb: int = 1024,
    logger=None,
    log: Log = default_log,
    heartbeat_s: float = 10.0,
    cuda_api=None,
) -> BuildResult:
    """Build one serialised engine with TensorRT 10. Raises BackendError with
    a one-line reason when TensorRT cannot do what was asked."""
    name = Path(model_path).name
    logger = logger if logger is not None else make_logger(trt, log)
    builder = trt.Builder(logger)
    # Where this TensorRT still answers, trust the builder over the table.
    fast16 = getattr(builder, "platform_has_fast_fp16", None)
    fast8 = getattr(builder, "platform_has_fast_int8", None)
    checked = dataclasses.replace(
        platform,
        fast_fp16=platform.fast_fp16 if fast16 is None else bool(fast16),
        fast_int8=platform.fast_int8 if fast8 is None else bool(fast8),
    )
    refusal = precision_refusal(precision, checked)
    if refusal:
        raise BackendError(refusal)

    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = errs[0].strip().splitlines()[0] if errs else "unknown error"
        raise BackendError(f"TensorRT cannot parse {name}: {first[:300]}; re-export the model (opset 17/18, fixed input size)")

    qdq_types = {getattr(trt.LayerType, n, None) for n in ("QUANTIZE", "DEQUANTIZE")} - {None}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    has_qdq = any(layer.type in qdq_types for layer in layers)
    if (precision == "int8") != has_qdq:
        raise BackendError(
            f"{name}: TensorRT {'finds no' if precision == 'int8' else 'finds'} Q/DQ layers, which does not fit a "
            f"{precision} build; INT8 engines come only from the QDQ models `edge-assist calibrate` writes"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer precisions for the check below
    flags = trt.BuilderFlag
    if hasattr(flags, "TF32"):
        config.clear_flag(flags.TF32)  # fp32 means fp32 (and Q/DQ-free layers of INT8 engines stay fp32)
    if precision == "fp16":
        if not hasattr(flags, "FP16"):  # precision_refusal catches TensorRT 11 first; belt and braces
            raise BackendError(f"TensorRT {platform.trt_version} has no FP16 builder flag; use --precision fp32 or int8")
        config.set_flag(flags.FP16)
        # Compute-heavy layers must run FP16; TensorRT fails the build rather
        # than quietly picking FP32 kernels for them.
        wanted = {getattr(trt.LayerType, n, None) for n in _FP16_CONSTRAINED} - {None}
        for layer in layers:
            if layer.type in wanted:
                layer.precision = trt.float16
        config.set_flag(flags.OBEY_PRECISION_CONSTRAINTS)
    elif precision == "int8" and hasattr(flags, "INT8"):
        # Explicit quantisation: the scales are the Q/DQ nodes; no calibrator.
        # TensorRT 10 wants the INT8 flag for them; TensorRT 11 (strongly
        # typed only) has no such flag and follows the Q/DQ nodes by itself.
        config.set_flag(flags.INT8)

    needs_profile = False
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        dims = tuple(int(d) for d in inp.shape)
        if any(d < 0 for d in dims):
            shape = static_shape(inp.name, dims)
            profile.set_shape(inp.name, shape, shape, shape)
            needs_profile = True
    if needs_profile:
        config.add_optimization_profile(profile)

    tc_path = timing_cache_file(cache_dir, platform.trt_version, platform.gpu_name, platform.compute_capability)
    tc_bytes = read_timing_cache(tc_path)
    try:
        cache = config.create_timing_cache(tc_bytes)
        attached = cache is not None and bool(config.set_timing_cache(cache, False))
    except Exception:  # noqa: BLE001 - a damaged timing cache only costs time
        attached = False
    if not attached:
        if tc_bytes:
            log(f"timing cache {tc_path.name} does not fit this TensorRT/GPU; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    elif tc_bytes:
        log(f"reusing timing cache {tc_path.name}")

    label = f"{name} ({precision})"
    heartbeat = Heartbeat(label, log, every_s=heartbeat_s)
    reporter = ProgressReporter(label, log, heartbeat)
    monitor = _make_progress_monitor(trt, reporter)
    if monitor is not None and hasattr(config, "progress_monitor"):
        config.progress_monitor = monitor
    plan = run_build(
        lambda: builder.build_serialized_network(network, config), heartbeat, reporter.cancel, log=log,
        setup=cuda_api.enter if cuda_api is not None else None,
        teardown=cuda_api.exit if cuda_api is not None else None,
    )
    if plan is None:
        last = "; ".join(getattr(logger, "errors", [])[-2:]) or "see the TensorRT messages above"
        hint = " (no FP16 kernel for some layer: try --precision fp32)" if precision == "fp16" else ""
        raise BackendError(f"TensorRT could not build {name} as {precision}: {last[:400]}{hint}")
    engine = bytes(memoryview(plan))

    try:
        write_timing_cache(tc_path, bytes(memoryview(config.get_timing_cache().serialize())))
    except BackendError as exc:
        log(f"{exc} (the engine itself is fine)")
    del config  # before the progress monitor it points to

    counts = inspect_layers(trt, logger, engine)
    ok, summary = check_layer_precisions(precision, counts)
    if not ok:
        raise BackendError(f"{name}: {summary}")
    info = {
        "workspace_mb": int(workspace_mb),
        "layer_precisions": dict(counts) if counts else None,
        "fast_fp16": checked.fast_fp16,
        "fast_int8": checked.fast_int8,
    }
    return BuildResult(engine, counts, summary, info)


def inspect_layers(trt, logger, engine_bytes: bytes) -> Counter | None:
    """Per-layer precisions of a serialised engine (None where not reported)."""
    if not hasattr(trt, "LayerInformationFormat"):
        return None
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise BackendError("TensorRT cannot load the engine it has just built; see the TensorRT messages above")
    try:
        inspector = engine.create_engine_inspector()
        return layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    finally:
        del engine, runtime


# --- the cache decision ----------------------------------------------------------

@dataclass
class EngineRecord:
    model_path: Path
    precision: str
    key: EngineKey
    engine_path: Path
    sidecar_path: Path
    built: bool
    seconds: float
    message: str
    sidecar: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "model": self.model_path.name,
            "precision": self.precision,
            "built": self.built,
            "build_seconds": round(self.seconds, 2) if self.built else None,
            "engine": str(self.engine_path),
            "message": self.message,
            "layer_precisions": self.sidecar.get("layer_precisions"),
            "key": self.key.to_dict(),
        }


BuildFn = Callable[[Path, str], BuildResult]


def ensure_engine(
    model_path: str | Path,
    requested: str,
    *,
    platform: Platform,
    cache_dir: Path,
    build: BuildFn,
    force: bool = False,
    rebuild_reason: str | None = None,
    log: Log = default_log,
) -> EngineRecord:
    """The engine for this model, precision and platform: from the cache when
    its sidecar matches, else built now (with a message saying why)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise BackendError(f"model file {model_path} does not exist; run `make models` or `edge-assist export`")
    precision, note = resolve_precision(requested, onnx_has_qdq(model_path), model_path.name)
    if note:
        log(note)
    refusal = precision_refusal(precision, platform)
    if refusal:
        raise BackendError(refusal)
    key = EngineKey(
        model_sha256=sha256_file(model_path),
        trt_version=platform.trt_version,
        gpu_name=platform.gpu_name,
        compute_capability=platform.compute_capability,
        precision=precision,
    )
    files = engine_files(cache_dir, model_path, key)
    if force:
        reason = rebuild_reason or "rebuild asked for (--force)"
    else:
        decision = check_cached(files, key)
        if decision.load:
            return EngineRecord(model_path, precision, key, files.engine, files.sidecar, False, 0.0,
                                decision.reason, read_sidecar(files.sidecar))
        reason = decision.reason
        if reason == NO_ENTRY:
            why = explain_miss(cache_dir, model_path, key) if Path(cache_dir).is_dir() else None
            reason = f"no cached engine for {key.describe()}" + (f" ({why})" if why else "")
    log(f"{model_path.name}: {reason}")
    ensure_dir(Path(cache_dir))
    log(f"{model_path.name}: building its {precision} TensorRT engine; {FIRST_BUILD_NOTE} ...")
    t0 = time.perf_counter_ns()
    result = build(model_path, precision)
    seconds = (time.perf_counter_ns() - t0) / 1e9
    info = dict(result.info)
    info["build_seconds"] = round(seconds, 2)
    side = write_entry(files, key, result.engine, model_path=model_path, info=info)
    msg = f"built in {seconds:.1f} s ({result.summary}); cached as {files.engine}"
    log(f"{model_path.name}: {msg}")
    return EngineRecord(model_path, precision, key, files.engine, files.sidecar, True, seconds, msg, side)


def load_or_rebuild(ensure: Callable[..., EngineRecord], deserialize: Callable[[bytes], object], log: Log = default_log):
    """(engine, record): deserialize the cached engine; if TensorRT cannot read
    it, rebuild once (with a message) instead of failing or loading garbage."""
    record = ensure(force=False)
    engine = deserialize(record.engine_path.read_bytes())
    if engine is not None:
        return engine, record
    reason = f"cached engine {record.engine_path.name} cannot be loaded by this TensorRT; rebuilding it"
    record = ensure(force=True, rebuild_reason=reason)
    engine = deserialize(record.engine_path.read_bytes())
    if engine is None:
        raise BackendError(
            f"TensorRT cannot load the engine it has just built for {record.model_path.name}; "
            "see the TensorRT messages above"
        )
    return engine, record


# --- one process's build context ------------------------------------------------

class EngineBuilder:
    """TensorRT, CUDA and the platform, opened once; `ensure()` per model.
    Used by `edge-assist engines build` and by the trt backend."""

    def __init__(self, cache_dir=None, *, workspace_mb: int = 1024, log: Log | None = None, device: int = 0):
        import tensorrt as trt

        from edge_assist.backends.trt_cuda import load_api

        if int(workspace_mb) < 16:
            raise BackendError(f"--workspace-mb must be at least 16, got {workspace_mb}")
        self.trt = trt
        self.log = log or default_log
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.workspace_mb = int(workspace_mb)
        self.api = load_api()
        self.api.enter()
        try:
            self.api.set_device(device)
            self.device = self.api.device_info(device)
        finally:
            self.api.exit()
        self.platform = detect_platform(trt.__version__, self.device)
        self.logger = make_logger(trt, self.log)

    def refusal(self, precision: str) -> str | None:
        return precision_refusal(precision, self.platform)

    def _build(self, model_path: Path, precision: str) -> BuildResult:
        return build_engine(
            self.trt, model_path, precision, platform=self.platform, cache_dir=self.cache_dir,
            workspace_mb=self.workspace_mb, logger=self.logger, log=self.log, cuda_api=self.api,
        )

    def ensure(self, model_path, precision: str, *, force: bool = False, rebuild_reason: str | None = None) -> EngineRecord:
        self.api.enter()
        try:
            return ensure_engine(
                model_path, precision, platform=self.platform, cache_dir=self.cache_dir, build=self._build,
                force=force, rebuild_reason=rebuild_reason, log=self.log,
            )
        finally:
            self.api.exit()
