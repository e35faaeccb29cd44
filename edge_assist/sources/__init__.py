"""Frame sources and `open_source(uri)`.

URIs:
  sim:PRESET?seed=N&probe=...        the virtual patient (edge_assist.sim)
  file:PATH                          a video file via OpenCV (mp4/avi/mov)
  folder:DIR                         an image sequence (PNG/JPEG/BMP), natural order
  dicom:PATH                         a single- or multi-frame ultrasound DICOM
  device:N  or a GStreamer pipeline  a capture card / UVC device via OpenCV
  igtl://HOST:PORT[?device=NAME]     OpenIGTLink IMAGE messages (PLUS, 3D Slicer)

Implementations are imported lazily so one missing optional dependency never
breaks the others.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from edge_assist.errors import EndOfStream, SourceError
from edge_assist.sources.base import FrameSource

__all__ = ["FrameSource", "EndOfStream", "SourceError", "open_source", "SOURCE_KINDS"]


@dataclass(frozen=True)
class SourceKind:
    scheme: str
    module: str
    factory: str
    example: str
    description: str


SOURCE_KINDS: dict[str, SourceKind] = {
    k.scheme: k
    for k in [
        SourceKind("sim", "edge_assist.sources.sim", "open_sim", "sim:liver?seed=1", "virtual patient (B-mode simulator)"),
        SourceKind("file", "edge_assist.sources.video", "open_video", "file:clip.mp4", "video file (mp4/avi/mov) via OpenCV"),
        SourceKind("folder", "edge_assist.sources.folder", "open_folder", "folder:frames/", "image sequence (PNG/JPEG/BMP)"),
        SourceKind("dicom", "edge_assist.sources.dicom", "open_dicom", "dicom:cine.dcm", "ultrasound DICOM, single- or multi-frame"),
        SourceKind("device", "edge_assist.sources.device", "open_device", "device:0", "capture card / UVC device via OpenCV"),
        SourceKind("igtl", "edge_assist.sources.igtl", "open_igtl", "igtl://127.0.0.1:18944", "OpenIGTLink IMAGE stream (PLUS, 3D Slicer)"),
    ]
}


def split_uri(uri: str) -> tuple[str, str]:
    """'file:a.mp4' -> ('file', 'a.mp4'); 'igtl://h:p' -> ('igtl', '//h:p')."""
    scheme, sep, rest = uri.partition(":")
    if " ! " in uri and scheme.lower() not in SOURCE_KINDS:
        # A bare GStreamer pipeline ("v4l2src ! videoconvert ! appsink",
        # "rtspsrc location=rtsp://... ! ..."): a capture device.
        return "device", uri
    if not sep or not scheme:
        raise SourceError(
            f"source {uri!r} has no scheme; use one of "
            + ", ".join(k.example for k in SOURCE_KINDS.values())
        )
    return scheme.lower(), rest


def open_source(uri: str, *, every_frame: bool = False, **options) -> FrameSource:
    """Open a frame source by URI. `every_frame` turns off real-time pacing
    for finite sources (offline processing)."""
    scheme, rest = split_uri(uri)
    kind = SOURCE_KINDS.get(scheme)
    if kind is None:
        raise SourceError(
            f"unknown source scheme {scheme!r} in {uri!r}; known: "
            + ", ".join(sorted(SOURCE_KINDS))
        )
    try:
        module = importlib.import_module(kind.module)
    except ImportError as exc:
        raise SourceError(f"source kind {scheme!r} is not available here ({exc}); install edge-assist's dependencies") from exc
    factory: Callable[..., FrameSource] = getattr(module, kind.factory)
    return factory(rest, uri=uri, every_frame=every_frame, **options)
