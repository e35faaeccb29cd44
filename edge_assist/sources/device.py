"""Capture cards and UVC devices through OpenCV.

  device:N[?width=&height=&fps=]            /dev/videoN via V4L2 on Linux
  device:/dev/videoN[?width=&height=&fps=]
  device:v4l2src ! videoconvert ! appsink   a GStreamer pipeline (needs an
                                            OpenCV built with GStreamer; the
                                            pip wheels are not)

A background thread reads the device continuously and keeps only the newest
frame (a live source is never waited for); frames overwritten before anyone
read them are counted in `frames_dropped` and show as gaps in Frame.index.
When the device stops delivering (stall, unplugged) read() returns None and
`status` says "no signal"; the thread keeps retrying, with back-off, and
reopens the device after a second of failures (a replugged camera comes back).
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl

import cv2

from edge_assist.errors import SourceError
from edge_assist.frames import Frame
from edge_assist.sources.base import FrameSource
from edge_assist.sources.folder import natural_key
from edge_assist.sources.video import parse_fps, to_rgb_or_grey

REOPEN_AFTER_S = 1.0
BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0


def list_devices() -> list[dict]:
    """Video capture nodes on this machine: [{"uri", "path", "name"}].
    Linux only (/dev/video*); elsewhere devices cannot be listed without
    opening them, so the list is empty and device:N must be tried."""
    if not sys.platform.startswith("linux"):
        return []
    found = []
    for path in sorted(Path("/dev").glob("video*"), key=lambda p: natural_key(p.name)):
        m = re.fullmatch(r"video(\d+)", path.name)
        if not m:
            continue
        try:
            name = (Path("/sys/class/video4linux") / path.name / "name").read_text().strip()
        except OSError:
            name = ""
        found.append({"uri": f"device:{m.group(1)}", "path": str(path), "name": name})
    return found


@contextlib.contextmanager
def _quiet_opencv():
    """OpenCV logs multi-line WARNs when a device fails to open; we raise one
    clear line instead."""
    log = cv2.utils.logging
    old = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        log.setLogLevel(old)


class DeviceSource(FrameSource):
    is_live = True

    def __init__(
        self,
        cap: "cv2.VideoCapture",
        *,
        uri: str,
        name: str,
        reopen: Callable[[], "cv2.VideoCapture | None"] | None = None,
    ):
        """`cap` is an opened capture that this source now owns (its thread
        reads and releases it); `reopen` makes a fresh one after failures."""
        self.uri = uri
        self.name = name
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.nominal_fps = float(fps) if 0 < fps <= 1000 else None
        self.frames_captured = 0
        self.frames_dropped = 0
        self._cap = cap
        self._reopen = reopen
        self._latest: Frame | None = None
        self._status = "ok"
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"edge-assist {uri}", daemon=True)
        self._thread.start()

    @property
    def status(self) -> str:
        return self._status

    def _run(self) -> None:
        backoff, failing_since = BACKOFF_START_S, None
        try:
            while not self._stop.is_set():
                ok, img = self._cap.read() if self._cap is not None else (False, None)
                t = time.monotonic_ns()
                if ok and img is not None:
                    backoff, failing_since = BACKOFF_START_S, None
                    frame = Frame(pixels=to_rgb_or_grey(img, bgr=True), index=self.frames_captured,
                                  t_capture_ns=t, meta={"source": "device"})
                    with self._cond:
                        if self._latest is not None:
                            self.frames_dropped += 1
                        self._latest = frame
                        self.frames_captured += 1
                        self._status = "ok"
                        self._cond.notify_all()
                    continue
                # No frame: a stall or an unplugged device. Not the end: retry.
                self._status = "no signal"
                now = time.monotonic()
                failing_since = failing_since or now
                if self._reopen is not None and now - failing_since > REOPEN_AFTER_S:
                    if self._cap is not None:
                        self._cap.release()
                    with _quiet_opencv():
                        self._cap = self._reopen()
                    failing_since = time.monotonic()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            # The capture is released by the thread that reads it: releasing it
            # from close() while read() runs here would be a use-after-free.
            if self._cap is not None:
                self._cap.release()
                self._cap = None

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while self._latest is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(remaining)
            frame, self._latest = self._latest, None
            return frame

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        # A V4L2 read that blocks (stalled device) returns within its select
        # timeout; we asked for 1 s in _configure. If it still runs after the
        # join, the daemon thread releases the capture when read() returns.
        self._thread.join(timeout=3.0)


def _parse(rest: str, uri: str, options: dict) -> tuple[str, dict]:
    spec, _, query = rest.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    params.update({k: v for k, v in options.items() if v is not None})
    unknown = sorted(set(params) - {"width", "height", "fps"})
    if unknown:
        raise SourceError(f"unknown option(s) {', '.join(unknown)} in {uri}; device: accepts width, height, fps")
    out: dict = {}
    for key in ("width", "height"):
        if key in params:
            try:
                out[key] = int(params[key])
                if out[key] <= 0:
                    raise ValueError
            except (TypeError, ValueError):
                raise SourceError(f"bad {key} {params[key]!r} in {uri}; give a positive number of pixels") from None
    if "fps" in params:
        out["fps"] = parse_fps(params["fps"], uri)
    return spec.strip(), out


def _configure(cap: "cv2.VideoCapture", opts: dict) -> None:
    # Requests, not guarantees: the driver picks the nearest mode it supports.
    if "width" in opts:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, opts["width"])
    if "height" in opts:
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, opts["height"])
    if "fps" in opts:
        cap.set(cv2.CAP_PROP_FPS, opts["fps"])
    cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, 1000)  # so a stalled device lets close() finish


def _open_v4l2_or_any(target: int | str) -> "cv2.VideoCapture | None":
    backends = [cv2.CAP_V4L2, cv2.CAP_ANY] if sys.platform.startswith("linux") else [cv2.CAP_ANY]
    with _quiet_opencv():
        for backend in backends:
            cap = cv2.VideoCapture(target, backend)
            if cap.isOpened():
                return cap
            cap.release()
    return None


def open_device(rest: str, *, uri: str, every_frame: bool = False, **options) -> DeviceSource:
    """device:N, device:/dev/videoN or a GStreamer pipeline (see module doc).
    every_frame has no meaning for a live device and is ignored."""
    if "!" in rest:
        return _open_gstreamer(rest.strip(), uri)
    spec, opts = _parse(rest, uri, options)
    hint = "run `edge-assist sources` to list capture devices"
    if spec.isdigit():
        target: int | str = int(spec)
        node = f"/dev/video{spec}"
    elif spec.startswith("/dev/"):
        target = node = spec
    else:
        raise SourceError(f"bad device {spec!r} in {uri}; use device:N, device:/dev/videoN or a GStreamer pipeline")
    if sys.platform.startswith("linux") and not Path(node).exists():
        raise SourceError(f"capture device {node} does not exist ({uri}); {hint}")

    def make() -> "cv2.VideoCapture | None":
        cap = _open_v4l2_or_any(target)
        if cap is not None:
            _configure(cap, opts)
        return cap

    cap = make()
    if cap is None:
        raise SourceError(
            f"cannot open capture device {node} ({uri}): busy, no permission (join the 'video' group) "
            f"or not a capture node; {hint}"
        )
    return DeviceSource(cap, uri=uri, name=node, reopen=make)


def _open_gstreamer(pipeline: str, uri: str) -> DeviceSource:
    if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        raise SourceError(
            "this OpenCV has no GStreamer support (the opencv-python pip wheels never do); "
            "use device:N, or install an OpenCV built with GStreamer (e.g. the distribution's python3-opencv)"
        )
    with _quiet_opencv():
        cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    if not cap.isOpened():
        cap.release()
        raise SourceError(
            f"GStreamer pipeline did not start: {pipeline!r}; check it with gst-launch-1.0 "
            "(it must end in appsink) or run `edge-assist sources` to list capture devices"
        )
    return DeviceSource(cap, uri=uri, name="gstreamer")
