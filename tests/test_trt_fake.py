"""The TensorRT build and runtime code run end to end against a simulator:
a fake `tensorrt` (its "engine" runs the ONNX model with ONNX Runtime) and a
fake cuda-python runtime (device memory is host memory; copies, streams,
CUDA graphs and frees are recorded).

This checks our side only: buffer set-up, copy/execute order, graph replay,
zero-copy, warm-up, the cache and rebuild paths, progress output, and that
close() frees every allocation. Whether real TensorRT and CUDA behave like
the simulator is checked only by the GPU tests (tests/test_trt_backend.py)."""

import ctypes
import enum
import json
import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_assist.backends import trt as trt_backend
from edge_assist.backends import trt_build
from edge_assist.cli import main
from edge_assist.errors import BackendError


# --- fake cuda-python runtime --------------------------------------------------------------

class Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorStreamCaptureUnsupported = 900


class FakeStream:
    def __init__(self, handle):
        self.handle = handle

    def __int__(self):
        return self.handle


class FakeCuda:
    def __init__(self, *, name=b"NVIDIA GeForce RTX 4060", cc=(8, 9), integrated=0, capture_fails=False):
        self.name, self.cc, self.integrated, self.capture_fails = name, cc, integrated, capture_fails
        self.device, self.host, self.mapped = {}, {}, {}  # ptr -> ctypes buffer
        self.streams, self.capturing, self.graphs, self.execs = {}, {}, {}, {}
        self.log = []  # ("h2d"|"d2h"|"exec"|"graph", stream handle)
        self._next = 1

    def _id(self):
        self._next += 1
        return self._next

    def _buf(self, store, n):
        b = ctypes.create_string_buffer(int(n))
        store[ctypes.addressof(b)] = b
        return ctypes.addressof(b)

    def run_or_record(self, stream_handle, op):
        if stream_handle in self.capturing:
            self.capturing[stream_handle].append(op)
        else:
            op()

    def module(self):
        ok = Err.cudaSuccess
        rt = types.ModuleType("cuda.bindings.runtime")
        rt.cudaGetErrorString = lambda e: (ok, b"fake error")
        rt.cudaGetLastError = lambda: (ok,)
        rt.cudaDriverGetVersion = lambda: (ok, 12060)
        rt.cudaRuntimeGetVersion = lambda: (ok, 12060)
        rt.cudaGetDeviceCount = lambda: (ok, 1)
        rt.cudaSetDevice = lambda i: (ok,)
        rt.cudaGetDeviceProperties = lambda i: (ok, types.SimpleNamespace(
            name=self.name, major=self.cc[0], minor=self.cc[1], totalGlobalMem=8 << 30))
        rt.cudaDeviceAttr = types.SimpleNamespace(cudaDevAttrIntegrated=18, cudaDevAttrCanMapHostMemory=19)
        rt.cudaDeviceGetAttribute = lambda a, d: (ok, self.integrated if a == 18 else 1)
        rt.cudaMalloc = lambda n: (ok, self._buf(self.device, n))
        rt.cudaFree = lambda p: (ok,) if self.device.pop(p, None) is not None else (Err.cudaErrorMemoryAllocation,)
        rt.cudaMallocHost = lambda n: (ok, self._buf(self.host, n))
        rt.cudaHostAllocMapped = 2
        rt.cudaHostAlloc = lambda n, flags: (ok, self._buf(self.mapped if flags == 2 else self.host, n))
        rt.cudaHostGetDevicePointer = lambda p, f: (ok, p)  # unified addressing
        rt.cudaFreeHost = lambda p: (ok,) if (self.host.pop(p, None) or self.mapped.pop(p, None)) is not None \
            else (Err.cudaErrorMemoryAllocation,)
        rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

        def memcpy(dst, src, n, kind, stream):
            def op():
                ctypes.memmove(dst, src, n)
                self.log.append(("h2d" if kind == 1 else "d2h", int(stream)))
            self.run_or_record(int(stream), op)
            return (ok,)

        rt.cudaMemcpyAsync = memcpy
        rt.cudaStreamNonBlocking = 1

        def stream_create(flags):
            s = FakeStream(self._id())
            self.streams[s.handle] = s
            return ok, s

        rt.cudaStreamCreateWithFlags = stream_create
        rt.cudaStreamSynchronize = lambda s: (ok,)
        rt.cudaStreamDestroy = lambda s: (ok,) if self.streams.pop(int(s), None) else (Err.cudaErrorMemoryAllocation,)
        rt.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

        def begin(s, mode):
            self.capturing[int(s)] = []
            return (ok,)

        def end(s):
            ops = self.capturing.pop(int(s))
            if self.capture_fails:
                return (Err.cudaErrorStreamCaptureUnsupported, None)
            g = self._id()
            self.graphs[g] = ops
            return ok, g

        def instantiate(g, flags):
            e = self._id()
            self.execs[e] = self.graphs[g]
            return ok, e

        def launch(e, s):
            self.log.append(("graph", int(s)))
            for op in self.execs[e]:
                op()
            return (ok,)

        rt.cudaStreamBeginCapture = begin
        rt.cudaStreamEndCapture = end
        rt.cudaGraphInstantiate = instantiate
        rt.cudaGraphLaunch = launch
        rt.cudaGraphDestroy = lambda g: (ok,) if self.graphs.pop(g, None) is not None else (Err.cudaErrorMemoryAllocation,)
        rt.cudaGraphExecDestroy = lambda e: (ok,) if self.execs.pop(e, None) is not None else (Err.cudaErrorMemoryAllocation,)
        return rt

    def live(self):
        return len(self.device) + len(self.host) + len(self.mapped) + len(self.streams) + len(self.graphs) + len(self.execs)


# --- fake TensorRT -----------------------------------------------------------------------------

def fake_tensorrt(cuda: FakeCuda, *, fast_fp16=True, fast_int8=True, fail_build=False, version="10.3.0"):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt11 = version.startswith("11.")
    trt.state = types.SimpleNamespace(configs=[], builds=0)

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity
    trt.ILogger = ILogger

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.IProgressMonitor = IProgressMonitor
    trt.LayerType = enum.Enum("LayerType", "CONVOLUTION DECONVOLUTION MATRIX_MULTIPLY QUANTIZE DEQUANTIZE OTHER")
    # TensorRT 11 removed the weak-typing flags and platform_has_fast_*.
    trt.BuilderFlag = enum.Enum("BuilderFlag", "TF32" if trt11 else "FP16 INT8 TF32 OBEY_PRECISION_CONSTRAINTS")
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "LAYER_NAMES_ONLY DETAILED")
    trt.LayerInformationFormat = enum.Enum("LayerInformationFormat", "ONELINE JSON")
    trt.TensorIOMode = enum.Enum("TensorIOMode", "NONE INPUT OUTPUT")
    trt.DataType = enum.Enum("DataType", "FLOAT HALF")
    trt.float32, trt.float16 = trt.DataType.FLOAT, trt.DataType.HALF
    trt.nptype = lambda t: {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}[t]
    kinds = {"Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION", "Gemm": "MATRIX_MULTIPLY", "MatMul": "MATRIX_MULTIPLY",
             "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE"}

    class Layer:
        def __init__(self, op):
            self.type = trt.LayerType[kinds.get(op, "OTHER")]
            self.precision = trt.float32

    class Network:
        def __init__(self):
            self.layers, self.inputs, self.path = [], [], None

        num_layers = property(lambda self: len(self.layers))
        num_inputs = property(lambda self: len(self.inputs))

        def get_layer(self, i):
            return self.layers[i]

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            try:
                m = onnx.load(path)
            except Exception as exc:  # noqa: BLE001
                self.errors = [f"ModelImporter: cannot read {path}: {type(exc).__name__}"]
                return False
            self.network.path = path
            self.network.layers = [Layer(n.op_type) for n in m.graph.node]
            self.network.inputs = [types.SimpleNamespace(
                name=i.name, shape=[d.dim_value or -1 for d in i.type.tensor_type.shape.dim]) for i in m.graph.input]
            return True

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return memoryview(b"TIMING:" + (self.data or b"") + b"+")

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.pool = set(), set(), None
            self.progress_monitor, self.timing = None, None
            self.profiling_verbosity = None
            trt.state.configs.append(self)

        def set_memory_pool_limit(self, pool, n):
            self.pool = (pool, n)

        def set_flag(self, f):
            self.flags.add(f)

        def clear_flag(self, f):
            self.cleared.add(f)

        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache.data and not cache.data.startswith(b"TIMING:"):
                return False
            self.timing = cache
            return True

        def get_timing_cache(self):
            return self.timing

        def add_optimization_profile(self, p):
            pass

    class Builder:
        if not trt11:
            platform_has_fast_fp16 = fast_fp16
            platform_has_fast_int8 = fast_int8

        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            assert flags == 0
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network, config):
            trt.state.builds += 1
            if fail_build:
                self.logger.log(Severity.ERROR, "no implementation obeys reformatting-free rules")
                return None
            mon = config.progress_monitor
            if mon is not None:
                mon.phase_start("Building engine", None, 2)
                mon.step_complete("Building engine", 0)
                mon.step_complete("Building engine", 1)
                mon.phase_finish("Building engine")
            qdq = any(layer.type == trt.LayerType.QUANTIZE for layer in network.layers)
            flags = {f.name for f in config.flags}
            if trt11:
                assert not flags - {"TF32"}
            elif qdq:
                assert "INT8" in flags, "TensorRT 10 needs the INT8 flag for Q/DQ networks"
            prec = "int8" if qdq else "fp16" if "FP16" in flags else "fp32"
            return memoryview(json.dumps({"model": network.path, "precision": prec, "n": trt.state.builds}).encode())

    class Context:
        def __init__(self, engine):
            self.engine, self.addr = engine, {}

        def set_input_shape(self, name, shape):
            return True

        def get_tensor_shape(self, name):
            return self.engine.get_tensor_shape(name)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            def op():
                feed = {}
                for t in self.engine.sess.get_inputs():
                    n = int(np.prod(t.shape)) * 4
                    feed[t.name] = np.frombuffer((ctypes.c_char * n).from_address(self.addr[t.name]), np.float32).reshape(t.shape).copy()
                outs = self.engine.sess.run(None, feed)
                for t, v in zip(self.engine.sess.get_outputs(), outs):
                    v = np.ascontiguousarray(v, np.float32)
                    ctypes.memmove(self.addr[t.name], v.ctypes.data, v.nbytes)
                cuda.log.append(("exec", stream_handle))
            cuda.run_or_record(stream_handle, op)
            return True

    class Engine:
        def __init__(self, meta):
            self.meta = meta
            self.sess = ort.InferenceSession(meta["model"], providers=["CPUExecutionProvider"])
            self.io = [(i.name, trt.TensorIOMode.INPUT, tuple(i.shape)) for i in self.sess.get_inputs()] + \
                      [(o.name, trt.TensorIOMode.OUTPUT, tuple(o.shape)) for o in self.sess.get_outputs()]

        num_io_tensors = property(lambda self: len(self.io))

        def get_tensor_name(self, i):
            return self.io[i][0]

        def get_tensor_mode(self, name):
            return {n: m for n, m, _ in self.io}[name]

        def get_tensor_shape(self, name):
            return {n: s for n, _, s in self.io}[name]

        def get_tensor_dtype(self, name):
            return trt.float32

        def create_execution_context(self):
            return Context(self)

        def create_engine_inspector(self):
            fmt = {"fp32": "Row major linear FP32", "fp16": "Row major linear FP16 format", "int8": "Int8"}[self.meta["precision"]]
            info = {"Layers": [{"LayerType": "CaskConvolution", "Inputs": [{"Format/Datatype": fmt}], "Outputs": []}]}
            return types.SimpleNamespace(get_engine_information=lambda f: json.dumps(info))

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            try:
                meta = json.loads(bytes(data))
            except (ValueError, UnicodeDecodeError):
                return None
            return Engine(meta)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


@pytest.fixture
def sim(monkeypatch):
    """Install the simulator; returns a function (re)installing it with options."""
    def install(cuda=None, **trt_opts):
        cuda = cuda or FakeCuda()
        rt = cuda.module()
        mod_cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        bindings.__version__, bindings.runtime, mod_cuda.bindings = "13.0.0", rt, bindings
        monkeypatch.setitem(sys.modules, "cuda", mod_cuda)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
        trt = fake_tensorrt(cuda, **trt_opts)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        trt_backend._STATUS = None
        trt_build._LOGGER = None
        return cuda, trt

    yield install
    trt_backend._STATUS = None
    trt_build._LOGGER = None


def _x(seed=0):
    return np.random.default_rng(seed).random((1, 1, 64, 64), dtype=np.float32)


def _ref(model, x):
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"image": x})))


def test_status_and_open_through_the_registry(sim, tiny_engines, tmp_path):
    from edge_assist.backends import available_backends, open_backend

    cuda, trt = sim()
    st = available_backends()["trt"]
    assert st.available and "TensorRT 10.3.0" in st.reason and "RTX 4060 (sm_89)" in st.reason
    logs = []
    with open_backend("trt", tiny_engines / "quality.onnx", cache_dir=tmp_path, threads=1, log=logs.append) as b:
        assert [i.describe() for i in b.inputs] == ["image[1x1x64x64] float32"]
        assert {o.name for o in b.outputs} == {"score", "reason_logits"}
        for seed in range(3):
            out, want = b.infer({"image": _x(seed)}), _ref(tiny_engines / "quality.onnx", _x(seed))
            for k in want:
                np.testing.assert_array_equal(out[k], want[k])
        with pytest.raises(BackendError, match="shape"):
            b.infer({"image": np.zeros((1, 1, 32, 32), np.float32)})
    assert cuda.live() == 0, "close() must free every buffer and stream"
    text = "\n".join(logs)
    assert "can take minutes the first time" in text and "Building engine (2 steps)" in text and "built in" in text


def test_warmup_and_copy_order(sim, tiny_engines, tmp_path):
    cuda, trt = sim()
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path, warmup=3, log=lambda m: None) as b:
        kinds = [k for k, _ in cuda.log]
        assert kinds == ["h2d", "exec", "d2h", "d2h"] * 3  # warm-up ran before open returned
        assert len({s for _, s in cuda.log}) == 1  # all on the backend's own stream
        cuda.log.clear()
        b.infer({"image": _x()})
        assert [k for k, _ in cuda.log] == ["h2d", "exec", "d2h", "d2h"]


def test_fp16_build_flags_and_timing_cache(sim, tiny_engines, tmp_path):
    cuda, trt = sim()
    logs = []
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", precision="fp16", cache_dir=tmp_path, workspace_mb=256,
                                log=logs.append) as b:
        assert b.precision == "fp16" and b.built
    cfg = trt.state.configs[0]
    F = trt.BuilderFlag
    assert cfg.flags == {F.FP16, F.OBEY_PRECISION_CONSTRAINTS} and F.TF32 in cfg.cleared
    assert cfg.pool == (trt.MemoryPoolType.WORKSPACE, 256 << 20)
    assert cfg.profiling_verbosity == trt.ProfilingVerbosity.DETAILED
    timing = list(tmp_path.glob("timing.*.cache"))
    assert len(timing) == 1 and timing[0].read_bytes().startswith(b"TIMING:")
    side = json.loads(next(tmp_path.glob("quality.fp16.*.json")).read_text())
    assert side["layer_precisions"] == {"fp16": 1} and side["key"]["gpu_name"] == "NVIDIA GeForce RTX 4060"

    # Another model reuses the timing cache; the same model is not rebuilt.
    logs.clear()
    with trt_backend.TrtBackend(tiny_engines / "guidance.onnx", precision="fp16", cache_dir=tmp_path, log=logs.append):
        pass
    assert any("reusing timing cache" in m for m in logs)
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", precision="fp16", cache_dir=tmp_path, log=logs.append) as b:
        assert not b.built
    assert trt.state.builds == 2


def test_damaged_timing_cache_is_replaced(sim, tiny_engines, tmp_path):
    cuda, trt = sim()
    (tmp_path / "timing.trt10.3.0.NVIDIA-GeForce-RTX-4060.sm8.9.cache").write_bytes(b"garbage")
    logs = []
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path, log=logs.append):
        pass
    assert any("does not fit this TensorRT/GPU; starting a new one" in m for m in logs)


def test_cuda_graph_replays_with_new_inputs(sim, tiny_engines, tmp_path):
    cuda, trt = sim()
    with trt_backend.TrtBackend(tiny_engines / "interpreter.onnx", cache_dir=tmp_path, cuda_graph=True, log=lambda m: None) as b:
        assert b.cuda_graph
        cuda.log.clear()
        for seed in range(3):
            out, want = b.infer({"image": _x(seed)}), _ref(tiny_engines / "interpreter.onnx", _x(seed))
            for k in want:
                np.testing.assert_array_equal(out[k], want[k])
        assert [k for k, _ in cuda.log].count("graph") == 3
    assert cuda.live() == 0


def test_cuda_graph_failure_is_said_and_inference_still_works(sim, tiny_engines, tmp_path):
    cuda, trt = sim(FakeCuda(capture_fails=True))
    logs = []
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path, cuda_graph=True, log=logs.append) as b:
        assert not b.cuda_graph
        out, want = b.infer({"image": _x()}), _ref(tiny_engines / "quality.onnx", _x())
        np.testing.assert_array_equal(out["score"], want["score"])
    assert any("CUDA graph capture failed" in m and "running without" in m for m in logs)


def test_zero_copy_on_an_integrated_gpu(sim, tiny_engines, tmp_path):
    cuda, trt = sim(FakeCuda(name=b"Orin", cc=(8, 7), integrated=1))
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path, log=lambda m: None) as b:
        assert b.zero_copy and not cuda.device and cuda.mapped  # mapped host memory only
        cuda.log.clear()
        out, want = b.infer({"image": _x(3)}), _ref(tiny_engines / "quality.onnx", _x(3))
        np.testing.assert_array_equal(out["reason_logits"], want["reason_logits"])
        assert [k for k, _ in cuda.log] == ["exec"]  # no copies at all
    assert cuda.live() == 0


def test_heads_overlap_with_submit_and_collect(sim, tiny_engines, tmp_path):
    cuda, trt = sim()
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path, log=lambda m: None) as q, \
         trt_backend.TrtBackend(tiny_engines / "guidance.onnx", cache_dir=tmp_path, log=lambda m: None) as g:
        q.infer_async({"image": _x(1)})
        g.infer_async({"image": _x(2)})
        with pytest.raises(BackendError, match="collect\\(\\) the previous result"):
            q.infer_async({"image": _x(1)})
        np.testing.assert_array_equal(g.collect()["action_logits"], _ref(tiny_engines / "guidance.onnx", _x(2))["action_logits"])
        np.testing.assert_array_equal(q.collect()["score"], _ref(tiny_engines / "quality.onnx", _x(1))["score"])
        assert len({s for _, s in cuda.log}) == 2  # one stream per head


def test_an_engine_tensorrt_cannot_read_is_rebuilt(sim, tiny_engines, tmp_path):
    from edge_assist.backends.trt_cache import EngineKey, engine_files, read_sidecar, write_entry

    cuda, trt = sim()
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path, log=lambda m: None) as b:
        path = b.engine_path
    # A consistent cache entry (sidecar matches, sha256 matches) that TensorRT cannot deserialise.
    key = EngineKey.from_dict(read_sidecar(path.with_suffix(".json"))["key"])
    write_entry(engine_files(tmp_path, tiny_engines / "quality.onnx", key), key, b"not an engine",
                model_path=tiny_engines / "quality.onnx")
    logs = []
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path, log=logs.append) as b:
        assert b.built and b.engine_path == path
        np.testing.assert_array_equal(b.infer({"image": _x()})["score"], _ref(tiny_engines / "quality.onnx", _x())["score"])
    assert trt.state.builds == 2
    assert any("cannot be loaded by this TensorRT; rebuilding" in m for m in logs)


def test_failed_build_says_why_and_caches_nothing(sim, tiny_engines, tmp_path):
    cuda, trt = sim(fail_build=True)
    with pytest.raises(BackendError, match="could not build quality.onnx as fp16: no implementation obeys.*--precision fp32"):
        trt_backend.TrtBackend(tiny_engines / "quality.onnx", precision="fp16", cache_dir=tmp_path, log=lambda m: None)
    assert not list(tmp_path.glob("*.engine")) and not list(tmp_path.glob("*.json"))
    assert cuda.live() == 0


def test_builder_refuses_without_fast_fp16(sim, tiny_engines, tmp_path):
    cuda, trt = sim(fast_fp16=False)  # the builder says so even where the table would not
    with pytest.raises(BackendError, match="no fast FP16"):
        trt_backend.TrtBackend(tiny_engines / "quality.onnx", precision="fp16", cache_dir=tmp_path, log=lambda m: None)
    assert trt.state.builds == 0


def quantize(src, dst):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Frames(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": _x(s)} for s in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Frames(), quant_format=QuantFormat.QDQ)
    return dst


def test_int8_engine_from_a_qdq_model(sim, tiny_engines, tmp_path):
    qdq = quantize(tiny_engines / "quality.onnx", tmp_path / "quality_int8.onnx")
    cuda, trt = sim()
    logs = []
    with trt_backend.TrtBackend(qdq, cache_dir=tmp_path / "c", log=logs.append) as b:  # HeadSet passes no precision
        assert b.precision == "int8"
    assert any("INT8 (QDQ) model" in m for m in logs)
    assert trt.state.configs[0].flags == {trt.BuilderFlag.INT8}


def test_cli_engines_build(sim, tiny_engines, tmp_path, capsys):
    cuda, trt = sim()
    args = ["engines", "build", "--engines", str(tiny_engines), "--cache-dir", str(tmp_path), "--precision", "fp16", "--json"]
    assert main(args) == 0
    out = capsys.readouterr()
    first = json.loads(out.out)
    assert [e["head"] for e in first["engines"]] == ["quality", "guidance", "interpreter"]
    assert all(e["built"] and e["precision"] == "fp16" for e in first["engines"])
    assert "this can take minutes the first time" in out.err
    assert main(args) == 0
    assert not any(e["built"] for e in json.loads(capsys.readouterr().out)["engines"])
    assert main(args[:-1] + ["--force"]) == 0
    assert "rebuild asked for (--force)" in capsys.readouterr().err
    assert trt.state.builds == 6
    assert main(["engines", "list", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("fp16") == 3


def add_int8_model(engines):
    """What `edge-assist calibrate` leaves behind: a QDQ model named in the manifest."""
    from edge_assist.manifest import sha256_file

    q = quantize(engines / "quality.onnx", engines / "quality_int8.onnx")
    m = json.loads((engines / "manifest.json").read_text())
    m["heads"]["quality"]["int8_file"], m["heads"]["quality"]["int8_sha256"] = q.name, sha256_file(q)
    (engines / "manifest.json").write_text(json.dumps(m))


def test_cli_int8_build_mixes_int8_and_fp32_heads(sim, tiny_engines, tmp_path, capsys):
    cuda, trt = sim()
    add_int8_model(tiny_engines)
    assert main(["engines", "build", "--engines", str(tiny_engines), "--cache-dir", str(tmp_path),
                 "--precision", "int8", "--json"]) == 0
    out = capsys.readouterr()
    got = {e["head"]: (e["model"], e["precision"]) for e in json.loads(out.out)["engines"]}
    assert got == {"quality": ("quality_int8.onnx", "int8"), "guidance": ("guidance.onnx", "fp32"),
                   "interpreter": ("interpreter.onnx", "fp32")}
    assert "guidance: no INT8 model in the manifest (calibration kept it FP32): building fp32" in out.err


def test_cli_refuses_int8_without_fast_int8(sim, tiny_engines, tmp_path, capsys):
    cuda, trt = sim(FakeCuda(name=b"NVIDIA Tegra X1", cc=(5, 3)))
    add_int8_model(tiny_engines)
    rc = main(["engines", "build", "--engines", str(tiny_engines), "--cache-dir", str(tmp_path), "--precision", "int8"])
    assert rc == 2
    assert "NVIDIA Tegra X1 (compute capability 5.3) has no fast INT8: nothing was built" in capsys.readouterr().err
    assert trt.state.builds == 0 and not list(tmp_path.glob("*.engine"))


def test_headset_runs_on_trt(sim, tiny_engines, tmp_path):
    from edge_assist.heads import HeadSet
    from edge_assist.manifest import load_manifest

    cuda, trt = sim()
    add_int8_model(tiny_engines)
    manifest = load_manifest(tiny_engines)
    x = _x(5)
    with HeadSet(manifest, backend="ort") as ref, \
         HeadSet(manifest, backend="trt", precision="int8", threads=1, cache_dir=tmp_path, log=lambda m: None) as hs:
        assert hs.heads["quality"].backend.precision == "int8"  # the QDQ model, as HeadSet picks it
        assert hs.heads["guidance"].backend.precision == "fp32"
        assert hs.guidance(x) == ref.guidance(x)
    assert cuda.live() == 0


def test_tensorrt_11_builds_fp32_and_int8_and_refuses_fp16(sim, tiny_engines, tmp_path):
    cuda, trt = sim(version="11.4.0")
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path, log=lambda m: None) as b:
        np.testing.assert_array_equal(b.infer({"image": _x()})["score"], _ref(tiny_engines / "quality.onnx", _x())["score"])
    qdq = quantize(tiny_engines / "quality.onnx", tmp_path / "quality_int8.onnx")
    with trt_backend.TrtBackend(qdq, precision="int8", cache_dir=tmp_path, log=lambda m: None) as b:
        assert b.precision == "int8"
    with pytest.raises(BackendError, match="strongly typed .*nothing was built"):
        trt_backend.TrtBackend(tiny_engines / "quality.onnx", precision="fp16", cache_dir=tmp_path, log=lambda m: None)
    assert trt.state.builds == 2 and cuda.live() == 0
