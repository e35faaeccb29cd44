"""TensorRT backend: one ONNX model -> a cached engine -> CUDA-stream inference.

- `status()` says exactly why the backend cannot run here (TensorRT bindings
  missing or too old, cuda-python/pycuda missing, no CUDA driver or GPU).
- `TrtBackend(model_path, ...)` finds the engine for this model, TensorRT,
  GPU and precision in the engine cache, or builds it (visibly); allocates
  page-locked host and device buffers once (zero-copy mapped host memory on
  integrated GPUs such as Jetson); runs H2D copy, execute_async_v3 and D2H
  copy on its own CUDA stream, optionally replayed as one CUDA graph; warms up
  before returning; frees everything in close().

Nothing here imports TensorRT or CUDA at import time.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_assist.backends.base import BackendStatus, InferenceBackend, TensorSpec, check_feed
from edge_assist.backends.trt_policy import TRT_MISSING_HINT, compose_status, static_shape
from edge_assist.errors import BackendError

_STATUS: BackendStatus | None = None
_STATUS_LOCK = threading.Lock()


def _probe() -> BackendStatus:
    from edge_assist.backends.trt_cuda import probe

    trt_version = trt_error = None
    try:
        import tensorrt

        trt_version = str(getattr(tensorrt, "__version__", "?"))
    except ImportError as exc:
        trt_error = f"TensorRT Python bindings are not installed ({exc}); {TRT_MISSING_HINT}"
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything (OSError for a missing libnvinfer)
        trt_error = f"the TensorRT Python bindings fail to import ({type(exc).__name__}: {exc}); {TRT_MISSING_HINT}"
    kind, cuda_error, devices = probe()
    return compose_status(
        trt_version=trt_version, trt_error=trt_error, cuda_kind=kind, cuda_error=cuda_error,
        gpus=[d.describe() for d in devices],
    )


def status(refresh: bool = False) -> BackendStatus:
    """Why the trt backend is (not) usable here. Probed once per process
    (importing TensorRT takes a while); refresh=True probes again."""
    global _STATUS
    with _STATUS_LOCK:
        if _STATUS is None or refresh:
            _STATUS = _probe()
        return _STATUS


@dataclass
class _Binding:
    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int
    host_ptr: int
    dev_ptr: int
    array: np.ndarray  # a view of the page-locked host buffer
    mapped: bool  # zero-copy: host_ptr is mapped into the GPU (no memcpy)


class TrtBackend(InferenceBackend):
    """One ONNX model run through a TensorRT engine. A context manager."""

    name = "trt"

    def __init__(
        self,
        model_path: str | Path,
        *,
        precision: str = "fp32",
        cache_dir: str | Path | None = None,
        workspace_mb: int = 1024,
        cuda_graph: bool = False,
        warmup: int = 3,
        zero_copy: bool | None = None,
        force_build: bool = False,
        log=None,
        threads: int | None = None,  # noqa: ARG002 - ORT option, ignored here
        device: str | None = None,  # noqa: ARG002 - ORT option, ignored here
        **_,
    ):
        # Everything close() touches exists before anything can fail.
        self._closed = False
        self._lock = threading.Lock()
        self._bindings: list[_Binding] = []
        self._stream = None
        self._graph = self._graph_exec = None
        self._context = self._engine = self._runtime = None
        self._pending = False
        self._api = None
        self.cuda_graph = False
        path = Path(model_path)
        self._model_name = path.name
        if not path.is_file():
            raise BackendError(f"model file {path} does not exist; run `make models` or `edge-assist export`")
        st = status()
        if not st.available:
            raise BackendError(f"backend 'trt' is unavailable here: {st.reason}")

        from edge_assist.backends.trt_build import EngineBuilder, default_log, load_or_rebuild

        self._log = log or default_log
        builder = EngineBuilder(cache_dir, workspace_mb=workspace_mb, log=self._log)
        self._api = builder.api
        self._trt = trt = builder.trt
        self.platform = builder.platform
        self._api.enter()
        try:
            self._runtime = trt.Runtime(builder.logger)
            ensure = functools.partial(builder.ensure, path, precision)
            self._engine, record = load_or_rebuild(
                lambda force=False, rebuild_reason=None: ensure(force=force or force_build, rebuild_reason=rebuild_reason),
                self._runtime.deserialize_cuda_engine,
                self._log,
            )
            self.precision = record.precision
            self.engine_path = record.engine_path
            self.built = record.built
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise BackendError(f"{path.name}: TensorRT cannot create an execution context (out of GPU memory?)")
            if zero_copy is None:
                zero_copy = self.platform.integrated and self.platform.can_map_host_memory
            self.zero_copy = bool(zero_copy)
            self._stream = self._api.stream_create()
            self._allocate()
            for _ in range(max(0, int(warmup))):
                self._enqueue()
                self._api.stream_sync(self._stream)
            if cuda_graph:
                if int(warmup) <= 0:  # TensorRT wants one plain run before capture
                    self._enqueue()
                    self._api.stream_sync(self._stream)
                self._capture_graph()
                if self.cuda_graph:
                    for _ in range(max(1, int(warmup))):
                        self._api.graph_launch(self._graph_exec, self._stream)
                        self._api.stream_sync(self._stream)
        except BaseException:
            self._api.exit()
            self.close()
            raise
        self._api.exit()

    # -- set-up
    def _allocate(self) -> None:
        trt, engine, ctx, api = self._trt, self._engine, self._context, self._api
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        modes = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        for n in names:  # inputs first: output shapes follow from them
            if modes[n]:
                dims = tuple(int(d) for d in engine.get_tensor_shape(n))
                if any(d < 0 for d in dims):
                    ctx.set_input_shape(n, static_shape(n, dims))
        for n in sorted(names, key=lambda x: not modes[x]):
            shape = tuple(int(d) for d in ctx.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise BackendError(f"{self._model_name}: tensor {n!r} has unresolved shape {shape}")
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            count = int(np.prod(shape)) if shape else 1
            nbytes = max(1, count * dtype.itemsize)
            if self.zero_copy:
                host = api.host_alloc_mapped(nbytes)
                try:
                    dev = api.host_device_pointer(host)
                except BaseException:
                    api.free_host(host)
                    raise
            else:
                host = api.malloc_host(nbytes)
                try:
                    dev = api.malloc(nbytes)
                except BaseException:
                    api.free_host(host)
                    raise
            raw = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(host))
            array = raw[: count * dtype.itemsize].view(dtype).reshape(shape)
            self._bindings.append(_Binding(n, modes[n], shape, dtype, nbytes, host, dev, array, self.zero_copy))
            if not ctx.set_tensor_address(n, dev):
                raise BackendError(f"{self._model_name}: TensorRT refused the buffer address for {n!r}")
        self.inputs = [TensorSpec(b.name, b.shape, b.dtype) for b in self._bindings if b.is_input]
        self.outputs = [TensorSpec(b.name, b.shape, b.dtype) for b in self._bindings if not b.is_input]

    def _enqueue(self) -> None:
        """H2D copies, execute, D2H copies: all queued on this backend's stream."""
        api, s = self._api, self._stream
        if self._graph_exec is not None:
            api.graph_launch(self._graph_exec, s)
            return
        for b in self._bindings:
            if b.is_input and not b.mapped:
                api.memcpy_async(b.dev_ptr, b.host_ptr, b.nbytes, "h2d", s)
        if not self._context.execute_async_v3(api.stream_handle(s)):
            raise BackendError(f"{self._model_name}: TensorRT execute_async_v3 failed; see the TensorRT messages above")
        for b in self._bindings:
            if not b.is_input and not b.mapped:
                api.memcpy_async(b.host_ptr, b.dev_ptr, b.nbytes, "d2h", s)

    def _capture_graph(self) -> None:
        from edge_assist.backends.trt_cuda import CudaError

        api = self._api
        if not api.supports_graphs:
            self._log(f"{self._model_name}: CUDA graphs need cuda-python ({api.kind} is in use); running without them")
            return
        graph = None
        try:
            api.capture_begin(self._stream)
            try:
                self._enqueue()
            finally:
                graph = api.capture_end(self._stream)
            self._graph_exec = api.graph_instantiate(graph)
            self._graph = graph
            self.cuda_graph = True
        except (CudaError, BackendError) as exc:
            api.clear_error()
            if graph is not None:
                try:
                    api.graph_destroy(graph)
                except CudaError:
                    pass
            self._graph = self._graph_exec = None
            self._log(f"{self._model_name}: CUDA graph capture failed ({exc}); running without CUDA graphs")

    # -- inference
    def infer_async(self, feed: dict[str, np.ndarray]) -> None:
        """Queue one inference and return at once; `collect()` waits for it.
        Lets several heads, each with its own stream, run at the same time."""
        check_feed(self.inputs, feed, self.model_name)
        self._submit(feed)

    def _submit(self, feed) -> None:
        if self._closed:
            raise BackendError(f"{self._model_name}: the trt backend is closed")
        with self._lock:
            if self._pending:
                raise BackendError(f"{self._model_name}: collect() the previous result before submitting another")
            for b in self._bindings:
                if b.is_input:
                    np.copyto(b.array, feed[b.name])
            self._api.enter()
            try:
                self._enqueue()
            finally:
                self._api.exit()
            self._pending = True

    def collect(self) -> dict[str, np.ndarray]:
        with self._lock:
            if not self._pending:
                raise BackendError(f"{self._model_name}: nothing submitted to collect")
            self._api.enter()
            try:
                self._api.stream_sync(self._stream)
            finally:
                self._pending = False
                self._api.exit()
            return {b.name: b.array.copy() for b in self._bindings if not b.is_input}

    def _run(self, feed):
        self._submit(feed)
        return self.collect()

    # -- lifetime
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        api = self._api
        if api is None:
            return
        from edge_assist.backends.trt_cuda import CudaError

        problems = []

        def attempt(fn, *args):
            try:
                fn(*args)
            except CudaError as exc:
                problems.append(str(exc))

        api.enter()
        try:
            if self._stream is not None:
                attempt(api.stream_sync, self._stream)
            if self._graph_exec is not None:
                attempt(api.graph_exec_destroy, self._graph_exec)
            if self._graph is not None:
                attempt(api.graph_destroy, self._graph)
            self._graph = self._graph_exec = None
            bindings, self._bindings = self._bindings, []
            for b in bindings:
                if not b.mapped:
                    attempt(api.free, b.dev_ptr)
                attempt(api.free_host, b.host_ptr)
            if self._stream is not None:
                attempt(api.stream_destroy, self._stream)
                self._stream = None
            # TensorRT objects: context before engine before runtime.
            self._context = None
            self._engine = None
            self._runtime = None
        finally:
            api.exit()
        if problems:
            self._log(f"{self._model_name}: while freeing CUDA resources: {'; '.join(problems)}")
