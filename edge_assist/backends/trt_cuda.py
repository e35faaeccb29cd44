"""CUDA memory, streams and graphs for the TensorRT backend.

Through cuda-python's runtime bindings (`cuda.bindings.runtime` in
cuda-python >= 12.6 and 13; `cuda.cudart` before) or, as a fallback, pycuda.
Every CUDA import happens inside a function: importing this module imports no
CUDA. Every call is checked; a failure raises CudaError with the CUDA error
name and text.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from edge_assist.errors import BackendError

CUDA_MISSING = (
    "cuda-python is not installed (nor pycuda): the TensorRT backend needs it for CUDA memory and streams; "
    "pip install cuda-python (included in edge-assist[gpu])"
)


class CudaError(BackendError):
    """A CUDA call failed."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    major: int
    minor: int
    integrated: bool
    can_map_host_memory: bool
    total_mem_mb: int = 0

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"

    def describe(self) -> str:
        extra = ", integrated" if self.integrated else ""
        return f"{self.name} (sm_{self.major}{self.minor}{extra})"


def import_cudart():
    """(module, where) for cuda-python's runtime API, newest layout first."""
    errors = []
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 / 13

        return cudart, "cuda.bindings.runtime"
    except ImportError as exc:
        errors.append(str(exc))
    try:
        from cuda import cudart  # cuda-python < 12.6 (removed in 13)

        return cudart, "cuda.cudart"
    except ImportError as exc:
        errors.append(str(exc))
    raise ImportError("; ".join(errors))


class CudartApi:
    """cuda-python runtime calls. Each returns (err, *values)."""

    supports_graphs = True

    def __init__(self, cudart, where: str):
        self.rt = cudart
        version = "?"
        try:
            import cuda.bindings as _cb  # noqa: PLC0415

            version = getattr(_cb, "__version__", "?")
        except ImportError:
            try:
                import cuda as _c  # noqa: PLC0415

                version = getattr(_c, "__version__", "?")
            except ImportError:
                pass
        self.kind = f"cuda-python {version} ({where})"

    # -- errors
    def error_text(self, err) -> str:
        name = getattr(err, "name", None) or str(err)
        text = ""
        try:
            res = self.rt.cudaGetErrorString(err)
            text = res[1] if isinstance(res, tuple) else res
            text = text.decode() if isinstance(text, bytes) else str(text)
        except Exception:  # noqa: BLE001 - describing an error must not raise
            pass
        return f"{name} ({text})" if text else name

    def call(self, what: str, res):
        if not isinstance(res, tuple):
            res = (res,)
        err, rest = res[0], res[1:]
        if int(err) != 0:
            raise CudaError(f"{what} failed: {self.error_text(err)}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def clear_error(self) -> None:
        self.rt.cudaGetLastError()

    # -- context (the runtime API uses the primary context on its own)
    def enter(self) -> None:
        pass

    def exit(self) -> None:
        pass

    # -- devices
    def driver_version(self) -> int:
        return int(self.call("cudaDriverGetVersion", self.rt.cudaDriverGetVersion()))

    def runtime_version(self) -> int:
        return int(self.call("cudaRuntimeGetVersion", self.rt.cudaRuntimeGetVersion()))

    def device_count(self) -> int:
        return int(self.call("cudaGetDeviceCount", self.rt.cudaGetDeviceCount()))

    def set_device(self, index: int) -> None:
        self.call("cudaSetDevice", self.rt.cudaSetDevice(int(index)))

    def device_info(self, index: int = 0) -> DeviceInfo:
        prop = self.call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(int(index)))
        name = prop.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        attr = self.rt.cudaDeviceAttr

        def get(a) -> int:
            return int(self.call("cudaDeviceGetAttribute", self.rt.cudaDeviceGetAttribute(a, int(index))))

        return DeviceInfo(
            index=int(index),
            name=str(name).strip(),
            major=int(prop.major),
            minor=int(prop.minor),
            integrated=bool(get(attr.cudaDevAttrIntegrated)),
            can_map_host_memory=bool(get(attr.cudaDevAttrCanMapHostMemory)),
            total_mem_mb=int(prop.totalGlobalMem) // (1 << 20),
        )

    # -- memory
    def malloc(self, nbytes: int) -> int:
        return int(self.call("cudaMalloc", self.rt.cudaMalloc(int(nbytes))))

    def free(self, ptr: int) -> None:
        self.call("cudaFree", self.rt.cudaFree(ptr))

    def malloc_host(self, nbytes: int) -> int:
        return int(self.call("cudaMallocHost", self.rt.cudaMallocHost(int(nbytes))))

    def host_alloc_mapped(self, nbytes: int) -> int:
        return int(self.call("cudaHostAlloc", self.rt.cudaHostAlloc(int(nbytes), self.rt.cudaHostAllocMapped)))

    def host_device_pointer(self, host_ptr: int) -> int:
        return int(self.call("cudaHostGetDevicePointer", self.rt.cudaHostGetDevicePointer(host_ptr, 0)))

    def free_host(self, ptr: int) -> None:
        self.call("cudaFreeHost", self.rt.cudaFreeHost(ptr))

    def memcpy_async(self, dst: int, src: int, nbytes: int, direction: str, stream) -> None:
        kinds = self.rt.cudaMemcpyKind
        kind = kinds.cudaMemcpyHostToDevice if direction == "h2d" else kinds.cudaMemcpyDeviceToHost
        self.call("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst, src, int(nbytes), kind, stream))

    # -- streams
    def stream_create(self):
        return self.call("cudaStreamCreateWithFlags", self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking))

    @staticmethod
    def stream_handle(stream) -> int:
        return int(stream)

    def stream_sync(self, stream) -> None:
        self.call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream) -> None:
        self.call("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))

    # -- graphs
    def capture_begin(self, stream) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.call("cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture(stream, mode))

    def capture_end(self, stream):
        return self.call("cudaStreamEndCapture", self.rt.cudaStreamEndCapture(stream))

    def graph_instantiate(self, graph):
        return self.call("cudaGraphInstantiate", self.rt.cudaGraphInstantiate(graph, 0))

    def graph_launch(self, graph_exec, stream) -> None:
        self.call("cudaGraphLaunch", self.rt.cudaGraphLaunch(graph_exec, stream))

    def graph_destroy(self, graph) -> None:
        self.call("cudaGraphDestroy", self.rt.cudaGraphDestroy(graph))

    def graph_exec_destroy(self, graph_exec) -> None:
        self.call("cudaGraphExecDestroy", self.rt.cudaGraphExecDestroy(graph_exec))


class PycudaApi:
    """The same calls through pycuda (fallback; no CUDA graphs)."""

    supports_graphs = False

    def __init__(self):
        import pycuda
        import pycuda.driver as drv

        self.drv = drv
        self.kind = f"pycuda {getattr(pycuda, 'VERSION_TEXT', '?')}"
        self._ctx = None
        self._keep: dict[int, object] = {}  # pointer -> the pycuda object that owns it
        self._wrap("cuInit", drv.init)

    def _wrap(self, what, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except self.drv.Error as exc:
            raise CudaError(f"{what} failed: {exc}") from exc

    def clear_error(self) -> None:
        pass

    def enter(self) -> None:
        if self._ctx is None:
            self._ctx = self._wrap("cuDevicePrimaryCtxRetain", self.drv.Device(0).retain_primary_context)
        self._ctx.push()

    def exit(self) -> None:
        self.drv.Context.pop()

    def driver_version(self) -> int:
        return int(self._wrap("cuDriverGetVersion", self.drv.get_driver_version))

    def runtime_version(self) -> int:
        return 0  # pycuda uses the driver API only

    def device_count(self) -> int:
        return int(self._wrap("cuDeviceGetCount", self.drv.Device.count))

    def set_device(self, index: int) -> None:
        if int(index) != 0:
            raise CudaError("the pycuda fallback uses GPU 0 only; install cuda-python for other GPUs")

    def device_info(self, index: int = 0) -> DeviceInfo:
        d = self._wrap("cuDeviceGet", self.drv.Device, int(index))
        a = self.drv.device_attribute
        major, minor = d.compute_capability()
        return DeviceInfo(
            index=int(index),
            name=str(d.name()).strip(),
            major=int(major),
            minor=int(minor),
            integrated=bool(d.get_attribute(a.INTEGRATED)),
            can_map_host_memory=bool(d.get_attribute(a.CAN_MAP_HOST_MEMORY)),
            total_mem_mb=int(d.total_memory()) // (1 << 20),
        )

    def malloc(self, nbytes: int) -> int:
        alloc = self._wrap("cuMemAlloc", self.drv.mem_alloc, int(nbytes))
        self._keep[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._keep.pop(ptr).free()

    def _host(self, nbytes: int, flags) -> int:
        import numpy as np

        arr = self._wrap("cuMemHostAlloc", self.drv.pagelocked_empty, int(nbytes), np.uint8, mem_flags=flags)
        ptr = int(arr.ctypes.data)
        self._keep[ptr] = arr
        return ptr

    def malloc_host(self, nbytes: int) -> int:
        return self._host(nbytes, 0)

    def host_alloc_mapped(self, nbytes: int) -> int:
        return self._host(nbytes, self.drv.host_alloc_flags.DEVICEMAP)

    def host_device_pointer(self, host_ptr: int) -> int:
        return int(self._wrap("cuMemHostGetDevicePointer", self._keep[host_ptr].base.get_device_pointer))

    def free_host(self, ptr: int) -> None:
        self._keep.pop(ptr).base.free()

    def memcpy_async(self, dst: int, src: int, nbytes: int, direction: str, stream) -> None:
        if direction == "h2d":
            self._wrap("cuMemcpyHtoDAsync", self.drv.memcpy_htod_async, dst, (ctypes.c_char * nbytes).from_address(src), stream)
        else:
            self._wrap("cuMemcpyDtoHAsync", self.drv.memcpy_dtoh_async, (ctypes.c_char * nbytes).from_address(dst), src, stream)

    def stream_create(self):
        return self._wrap("cuStreamCreate", self.drv.Stream)

    @staticmethod
    def stream_handle(stream) -> int:
        return int(stream.handle)

    def stream_sync(self, stream) -> None:
        self._wrap("cuStreamSynchronize", stream.synchronize)

    def stream_destroy(self, stream) -> None:
        pass  # pycuda destroys a stream when it is garbage collected


def load_api():
    """cuda-python if importable, else pycuda; BackendError naming what is missing."""
    try:
        cudart, where = import_cudart()
    except ImportError as cp_exc:
        try:
            import pycuda.driver  # noqa: F401
        except ImportError:
            raise BackendError(CUDA_MISSING) from cp_exc
        return PycudaApi()
    return CudartApi(cudart, where)


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def probe() -> tuple[str | None, str | None, list[DeviceInfo]]:
    """(CUDA binding in use, why CUDA is unusable or None, GPUs)."""
    try:
        api = load_api()
    except CudaError as exc:  # pycuda: cuInit failed
        return "pycuda", f"no usable CUDA driver or GPU: {exc}", []
    except BackendError as exc:
        return None, str(exc), []
    try:
        driver = api.driver_version()
    except CudaError:
        driver = None
    try:
        count = api.device_count()
    except CudaError as exc:
        if driver == 0:
            return api.kind, f"no NVIDIA driver found (cudaDriverGetVersion reports none; {exc})", []
        try:
            runtime = api.runtime_version()
        except CudaError:
            runtime = 0
        if driver and runtime and driver // 1000 < runtime // 1000:  # minor versions are compatible
            return api.kind, (
                f"the NVIDIA driver supports CUDA {_cuda_version(driver)}, but {api.kind} is built for CUDA "
                f"{_cuda_version(runtime)}: pip install 'cuda-python>={driver // 1000},<{driver // 1000 + 1}' "
                f"to match the driver ({exc})"
            ), []
        return api.kind, f"no usable CUDA GPU ({exc})", []
    if count == 0:
        return api.kind, "no CUDA GPU found (cudaGetDeviceCount returned 0)", []
    try:
        return api.kind, None, [api.device_info(i) for i in range(count)]
    except CudaError as exc:
        return api.kind, f"cannot query the CUDA GPU ({exc})", []
