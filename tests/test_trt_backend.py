"""The trt backend: lazy imports, why it is unavailable, the CLI's refusals,
and (on a machine with a GPU and TensorRT) the runtime itself."""

import enum
import importlib.abc
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edge_assist.backends import available_backends, open_backend
from edge_assist.backends import trt as trt_backend
from edge_assist.cli import main
from edge_assist.errors import BackendError

REPO = Path(__file__).resolve().parent.parent
TRT = trt_backend.status()
needs_gpu = pytest.mark.skipif(not TRT.available, reason=f"trt unavailable here: {TRT.reason}")
needs_no_trt = pytest.mark.skipif(TRT.available, reason="TensorRT works here; this checks its absence")


@pytest.fixture
def fresh_status():
    """Probe again under the test's fake modules; forget that probe afterwards."""
    yield lambda: trt_backend.status(refresh=True)
    trt_backend._STATUS = None


# --- nothing GPU-related is imported at import time ---------------------------------------

def test_importing_edge_assist_imports_no_tensorrt_or_cuda():
    code = r"""
import sys
before = set(sys.modules)
attempts = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorrt", "cuda", "pycuda"):
            attempts.append(name)
            raise ImportError("blocked by the test")
        return None
sys.meta_path.insert(0, Spy())
import edge_assist, edge_assist.backends, edge_assist.backends.trt
import edge_assist.backends.trt_build, edge_assist.backends.trt_cache, edge_assist.backends.trt_cuda
import edge_assist.backends.trt_policy, edge_assist.trt_cli, edge_assist.cli
edge_assist.cli.build_parser()
print(attempts, sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("tensorrt", "cuda", "pycuda")))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] []"


# --- why trt is unavailable: each reason ---------------------------------------------------

class FakeErr(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


def fake_cudart(*, driver=12060, runtime=12060, count=1, count_err=FakeErr.cudaSuccess, name=b"Orin\0\0\0", cc=(8, 7), integrated=1):
    rt = types.ModuleType("cuda.bindings.runtime")
    texts = {35: b"CUDA driver version is insufficient for CUDA runtime version", 100: b"no CUDA-capable device is detected"}
    rt.cudaGetErrorString = lambda err: (FakeErr.cudaSuccess, texts.get(int(err), b"?"))
    rt.cudaDriverGetVersion = lambda: (FakeErr.cudaSuccess, driver)
    rt.cudaRuntimeGetVersion = lambda: (FakeErr.cudaSuccess, runtime)
    rt.cudaGetDeviceCount = lambda: (count_err, None) if count_err else (FakeErr.cudaSuccess, count)
    rt.cudaGetDeviceProperties = lambda i: (FakeErr.cudaSuccess, types.SimpleNamespace(
        name=name, major=cc[0], minor=cc[1], totalGlobalMem=8 << 30))
    rt.cudaDeviceAttr = types.SimpleNamespace(cudaDevAttrIntegrated=18, cudaDevAttrCanMapHostMemory=19)
    rt.cudaDeviceGetAttribute = lambda attr, dev: (FakeErr.cudaSuccess, integrated if attr == 18 else 1)
    return rt


def install(monkeypatch, *, tensorrt=None, cudart=None, trt_import_error=None):
    """Fake (or hide) tensorrt and cuda-python in sys.modules; pycuda is hidden."""
    if tensorrt is None and trt_import_error is None:
        monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    elif trt_import_error is not None:
        class Boom(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "tensorrt":
                    raise trt_import_error
                return None

        monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
        monkeypatch.setattr(sys, "meta_path", [Boom(), *sys.meta_path])
    else:
        monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    if cudart is None:
        for m in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
            monkeypatch.setitem(sys.modules, m, None)
    else:
        cuda = types.ModuleType("cuda")
        bindings = types.ModuleType("cuda.bindings")
        bindings.__version__ = "13.0.0"
        bindings.runtime = cudart
        cuda.bindings = bindings
        monkeypatch.setitem(sys.modules, "cuda", cuda)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)


def fake_trt(version="10.3.0"):
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    return m


def test_reason_nothing_installed(monkeypatch, fresh_status):
    install(monkeypatch)
    st = fresh_status()
    assert not st.available
    assert "TensorRT Python bindings are not installed" in st.reason and "JetPack" in st.reason
    assert "cuda-python is not installed (nor pycuda)" in st.reason and "pip install cuda-python" in st.reason


def test_reason_no_driver(monkeypatch, fresh_status):
    install(monkeypatch, tensorrt=fake_trt(), cudart=fake_cudart(driver=0, count_err=FakeErr.cudaErrorInsufficientDriver))
    st = fresh_status()
    assert not st.available
    assert st.reason.startswith("no NVIDIA driver found")
    assert "cudaGetDeviceCount failed: cudaErrorInsufficientDriver (CUDA driver version is insufficient" in st.reason
    assert "TensorRT" not in st.reason.split(";")[0]  # TensorRT itself was fine


def test_reason_no_gpu(monkeypatch, fresh_status):
    install(monkeypatch, tensorrt=fake_trt(), cudart=fake_cudart(count_err=FakeErr.cudaErrorNoDevice))
    assert fresh_status().reason == (
        "no usable CUDA GPU (cudaGetDeviceCount failed: cudaErrorNoDevice (no CUDA-capable device is detected))"
    )
    install(monkeypatch, tensorrt=fake_trt(), cudart=fake_cudart(count=0))
    assert fresh_status().reason == "no CUDA GPU found (cudaGetDeviceCount returned 0)"


def test_reason_cuda_python_newer_than_the_driver(monkeypatch, fresh_status):
    # e.g. JetPack 6 (CUDA 12.6 driver) with cuda-python 13 from the package index
    install(monkeypatch, tensorrt=fake_trt(), cudart=fake_cudart(
        driver=12060, runtime=13000, count_err=FakeErr.cudaErrorInsufficientDriver))
    reason = fresh_status().reason
    assert reason.startswith("the NVIDIA driver supports CUDA 12.6, but cuda-python 13.0.0 (cuda.bindings.runtime) "
                             "is built for CUDA 13.0: pip install 'cuda-python>=12,<13' to match the driver")


def test_reason_tensorrt_too_old_or_broken(monkeypatch, fresh_status):
    install(monkeypatch, tensorrt=fake_trt("8.6.2"), cudart=fake_cudart())
    assert "TensorRT 8.6.2 is too old" in fresh_status().reason
    install(monkeypatch, trt_import_error=OSError("libnvinfer.so.10: cannot open shared object file"), cudart=fake_cudart())
    reason = fresh_status().reason
    assert "fail to import (OSError: libnvinfer.so.10" in reason


def test_available_with_tensorrt_and_a_gpu(monkeypatch, fresh_status):
    install(monkeypatch, tensorrt=fake_trt(), cudart=fake_cudart())
    st = fresh_status()
    assert st.available and st.reason == "TensorRT 10.3.0, cuda-python 13.0.0 (cuda.bindings.runtime); GPU: Orin (sm_87, integrated)"
    assert st.devices == ("cuda:0",)


def _installed(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module without __spec__ (a stand-in)
        return name in sys.modules


@pytest.mark.skipif(not _installed("cuda"), reason="cuda-python is not installed here")
@needs_no_trt
def test_real_cuda_python_without_a_driver(fresh_status):
    from edge_assist.backends.trt_cuda import probe

    kind, err, devices = probe()
    if err is None:
        pytest.skip("this machine has a working CUDA driver")
    assert kind.startswith("cuda-python") and devices == []
    assert "cudaGetDeviceCount failed: cudaError" in err


# --- refusals seen by users -------------------------------------------------------------------------

@needs_no_trt
def test_open_backend_trt_says_why(tiny_engines):
    with pytest.raises(BackendError, match="backend 'trt' is unavailable here: .*TensorRT"):
        open_backend("trt", tiny_engines / "quality.onnx")
    assert available_backends()["trt"].reason == TRT.reason


@needs_no_trt
def test_trt_backend_direct(tiny_engines, tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        trt_backend.TrtBackend(tmp_path / "none.onnx")
    with pytest.raises(BackendError, match="unavailable here"):
        trt_backend.TrtBackend(tiny_engines / "quality.onnx", precision="fp16", threads=2, device="cpu", other=1)


@needs_no_trt
def test_cli_backend_trt_exits_2_with_the_reason(tiny_engines, capsys):
    rc = main(["run", "--source", "sim:liver", "--backend", "trt", "--engines", str(tiny_engines), "--no-video"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "backend 'trt' is unavailable here" in err and TRT.reason in err


@needs_no_trt
def test_cli_engines_build_exits_2_with_the_reason(tiny_engines, capsys, tmp_path):
    rc = main(["engines", "build", "--engines", str(tiny_engines), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot build TensorRT engines here" in err and TRT.reason in err
    assert not (tmp_path / "c").exists()


def test_cli_engines_build_refusals(tiny_engines, capsys):
    assert main(["engines", "build", "--engines", str(tiny_engines), "--precision", "int8"]) == 2
    assert "no head has an INT8 model" in capsys.readouterr().err
    assert main(["engines", "build", "--engines", str(tiny_engines), "--workspace-mb", "1"]) == 2
    assert "--workspace-mb must be at least 16" in capsys.readouterr().err
    assert main(["engines"]) == 2


def test_cli_engines_list(tmp_path, capsys, monkeypatch):
    from edge_assist.backends.trt_cache import EngineKey, engine_files, write_entry

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGE_ASSIST_ENGINE_CACHE", str(cache))
    assert main(["engines", "list"]) == 0
    assert "does not exist yet" in capsys.readouterr().out
    key = EngineKey("a" * 64, "10.3.0", "Orin", "8.7", "fp16")
    write_entry(engine_files(cache, Path("quality.onnx"), key), key, b"x", model_path=Path("quality.onnx"))
    (cache / "timing.trt10.3.0.Orin.sm8.7.cache").write_bytes(b"t")
    assert main(["engines", "list"]) == 0
    out = capsys.readouterr().out
    assert f"engine cache: {cache}" in out and "quality.onnx" in out and "TensorRT 10.3.0, Orin (compute 8.7)" in out
    assert "timing cache: timing.trt10.3.0.Orin.sm8.7.cache" in out
    assert main(["engines", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["engines"][0]["key"]["precision"] == "fp16" and data["engines"][0]["engine_present"]


# --- on a GPU with TensorRT (skipped elsewhere) -------------------------------------------------------

@pytest.fixture
def ort_ref(tiny_engines):
    with open_backend("ort", tiny_engines / "quality.onnx") as ref:
        yield ref


def _x(seed=1):
    return np.random.default_rng(seed).random((1, 1, 64, 64), dtype=np.float32)


@needs_gpu
@pytest.mark.parametrize("precision, rtol", [("fp32", 1e-4), ("fp16", 1e-2)])
def test_gpu_matches_ort(tiny_engines, tmp_path, ort_ref, precision, rtol):
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", precision=precision, cache_dir=tmp_path) as b:
        assert b.precision == precision and b.built
        for seed in range(3):
            out, want = b.infer({"image": _x(seed)}), ort_ref.infer({"image": _x(seed)})
            for k in want:
                np.testing.assert_allclose(out[k], want[k], rtol=rtol, atol=1e-3 if precision == "fp16" else 1e-5)
    side = json.loads(next(tmp_path.glob("quality.*.json")).read_text())
    if side.get("layer_precisions"):
        assert side["layer_precisions"].get(precision, 0) > 0


@needs_gpu
def test_gpu_cache_is_reused_and_close_frees(tiny_engines, tmp_path):
    logs = []
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path, log=logs.append) as b:
        assert b.built
    b.close()  # twice is fine
    with pytest.raises(BackendError, match="closed"):
        b.infer({"image": _x()})
    logs.clear()
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path, log=logs.append) as b2:
        assert not b2.built and b2.engine_path == b.engine_path
    assert not [m for m in logs if "building" in m]


@needs_gpu
def test_gpu_cuda_graph_gives_the_same_answers(tiny_engines, tmp_path):
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path) as plain, \
         trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path, cuda_graph=True) as graphed:
        assert graphed.cuda_graph
        for seed in range(3):
            a, g = plain.infer({"image": _x(seed)}), graphed.infer({"image": _x(seed)})
            for k in a:
                np.testing.assert_array_equal(a[k], g[k])


@needs_gpu
def test_gpu_heads_overlap_on_their_own_streams(tiny_engines, tmp_path):
    with trt_backend.TrtBackend(tiny_engines / "quality.onnx", cache_dir=tmp_path) as q, \
         trt_backend.TrtBackend(tiny_engines / "interpreter.onnx", cache_dir=tmp_path) as i:
        want_q, want_i = q.infer({"image": _x()}), i.infer({"image": _x()})
        q.infer_async({"image": _x()})
        i.infer_async({"image": _x()})
        got_i, got_q = i.collect(), q.collect()
        for want, got in ((want_q, got_q), (want_i, got_i)):
            for k in want:
                np.testing.assert_array_equal(want[k], got[k])
        with pytest.raises(BackendError, match="nothing submitted"):
            q.collect()


@needs_gpu
def test_gpu_int8_from_a_qdq_model(tiny_engines, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Frames(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": _x(s)} for s in range(16)])

        def get_next(self):
            return next(self.it, None)

    qdq = tmp_path / "quality_int8.onnx"
    quantize_static(str(tiny_engines / "quality.onnx"), str(qdq), Frames(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    with open_backend("ort", qdq) as ref, \
         trt_backend.TrtBackend(qdq, cache_dir=tmp_path / "cache") as b:  # default precision: the QDQ model decides
        assert b.precision == "int8"
        out, want = b.infer({"image": _x()}), ref.infer({"image": _x()})
        for k in want:
            np.testing.assert_allclose(out[k], want[k], atol=0.05 * float(np.abs(want[k]).max() + 1e-3))


@needs_gpu
def test_gpu_cli_engines_build(tiny_engines, tmp_path, capsys):
    args = ["engines", "build", "--engines", str(tiny_engines), "--cache-dir", str(tmp_path), "--precision", "fp16", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert [e["built"] for e in first["engines"]] == [True, True, True]
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert [e["built"] for e in again["engines"]] == [False, False, False]
    assert os.path.isfile(again["engines"][0]["engine"])
