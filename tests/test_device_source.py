"""Capture devices. This machine has none, so: clear errors, an empty list,
and the live-capture thread driven by a real cv2.VideoCapture on a file."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_assist.errors import SourceError
from edge_assist.sources import open_source
from edge_assist.sources.device import DeviceSource, list_devices


def one_line_error(uri: str) -> str:
    with pytest.raises(SourceError) as ei:
        open_source(uri)
    msg = str(ei.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.skipif(Path("/dev/video99").exists(), reason="this machine has a /dev/video99")
def test_missing_device_is_one_line_naming_it():
    msg = one_line_error("device:99")
    assert "/dev/video99" in msg and "edge-assist sources" in msg
    msg = one_line_error("device:/dev/video98?width=640&height=480")
    assert "/dev/video98" in msg


def test_bad_device_specs():
    assert "device:N" in one_line_error("device:camera")
    assert "width" in one_line_error("device:0?width=wide")
    assert "unknown option" in one_line_error("device:0?zoom=2")


@pytest.mark.skipif(cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER), reason="this OpenCV has GStreamer")
def test_gstreamer_pipeline_without_gstreamer_says_so():
    assert "GStreamer" in one_line_error("videotestsrc ! videoconvert ! appsink")
    assert "GStreamer" in one_line_error("device:videotestsrc ! appsink")


def test_list_devices():
    devices = list_devices()
    assert isinstance(devices, list)
    if not list(Path("/dev").glob("video*")):
        assert devices == []
    for d in devices:
        assert d["uri"].startswith("device:") and d["path"].startswith("/dev/video")


def test_capture_thread_newest_frame_then_stall(tmp_path, no_thread_leak):
    # A file read through the live-device code path: it decodes as fast as it
    # can (like a camera nobody waits for), then stops delivering (a stall).
    path = tmp_path / "cam.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    for i in range(30):
        w.write(np.full((48, 64, 3), (10, 20, 8 * i), np.uint8))  # BGR: red channel = 8*i
    w.release()
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    src = DeviceSource(cap, uri="device:test", name="test")
    try:
        assert src.is_live and src.frame_count is None
        got, deadline = [], time.monotonic() + 10
        while src.frames_captured < 30 and time.monotonic() < deadline:
            f = src.read(timeout_s=0.2)
            if f is not None:
                got.append(f)
            time.sleep(0.01)  # a slow reader: older frames get overwritten
        assert src.frames_captured == 30
        last = src.read(timeout_s=0.5)
        if last is not None:
            got.append(last)
        idx = [f.index for f in got]
        assert idx == sorted(set(idx)) and idx[-1] == 29  # in order, newest last
        assert len(got) + src.frames_dropped == 30
        for f in got:  # RGB order, content matches the index
            assert abs(int(f.pixels[..., 0].mean()) - 8 * f.index) <= 4 and f.pixels[..., 2].mean() < 20
        # The "device" delivers nothing more: a stall, not the end.
        t0 = time.monotonic()
        assert src.read(timeout_s=0.3) is None
        assert time.monotonic() - t0 >= 0.25
        assert src.status == "no signal"
    finally:
        src.close()
    assert not src._thread.is_alive()
    assert src.read(timeout_s=0.1) is None
