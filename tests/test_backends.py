"""The shared backend suite: every backend available here runs the same checks."""

import numpy as np
import pytest

from edge_assist.backends import available_backends, open_backend
from edge_assist.errors import BackendError

AVAILABLE = [name for name, st in available_backends().items() if st.available]
UNAVAILABLE = {name: st.reason for name, st in available_backends().items() if not st.available}


def test_registry_explains_every_backend():
    st = available_backends()
    assert st["ort"].available
    for v in st.values():
        assert v.reason


@pytest.mark.parametrize("name", ["ort", "trt"])
def test_backend_suite(name, tiny_engines):
    if name not in AVAILABLE:
        pytest.skip(f"{name} unavailable here: {UNAVAILABLE[name]}")
    ref = open_backend("ort", tiny_engines / "quality.onnx")
    with open_backend(name, tiny_engines / "quality.onnx") as b:
        (inp,) = b.inputs
        assert inp.name == "image" and inp.shape == (1, 1, 64, 64)
        assert {o.name for o in b.outputs} == {"score", "reason_logits"}
        x = np.random.default_rng(1).random((1, 1, 64, 64), dtype=np.float32)
        out, want = b.infer({"image": x}), ref.infer({"image": x})
        for k in want:
            np.testing.assert_allclose(out[k], want[k], rtol=1e-2 if name != "ort" else 1e-6, atol=1e-5)
        with pytest.raises(BackendError, match="shape"):
            b.infer({"image": np.zeros((1, 1, 32, 32), np.float32)})
        with pytest.raises(BackendError, match="dtype"):
            b.infer({"image": np.zeros((1, 1, 64, 64), np.float64)})
        with pytest.raises(BackendError, match="missing"):
            b.infer({"x": x})
    ref.close()


def test_unknown_and_unavailable_backends(tiny_engines):
    with pytest.raises(BackendError, match="unknown backend"):
        open_backend("tpu", tiny_engines / "quality.onnx")
    if "trt" in UNAVAILABLE:
        with pytest.raises(BackendError, match="unavailable"):
            open_backend("trt", tiny_engines / "quality.onnx")


def test_bad_model_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(BackendError, match="cannot load model"):
        open_backend("ort", bad)
    with pytest.raises(BackendError, match="does not exist"):
        open_backend("ort", tmp_path / "none.onnx")


def test_feed_is_checked_once_per_signature(tiny_engines, monkeypatch):
    """The input check runs for the first feed of each (name, dtype, shape)
    signature; a feed that differs is checked again (and refused)."""
    import edge_assist.backends.base as base

    calls = []
    real = base.check_feed
    monkeypatch.setattr(base, "check_feed", lambda *a: (calls.append(1), real(*a))[1])
    x = np.zeros((1, 1, 64, 64), np.float32)
    with open_backend("ort", tiny_engines / "quality.onnx") as b:
        assert b.cpu_threads == 1  # a CPU session: the pipeline may run it beside another
        for _ in range(3):
            b.infer({"image": x})
        assert len(calls) == 1
        with pytest.raises(BackendError, match="shape"):
            b.infer({"image": np.zeros((1, 1, 32, 32), np.float32)})
        with pytest.raises(BackendError, match="dtype"):
            b.infer({"image": np.zeros((1, 1, 64, 64), np.float64)})
        with pytest.raises(BackendError, match="numpy array"):
            b.infer({"image": x.tolist()})
        with pytest.raises(BackendError, match="unexpected"):
            b.infer({"image": x, "extra": x})
        assert len(calls) == 5  # every refused feed was checked
        b.infer({"image": x})  # a refused feed does not replace the remembered good one
        assert len(calls) == 5
