"""OpenIGTLink against a real pyigtl server on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import threading
import time

import numpy as np
import pyigtl
import pytest

from edge_assist.errors import SourceError
from edge_assist.sources import open_source
from edge_assist.sources.igtl import image_to_frame_parts

H, W = 48, 64
SPACING = np.diag([0.2, 0.3, 1.0, 1.0])  # i (columns) 0.2 mm, j (rows) 0.3 mm

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image(marker: int) -> np.ndarray:
    """(k=1, j=H, i=W) voxels, different for every marker."""
    base = (np.arange(H * W, dtype=np.int64).reshape(H, W) * 7 + marker * 31) % 256
    return base.astype(np.uint8)[np.newaxis]


def wait_until(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def servers():
    """Makes pyigtl servers (in the main thread: they install signal
    handlers), stops them all and restores the handlers afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    made = []

    def make(port):
        srv = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()
    for s, h in saved.items():
        signal.signal(s, h)


def stream(srv, markers, fps=30.0, device="Image") -> threading.Thread:
    def run():
        for m in markers:
            srv.send_message(pyigtl.ImageMessage(image(m), ijk_to_world_matrix=SPACING, device_name=device), wait=False)
            time.sleep(1.0 / fps)

    t = threading.Thread(target=run, name="test-sender", daemon=True)
    t.start()
    return t


def receive(src, srv, markers, timeout_s=10.0) -> tuple[list, int]:
    """Streams `markers` at 30 fps while reading; returns (frames, dropped)."""
    dropped0 = src.frames_dropped
    sender = stream(srv, markers)
    frames, deadline = [], time.monotonic() + timeout_s
    while len(frames) + src.frames_dropped - dropped0 < len(markers) and time.monotonic() < deadline:
        f = src.read(timeout_s=0.5)
        if f is not None:
            frames.append(f)
    sender.join(timeout=5)
    return frames, src.frames_dropped - dropped0


def check_frames(frames, markers, dropped) -> None:
    got = [next(m for m in markers if np.array_equal(f.pixels, image(m)[0])) for f in frames]
    if dropped == 0:
        assert got == list(markers)
    else:  # a badly stalled reader on a busy machine: still in order, losses counted
        assert got == sorted(got) and len(got) + dropped == len(markers)
    for f in frames:
        assert f.pixels.shape == (H, W) and f.pixels.dtype == np.uint8
        assert f.region.box == (0, 0, W, H)
        assert f.spacing_mm == pytest.approx((0.3, 0.2))
        assert f.meta["device"] == "Image"
    assert [f.index for f in frames] == sorted(f.index for f in frames)


def test_stream_server_loss_and_return(servers):
    port = free_port()
    srv = servers(port)
    before = set(threading.enumerate())
    src = open_source(f"igtl://127.0.0.1:{port}?device=Image")
    try:
        assert src.is_live and src.frame_count is None
        wait_until(srv.is_connected, 10, "the client to connect")
        # Another device's images and other message types are ignored.
        srv.send_message(pyigtl.ImageMessage(image(99), device_name="Other"), wait=False)
        srv.send_message(pyigtl.StringMessage("hello", device_name="Image"), wait=False)
        frames, dropped = receive(src, srv, range(30))
        check_frames(frames, range(30), dropped)
        assert src.status == "ok"
        wait_until(lambda: src.messages_ignored == 2, 5, "ignored messages to be counted")

        # The server goes away: no signal, reads time out (never EndOfStream).
        srv.stop()
        wait_until(lambda: src.status == "no signal", 10, "status 'no signal'")
        assert src.read(timeout_s=0.3) is None

        # It comes back on the same port: the source reconnects and resumes.
        threads_before_srv2 = set(threading.enumerate())
        srv2 = servers(port)
        srv2_threads = set(threading.enumerate()) - threads_before_srv2
        wait_until(srv2.is_connected, 15, "the client to reconnect")
        frames, dropped = receive(src, srv2, range(100, 110))
        check_frames(frames, range(100, 110), dropped)
        assert src.status == "ok" and src.connections == 2
    finally:
        src.close()
    # Nothing the source started outlives close().
    left = {t for t in threading.enumerate() if t.is_alive()} - before - srv2_threads
    assert not left, [t.name for t in left]
    assert src.read(timeout_s=0.1) is None


def test_unreachable_server_is_no_signal_not_an_error(no_thread_leak):
    port = free_port()  # nothing listens here
    t0 = time.monotonic()
    with open_source(f"igtl://127.0.0.1:{port}") as src:
        assert src.read(timeout_s=0.3) is None
        assert src.status == "no signal"
        wait_until(lambda: "cannot connect" in src.last_error, 5, "a connect error")
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    "uri, needle",
    [
        ("igtl://127.0.0.1", "no port"),
        ("igtl://127.0.0.1:abc", "bad port"),
        ("igtl://127.0.0.1:70000", "bad port"),
        ("igtl:127.0.0.1:18944", "no host"),
        ("igtl://:18944", "no host"),
        ("igtl://127.0.0.1:18944?colour=1", "unknown option"),
    ],
)
def test_malformed_uri_is_one_line(uri, needle):
    with pytest.raises(SourceError) as ei:
        open_source(uri)
    msg = str(ei.value)
    assert needle in msg and "\n" not in msg


def roundtrip(voxels, matrix=SPACING):
    """Pack and unpack with pyigtl, as the wire does."""
    data = pyigtl.ImageMessage(voxels, ijk_to_world_matrix=matrix, device_name="Image").pack()
    msg = pyigtl.ImageMessage()
    msg.unpack(pyigtl.MessageBase.parse_header(data[:58]), data[58:])
    return image_to_frame_parts(msg)


def test_image_layouts():
    # PLUS/Slicer layout (k=1, j, i): rows j (0.3 mm), columns i (0.2 mm).
    px, sp = roundtrip(image(5))
    assert np.array_equal(px, image(5)[0]) and sp == pytest.approx((0.3, 0.2))
    # RGB components (k=1, j, i, 3) stay RGB.
    rgb = np.stack([image(1)[0], image(2)[0], image(3)[0]], axis=-1)[np.newaxis]
    px, _ = roundtrip(rgb)
    assert px.shape == (H, W, 3) and np.array_equal(px, rgb[0])
    # A plain 2-D array sent by pyigtl arrives as (H, W, 1): rows k, columns j.
    px, sp = roundtrip(image(7)[0], np.diag([1.0, 0.25, 0.5, 1.0]))
    assert np.array_equal(px, image(7)[0]) and sp == pytest.approx((0.5, 0.25))
    # 16-bit: scaled by the type's range, not per frame.
    px, _ = roundtrip(np.full((1, 4, 4), 65535, np.uint16))
    assert px.dtype == np.uint8 and (px == 255).all()
    with pytest.raises(ValueError, match="3-D volume"):
        roundtrip(np.zeros((3, 4, 5), np.uint8))
