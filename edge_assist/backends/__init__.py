"""Inference backends behind one protocol, and a registry that says why each
one can or cannot run here. Nothing GPU-specific is imported at import time."""

from __future__ import annotations

import importlib
from pathlib import Path

from edge_assist.backends.base import BackendStatus, InferenceBackend, TensorSpec
from edge_assist.errors import BackendError

__all__ = ["BackendStatus", "InferenceBackend", "TensorSpec", "available_backends", "open_backend", "BACKENDS"]

# name -> module with status() and a backend class named in _CLASSES
BACKENDS = {"ort": "edge_assist.backends.ort", "trt": "edge_assist.backends.trt"}
_CLASSES = {"ort": "OrtBackend", "trt": "TrtBackend"}


def available_backends() -> dict[str, BackendStatus]:
    out = {}
    for name, mod in BACKENDS.items():
        try:
            out[name] = importlib.import_module(mod).status()
        except ImportError as exc:
            out[name] = BackendStatus(name, False, f"not built into this install ({exc})")
    return out


def open_backend(name: str, model_path: str | Path, **options) -> InferenceBackend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)} (see `edge-assist backends`)")
    st = available_backends()[name]
    if not st.available:
        raise BackendError(f"backend {name!r} is unavailable here: {st.reason}")
    module = importlib.import_module(BACKENDS[name])
    return getattr(module, _CLASSES[name])(model_path, **options)
