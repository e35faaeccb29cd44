"""TensorRT backend (issue: TensorRT path). Imports tensorrt lazily."""

from __future__ import annotations

from edge_assist.backends.base import BackendStatus


def status() -> BackendStatus:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return BackendStatus(
            "trt", False,
            "TensorRT Python bindings are not installed (JetPack ships them on Jetson; "
            "on x86 install edge-assist[gpu] where NVIDIA's index is reachable)",
        )
    return BackendStatus("trt", False, "the TensorRT runtime backend is not implemented yet in this version")
