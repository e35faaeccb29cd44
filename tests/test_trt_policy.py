"""Precision decisions, engine layer checks, build progress and the build plan:
the TensorRT path's logic that needs no TensorRT."""

import time
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_assist.backends.trt_build import Heartbeat, ProgressReporter, detect_platform, run_build
from edge_assist.backends.trt_cuda import DeviceInfo
from edge_assist.backends.trt_policy import (
    Platform,
    check_layer_precisions,
    classify_format,
    compose_status,
    fast_precisions_for_cc,
    layer_precisions,
    onnx_has_qdq,
    precision_refusal,
    resolve_precision,
    static_shape,
    trt_version_problem,
)
from edge_assist.errors import BackendError, EdgeAssistError
from edge_assist.trt_cli import build_plan


def qdq_model(path):
    """image -> QuantizeLinear -> DequantizeLinear -> Relu: a minimal QDQ graph."""
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
        helper.make_node("Relu", ["dq"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 8, 8])], inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


# --- which GPUs are fast at what ----------------------------------------------------------

@pytest.mark.parametrize(
    "cc, fp16, int8",
    [
        ((5, 2), False, False),  # Maxwell desktop
        ((5, 3), True, False),  # Jetson Nano
        ((6, 0), True, False),  # P100
        ((6, 1), False, True),  # consumer Pascal: FP16 at 1/64 rate, DP4A INT8
        ((6, 2), True, False),  # Jetson TX2
        ((7, 2), True, True),  # Xavier
        ((8, 7), True, True),  # Orin
        ((8, 9), True, True),  # RTX 40
        ((12, 0), True, True),
    ],
)
def test_fast_precisions_for_cc(cc, fp16, int8):
    assert fast_precisions_for_cc(*cc) == (fp16, int8)


def test_detect_platform_from_device():
    dev = DeviceInfo(0, "Orin", 8, 7, integrated=True, can_map_host_memory=True)
    pf = detect_platform("10.3.0", dev)
    assert pf == Platform("10.3.0", "Orin", "8.7", True, True, True, True)
    assert dev.describe() == "Orin (sm_87, integrated)"


def test_refusals_say_what_to_do_instead():
    nano = Platform("10.3.0", "NVIDIA Tegra X1", "5.3", fast_fp16=True, fast_int8=False)
    pascal = Platform("10.3.0", "Quadro P2000", "6.1", fast_fp16=False, fast_int8=True)
    assert precision_refusal("fp32", nano) is None and precision_refusal("fp16", nano) is None
    msg = precision_refusal("int8", nano)
    assert "NVIDIA Tegra X1 (compute capability 5.3) has no fast INT8" in msg and "--precision fp16" in msg
    msg = precision_refusal("fp16", pascal)
    assert "no fast FP16" in msg and "nothing was built" in msg and "--precision fp32" in msg
    assert precision_refusal("int8", pascal) is None
    assert "unknown precision" in precision_refusal("fp8", pascal)
    trt11 = Platform("11.4.0", "NVIDIA GeForce RTX 4090", "8.9")
    assert "strongly typed" in precision_refusal("fp16", trt11) and "nothing was built" in precision_refusal("fp16", trt11)
    assert precision_refusal("int8", trt11) is None and precision_refusal("fp32", trt11) is None


# --- INT8 only from QDQ models -------------------------------------------------------------

def test_qdq_detection(tmp_path, tiny_engines):
    assert onnx_has_qdq(qdq_model(tmp_path / "q.onnx"))
    for name in ("quality", "guidance", "interpreter"):
        assert not onnx_has_qdq(tiny_engines / f"{name}.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert not onnx_has_qdq(tmp_path / "empty.onnx")


def test_resolve_precision():
    assert resolve_precision("fp16", False, "m.onnx") == ("fp16", None)
    assert resolve_precision("fp32", False, "m.onnx") == ("fp32", None)
    assert resolve_precision("int8", True, "m.onnx") == ("int8", None)
    prec, note = resolve_precision("fp32", True, "quality_int8.onnx")  # HeadSet opens the QDQ file with defaults
    assert prec == "int8" and "INT8 (QDQ) model" in note
    with pytest.raises(BackendError, match="no quantisation .*no calibrator is used"):
        resolve_precision("int8", False, "m.onnx")
    with pytest.raises(BackendError, match="fp16 was asked for"):
        resolve_precision("fp16", True, "m.onnx")
    with pytest.raises(BackendError, match="unknown precision"):
        resolve_precision("bf16", False, "m.onnx")


# --- the built engine's layer precisions ------------------------------------------------------

def _layer(kind, *formats):
    return {"Name": kind, "LayerType": kind, "Inputs": [{"Format/Datatype": formats[0]}],
            "Outputs": [{"Format/Datatype": f} for f in formats[1:]]}


@pytest.mark.parametrize(
    "text, want",
    [
        ("Row major linear FP32", "fp32"),
        ("Row major linear FP16 format", "fp16"),
        ("Channel major FP16 format where channel % 8 == 0", "fp16"),
        ("Thirty-two wide channel vectorized row major Int8 format.", "int8"),
        ("Float", "fp32"),  # TensorRT 10.9 style
        ("Half", "fp16"),
        ("Int8", "int8"),
        ("BFloat16", "bf16"),
        ("Row major linear Int32", "int"),
        ("N/A due to dynamic shapes", "unknown"),
    ],
)
def test_classify_format(text, want):
    assert classify_format(text) == want


def test_layer_precisions_from_inspector_json():
    info = {"Layers": [
        _layer("Reformat", "Row major linear FP32", "Row major linear FP16 format"),  # bookkeeping: not counted
        _layer("CaskConvolution", "Row major linear FP16 format", "Row major linear FP16 format"),
        _layer("CaskConvolution", "Int8", "Float"),  # an INT8 conv writing FP32 is INT8 work
        _layer("gemm", "Float", "Float"),
        {"Name": "{ForeignNode[/head/Gemm...score]}", "LayerType": "Myelin", "Inputs": [{"Format/Datatype": "Float"}]},
    ], "Bindings": ["image", "score"]}
    import json

    counts = layer_precisions(json.dumps(info))
    assert counts == Counter({"fp16": 1, "int8": 1, "fp32": 1, "fused": 1})
    trt11 = {"Layers": [{"LayerType": "CaskConvolution", "Inputs": [{"DataType": "Half", "Format": "Channel major"}],
                         "Outputs": [{"DataType": "Half"}]}]}  # TensorRT 11 splits Format/Datatype
    assert layer_precisions(trt11) == Counter({"fp16": 1})
    assert layer_precisions(None) is None
    assert layer_precisions("not json") is None
    assert layer_precisions({"Layers": ["conv1 + relu1", "fc"]}) is None  # ONELINE / LAYER_NAMES_ONLY


def test_an_engine_with_no_layer_in_the_wanted_precision_is_refused():
    ok, msg = check_layer_precisions("fp16", Counter({"fp32": 5}))
    assert not ok and "no layer in fp16" in msg and "refusing" in msg
    ok, msg = check_layer_precisions("int8", Counter({"fp16": 2, "fp32": 1}))
    assert not ok and "no layer in int8" in msg
    ok, msg = check_layer_precisions("fp16", Counter({"fp16": 7, "fp32": 2}))
    assert ok and msg == "layers: 7 fp16, 2 fp32"
    ok, msg = check_layer_precisions("fp16", Counter({"fused": 1, "fp32": 1}))  # Myelin: IO types only
    assert ok and "fused" in msg and "enforced" in msg
    ok, msg = check_layer_precisions("int8", None)
    assert ok and "not checked" in msg


def test_static_shape():
    assert static_shape("image", (1, 1, 64, 64)) == (1, 1, 64, 64)
    assert static_shape("image", (-1, 1, 64, 64)) == (1, 1, 64, 64)  # dynamic batch -> 1
    with pytest.raises(BackendError, match="dynamic dimensions \\[2, 3\\].*fixed input size"):
        static_shape("image", (1, 1, -1, -1))


# --- availability reasons -----------------------------------------------------------------

def test_compose_status():
    st = compose_status(trt_version=None, trt_error="TensorRT missing", cuda_kind=None, cuda_error="cuda-python missing")
    assert not st.available and st.reason == "TensorRT missing; cuda-python missing"
    st = compose_status(trt_version="8.6.2", trt_error=None, cuda_kind="cuda-python 12.6", cuda_error=None, gpus=["Orin"])
    assert not st.available and "TensorRT 8.6.2 is too old" in st.reason
    st = compose_status(trt_version="10.3.0", trt_error=None, cuda_kind="cuda-python 12.6", cuda_error=None,
                        gpus=["Orin (sm_87, integrated)"])
    assert st.available and st.reason == "TensorRT 10.3.0, cuda-python 12.6; GPU: Orin (sm_87, integrated)"
    assert st.devices == ("cuda:0",)
    assert trt_version_problem("10.0.1") is None and "cannot read" in trt_version_problem("x.y")


# --- progress while building ---------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_heartbeat_speaks_only_when_quiet():
    clock, logs = FakeClock(), []
    hb = Heartbeat("quality.onnx (fp16)", logs.append, every_s=10, clock=clock)
    clock.t = 9.9
    assert not hb.beat()
    clock.t = 10.0
    assert hb.beat() and logs == ["quality.onnx (fp16): still building (10 s so far) ..."]
    clock.t = 15
    hb.touch()  # progress was shown
    clock.t = 24
    assert not hb.beat()
    clock.t = 25
    assert hb.beat()


def test_run_build_beats_while_the_build_runs(no_thread_leak):
    logs = []
    hb = Heartbeat("m", logs.append, every_s=0.05)
    assert run_build(lambda: time.sleep(0.3) or "PLAN", hb, lambda: None, poll_s=0.01) == "PLAN"
    assert logs and all("m: still building" in m for m in logs)


def test_run_build_passes_errors_on(no_thread_leak):
    def fail():
        raise ValueError("parser exploded")

    order = []
    with pytest.raises(ValueError, match="parser exploded"):
        run_build(fail, Heartbeat("m", lambda m: None), lambda: None,
                  setup=lambda: order.append("enter"), teardown=lambda: order.append("exit"))
    assert order == ["enter", "exit"]


def test_ctrl_c_cancels_the_build(no_thread_leak):
    import threading

    cancelled = threading.Event()

    class Interrupting(Heartbeat):
        def beat(self):
            raise KeyboardInterrupt  # as if Ctrl-C arrived while waiting

    def build():  # like TensorRT: stops once the progress monitor says so
        assert cancelled.wait(5)
        return None

    logs = []
    with pytest.raises(KeyboardInterrupt):
        run_build(build, Interrupting("m", logs.append), cancelled.set, log=logs.append, poll_s=0.01)
    assert cancelled.is_set() and any("cancelling the build" in m for m in logs)


def test_progress_reporter():
    clock, logs = FakeClock(), []
    hb = Heartbeat("m", lambda m: None, clock=clock)
    r = ProgressReporter("quality.onnx (fp16)", logs.append, hb, min_interval_s=2, max_depth=2, clock=clock)
    r.phase_start("Building engine", None, 4)
    r.phase_start("Tactic timing", "Building engine", 10)
    r.phase_start("Kernel search", "Tactic timing", 100)  # too deep: not shown
    assert r.step_complete("Kernel search", 5)
    clock.t = 1
    assert r.step_complete("Building engine", 0)  # throttled
    clock.t = 3
    assert r.step_complete("Building engine", 1)
    r.phase_finish("Kernel search")
    assert logs == [
        "quality.onnx (fp16): Building engine (4 steps)",
        "quality.onnx (fp16):   Tactic timing (10 steps)",
        "quality.onnx (fp16): Building engine: 50%",
    ]
    assert hb._last == 3  # progress output resets the heartbeat
    r.cancel()
    assert r.step_complete("Building engine", 2) is False  # asks TensorRT to stop


# --- what `engines build` builds per head -----------------------------------------------------

def test_build_plan(tiny_engines, tmp_path):
    from edge_assist.manifest import load_manifest

    heads = load_manifest(tiny_engines).heads
    plan = build_plan(heads, "fp16")
    assert [(p.head, p.model_path.name, p.precision) for p in plan] == [
        ("quality", "quality.onnx", "fp16"), ("guidance", "guidance.onnx", "fp16"),
        ("interpreter", "interpreter.onnx", "fp16"),
    ]
    assert [p.head for p in build_plan(heads, "fp32", ["guidance"])] == ["guidance"]
    with pytest.raises(EdgeAssistError, match="unknown head"):
        build_plan(heads, "fp32", ["nope"])
    with pytest.raises(EdgeAssistError, match="no head has an INT8 model.*calibrate"):
        build_plan(heads, "int8")

    q = qdq_model(tmp_path / "quality_int8.onnx")
    heads["quality"].int8_path = q
    plan = build_plan(heads, "int8")
    assert (plan[0].model_path, plan[0].precision, plan[0].note) == (q, "int8", None)
    assert plan[1].precision == "fp32" and "kept it FP32" in plan[1].note
