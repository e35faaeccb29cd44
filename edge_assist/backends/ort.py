"""ONNX Runtime backend: the default that runs on any CPU.

Uses CUDA / TensorRT execution providers when the installed onnxruntime has
them and they are asked for; plain CPU otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_assist.backends.base import BackendStatus, InferenceBackend, TensorSpec
from edge_assist.errors import BackendError

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}

# Friendly names for --device / providers.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def status() -> BackendStatus:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return BackendStatus("ort", False, f"onnxruntime is not installed ({exc}); pip install onnxruntime")
    provs = ort.get_available_providers()
    names = tuple(k for k, v in PROVIDERS.items() if v in provs)
    return BackendStatus("ort", True, f"onnxruntime {ort.__version__}, providers: {', '.join(provs)}", names)


def _spec(node) -> TensorSpec:
    dtype = _ORT_TYPES.get(node.type)
    if dtype is None:
        raise BackendError(f"model tensor {node.name!r} has unsupported type {node.type}")
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorSpec(node.name, shape, np.dtype(dtype))


class OrtBackend(InferenceBackend):
    name = "ort"

    def __init__(self, model_path: str | Path, *, threads: int = 1, device: str = "cpu", spinning: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a run-time dependency
            raise BackendError("onnxruntime is not installed; pip install onnxruntime") from exc
        path = Path(model_path)
        self._model_name = path.name
        if not path.is_file():
            raise BackendError(f"model file {path} does not exist; run `make models` or `edge-assist export`")
        opts = ort.SessionOptions()
        # FACTS: several multi-threaded sessions with spinning fight over 2 cores;
        # by default one thread per session and no spinning.
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        wanted = PROVIDERS.get(device)
        if wanted is None:
            raise BackendError(f"unknown ort device {device!r}; use one of {', '.join(PROVIDERS)}")
        avail = ort.get_available_providers()
        if wanted not in avail:
            raise BackendError(f"onnxruntime here has no {wanted} (it has {', '.join(avail)}); use --device cpu")
        providers = [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for bad models
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"cannot load model {path}: {first[:200]}; re-export it with `edge-assist export`") from exc
        self.inputs = [_spec(i) for i in self._session.get_inputs()]
        self.outputs = [_spec(o) for o in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self.providers = self._session.get_providers()
        # ORT releases the GIL in run(): on the CPU provider a session can run
        # beside another one (the pipeline's parallel heads), one core each.
        self.cpu_threads = opts.intra_op_num_threads if self.providers[0] == "CPUExecutionProvider" else None

    def _run(self, feed):
        values = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        self._session = None
