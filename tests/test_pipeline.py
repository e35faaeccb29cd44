"""The real-time loop with real ONNX models (tiny ones) and real threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_assist.errors import EndOfStream
from edge_assist.frames import Frame, ScanRegion
from edge_assist.heads import HeadSet
from edge_assist.manifest import load_manifest
from edge_assist.pipeline import FrameSlot, Pipeline
from edge_assist.sources.base import FrameSource


class SyntheticSource(FrameSource):
    """A finite or endless stream of speckle frames, produced at `fps` (0 =
    as fast as read() is called). Frame i has brightness offset i % 50."""

    def __init__(self, n: int | None, fps: float = 0.0, live: bool = True, shape=(96, 96), bad: dict | None = None):
        self.uri = "synthetic:"
        self.n, self.fps, self.is_live, self.shape = n, fps, live, shape
        self.nominal_fps = fps or 30.0
        self.bad = bad or {}
        self.i = 0
        self.rng = np.random.default_rng(0)
        self.closed = False

    def read(self, timeout_s: float = 1.0):
        if self.n is not None and self.i >= self.n:
            raise EndOfStream
        if self.fps:
            time.sleep(1.0 / self.fps)
        i = self.i
        self.i += 1
        if i in self.bad:
            px = self.bad[i]
        else:
            px = self.rng.integers(0, 200, size=self.shape, dtype=np.uint8) + np.uint8(i % 50)
        region = ScanRegion((0, 0, self.shape[1], self.shape[0]), "linear", (0.3, 0.3))
        return Frame(px, i, time.monotonic_ns(), region=region)

    def close(self):
        self.closed = True


class SlowBackend:
    """Wraps a real backend and adds a fixed delay (a slower machine)."""

    def __init__(self, inner, delay_s: float):
        self.inner, self.delay_s = inner, delay_s
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.calls = 0

    def infer(self, feed):
        self.calls += 1
        time.sleep(self.delay_s)
        return self.inner.infer(feed)

    def close(self):
        self.inner.close()


def make_heads(engines, slow: dict[str, float] | None = None) -> HeadSet:
    heads = HeadSet(load_manifest(engines))
    for name, delay in (slow or {}).items():
        heads.heads[name].backend = SlowBackend(heads.heads[name].backend, delay)
    return heads


def test_every_frame_processes_all_in_order(tiny_engines, no_thread_leak):
    seen = []
    with make_heads(tiny_engines) as heads, SyntheticSource(25, live=False) as src:
        s = Pipeline(src, heads, every_frame=True, on_result=lambda r: seen.append(r.frame.index)).run()
    assert seen == list(range(25))
    assert (s["frames_in"], s["frames_processed"], s["frames_dropped"], s["frames_skipped"]) == (25, 25, 0, 0)
    assert s["ended"] is True
    assert s["interpreter_mode"] == "sync"
    e = s["e2e_ms"]
    assert 0 < e["p50"] <= e["p95"] <= e["p99"] <= e["p999"] <= e["max"]


def test_newest_frame_wins_and_drops_add_up(tiny_engines, no_thread_leak):
    seen = []
    with make_heads(tiny_engines, {"guidance": 0.02}) as heads, SyntheticSource(80, fps=400) as src:
        s = Pipeline(src, heads, on_result=lambda r: seen.append(r.frame.index)).run()
    assert s["frames_dropped"] > 0
    assert s["frames_in"] == 80
    assert s["frames_in"] == s["frames_processed"] + s["frames_dropped"] + s["frames_skipped"]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert seen[-1] == 79  # the last frame is never lost to a drop at the end of a stream


def test_misses_are_counted_exactly(tiny_engines):
    with make_heads(tiny_engines) as heads:
        with SyntheticSource(15, live=False) as src:
            s = Pipeline(src, heads, every_frame=True, budget_ms=1e-6).run()
        assert s["misses"] == 15 and s["miss_rate"] == 1.0
        with SyntheticSource(15, live=False) as src:
            s = Pipeline(src, heads, every_frame=True, budget_ms=1e6).run()
        assert s["misses"] == 0


def test_interpreter_never_delays_guidance(tiny_engines, no_thread_leak):
    """A 60 ms interpreter beside a 30 fps stream: guidance stays fast; the
    findings lag and say which frame they came from."""
    results = []
    with make_heads(tiny_engines, {"interpreter": 0.06}) as heads, SyntheticSource(45, fps=30) as src:
        s = Pipeline(src, heads, budget_ms=1000, on_result=results.append).run()
    assert s["interpreter_mode"] == "async"
    assert s["e2e_ms"]["p50"] < 30  # far below the interpreter's own 60 ms
    assert 0 < s["interpreter_runs"] < s["frames_processed"]
    lagging = [r for r in results if r.hints.interpreter is not None and r.hints.interpreter.frame_index < r.frame.index]
    assert lagging, "interpreter results should name the (earlier) frame they came from"


def test_interpreter_abstains_on_poor_images(tmp_path):
    from tiny_models import write_tiny_engines

    engines = write_tiny_engines(tmp_path / "e", quality_bias=-8.0)
    results = []
    with make_heads(engines, {}) as heads, SyntheticSource(10, live=False) as src:
        calls_before = 0
        Pipeline(src, heads, every_frame=True, on_result=results.append).run()
    assert all(r.hints.interpreter.abstained for r in results)
    assert all("insufficient" in r.hints.interpreter.text for r in results)


def test_bad_frames_are_skipped_and_counted(tiny_engines):
    bad = {3: np.zeros((96, 96), np.float32), 5: np.zeros((50, 70), np.uint8), 7: np.zeros((2, 2), np.uint8)}
    seen = []
    with make_heads(tiny_engines) as heads, SyntheticSource(12, live=False, bad=bad) as src:
        s = Pipeline(src, heads, every_frame=True, on_result=lambda r: seen.append(r.frame.index)).run()
    assert s["frames_skipped"] == 3
    assert seen == [i for i in range(12) if i not in bad]


def test_stop_from_another_thread_is_clean(tiny_engines, no_thread_leak):
    with make_heads(tiny_engines) as heads, SyntheticSource(None, fps=60) as src:
        pipe = Pipeline(src, heads).start()
        deadline = time.monotonic() + 10
        while pipe.frames_processed < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        pipe.stop()
        pipe.join(5)
        assert pipe.error is None
        assert pipe.frames_processed >= 5
        assert pipe.status == "stopped"
        s = pipe.summary()
        assert s["frames_in"] == s["frames_processed"] + s["frames_dropped"] + s["frames_skipped"]


def test_stalled_live_source_is_not_finished(tiny_engines, no_thread_leak):
    class Stalling(SyntheticSource):
        def read(self, timeout_s=1.0):
            if self.i >= 3:
                time.sleep(timeout_s)
                return None  # no signal: a stall, not an end
            return super().read(timeout_s)

    with make_heads(tiny_engines) as heads, Stalling(None) as src:
        pipe = Pipeline(src, heads).start()
        deadline = time.monotonic() + 20
        while pipe.frames_processed + pipe.frames_dropped < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # several read timeouts pass: still running, not ended
        assert pipe._thread.is_alive() and not pipe.ended
        pipe.stop()
        pipe.join(5)
    assert pipe.frames_in == 3 and pipe.frames_processed + pipe.frames_dropped == 3
    assert pipe.frames_processed >= 1 and pipe.ended is False


def test_max_frames(tiny_engines):
    with make_heads(tiny_engines) as heads, SyntheticSource(None, fps=200) as src:
        s = Pipeline(src, heads, max_frames=7).run()
    assert s["frames_processed"] == 7


def test_guidance_window_stacks_frames(tmp_path):
    from tiny_models import write_tiny_engines

    engines = write_tiny_engines(tmp_path / "e", guidance_frames=3)
    with make_heads(engines) as heads, SyntheticSource(6, live=False) as src:
        s = Pipeline(src, heads, every_frame=True).run()
    assert s["frames_processed"] == 6


def test_slot_every_frame_backpressure():
    slot = FrameSlot(every_frame=True)
    f = Frame(np.zeros((8, 8), np.uint8), 0, 0)
    slot.put(f)
    t = threading.Thread(target=slot.put, args=(Frame(f.pixels, 1, 0),))
    t.start()
    time.sleep(0.05)
    assert t.is_alive()  # blocked: the first frame is not consumed yet
    assert slot.get(1).index == 0
    t.join(2)
    assert slot.get(1).index == 1 and slot.dropped == 0
