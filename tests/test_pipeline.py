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
from edge_assist.pipeline import CostChooser, FrameSlot, HeadRunner, Pipeline, Primer
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

    def __init__(self, inner, delay_s: float, fail_at: int | None = None):
        self.inner, self.delay_s, self.fail_at = inner, delay_s, fail_at
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.calls = 0
        self.spans: list[tuple[int, int, str]] = []  # (start ns, end ns, thread name) of each call

    def infer(self, feed):
        self.calls += 1
        t0 = time.perf_counter_ns()
        time.sleep(self.delay_s)
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError(f"boom in call {self.calls}")
        out = self.inner.infer(feed)
        self.spans.append((t0, time.perf_counter_ns(), threading.current_thread().name))
        return out

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
    assert s["capture"]["inline_share"] == 0.0  # behind the source: every frame through the slot


@pytest.mark.parametrize("inline", [True, False])
def test_inline_capture_processes_paced_frames_where_they_are_read(tiny_engines, no_thread_leak, inline):
    """A paced source the pipeline keeps up with: once it has measured that,
    the capture thread processes each frame it reads itself (no hand-off to
    the loop thread); asked not to, every frame goes through the slot."""
    seen = []
    with make_heads(tiny_engines) as heads, SyntheticSource(50, fps=60) as src:
        pipe = Pipeline(src, heads, inline_capture=inline,
                        on_result=lambda r: seen.append((r.frame.index, threading.current_thread().name)))
        s = pipe.run()
    assert [i for i, _ in seen] == sorted(i for i, _ in seen)
    assert s["frames_in"] == s["frames_processed"] + s["frames_dropped"] + s["frames_skipped"] == 50
    by_capture = sum(name == "edge-assist-capture" for _, name in seen)
    if inline:
        assert s["capture"]["inline"] is True and s["capture"]["inline_share"] > 0.5
        assert by_capture >= 30  # all but the first frames, while the processing times are measured
    else:
        assert s["capture"] == {"inline": False, "inline_share": 0.0} and by_capture == 0


class WorkingSource(SyntheticSource):
    """Works 3 ms for each frame after its wait, as the simulator renders."""

    def read(self, timeout_s: float = 1.0):
        frame = super().read(timeout_s)
        t_end = time.thread_time_ns() + 3_000_000
        while time.thread_time_ns() < t_end:
            pass
        return frame


def test_inline_capture_is_not_used_for_sources_that_work_to_read(tiny_engines, no_thread_leak):
    with make_heads(tiny_engines) as heads, WorkingSource(40, fps=60) as src:
        s = Pipeline(src, heads).run()
    assert s["capture"] == {"inline": True, "inline_share": 0.0}
    assert s["frames_in"] == s["frames_processed"] + s["frames_dropped"] + s["frames_skipped"] == 40


def test_inline_capture_gives_way_when_frames_come_faster(tiny_engines, no_thread_leak):
    """Processing slows past half the frame interval mid-stream: the frames go
    through the slot to the loop again (newest wins, drops counted)."""
    seen = []
    with make_heads(tiny_engines, {"guidance": 0.0}) as heads, SyntheticSource(120, fps=100) as src:
        slow = heads.heads["guidance"].backend

        def on_result(r):
            seen.append((r.frame.index, threading.current_thread().name))
            if r.frame.index == 40:
                slow.delay_s = 0.012  # now slower than the source

        s = Pipeline(src, heads, on_result=on_result).run()
    names = [name for i, name in seen if i > 40]
    assert any(name == "edge-assist-capture" for i, name in seen if i < 40)
    assert names[-5:] != ["edge-assist-capture"] * 5  # the loop thread takes over
    assert [i for i, _ in seen] == sorted(i for i, _ in seen)
    assert s["frames_dropped"] > 0
    assert s["frames_in"] == s["frames_processed"] + s["frames_dropped"] + s["frames_skipped"]


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
        Pipeline(src, heads, every_frame=True, on_result=results.append).run()
    assert all(r.hints.interpreter.abstained for r in results)
    assert all("insufficient" in r.hints.interpreter.text for r in results)


def test_interpreter_always_runs_the_model_but_still_abstains(tmp_path, no_thread_leak):
    """Benchmarks load all three heads: below the quality gate the model
    runs (its cost is measured), and the result still abstains."""
    from tiny_models import write_tiny_engines

    engines = write_tiny_engines(tmp_path / "e", quality_bias=-8.0)
    for mode in ("sync", "async"):
        results = []
        with make_heads(engines, {}) as heads, SyntheticSource(10, live=False) as src:
            pipe = Pipeline(src, heads, every_frame=True, interpreter_mode=mode, interpreter_always=True, on_result=results.append)
            s = pipe.run()
        assert s["interpreter_always"] is True
        assert s["interpreter_runs"] >= (10 if mode == "sync" else 1), mode
        assert pipe.log.samples("interpreter"), "the model's time is logged"
        assert all(r.hints.interpreter.abstained for r in results), mode  # a poor frame never shows findings
    with make_heads(engines, {}) as heads, SyntheticSource(10, live=False) as src:
        s = Pipeline(src, heads, every_frame=True, interpreter_mode="sync").run()
    assert s["interpreter_runs"] == 0 and s["interpreter_always"] is False  # the default: the gate decides


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


@pytest.mark.parametrize("parallel", [False, True])
def test_guidance_memory_feeds_an_earlier_hint(tmp_path, parallel, no_thread_leak):
    """A guidance head with memory gets the frame shown about an interval ago
    and the hint shown then. The tiny model makes the move after the
    remembered one win, so once there is a reference every raw guidance is
    the successor of a hint shown earlier; before there is one, it is not."""
    from tiny_models import write_tiny_engines

    from edge_assist.vocab import ACTIONS

    engines = write_tiny_engines(tmp_path / "e", guidance_memory=30.0)
    seen: list[tuple[int, str, str]] = []
    with make_heads(engines) as heads, SyntheticSource(30, fps=200, live=False) as src:
        p = Pipeline(src, heads, every_frame=True, parallel_heads=parallel,
                     on_result=lambda r: seen.append((r.frame.t_capture_ns, r.raw_guidance.action, r.hints.guidance.action)))
        assert p._guidance.memory is not None and p._guidance.memory.interval_ns == 30_000_000
        p.run()
    t0 = seen[0][0]
    successor = lambda a: ACTIONS[(ACTIONS.index(a) + 1) % len(ACTIONS)]  # noqa: E731
    early = [raw for t, raw, _ in seen if t - t0 < 30_000_000]
    assert early and all(raw == early[0] for raw in early)  # no memory yet: the image alone decides
    later = [(t, raw) for t, raw, _ in seen if t - t0 >= 40_000_000]
    assert later
    for t, raw in later:
        shown_before = {successor(h) for ts, _, h in seen if ts <= t - 30_000_000}
        assert raw in shown_before


def test_precise_timers_in_a_thread():
    import sys
    import threading

    from edge_assist.pipeline import precise_timers

    got = []
    t = threading.Thread(target=lambda: got.append(precise_timers()))
    t.start()
    t.join()
    assert got == [sys.platform.startswith("linux")]


def test_sleep_until_never_returns_before_the_due_time():
    """Paced sources stamp a frame with its due time: the wait (slept, then
    spun for the last SPIN_NS) must not hand it over early, and a due time
    beyond the timeout is "not yet" after sleeping the timeout."""
    import time

    from edge_assist.sources.base import SPIN_NS, SPIN_SHARE, sleep_until, spin_for

    assert spin_for(1e9 / 60) == SPIN_NS  # a 60 fps source spins the last 0.2 ms ...
    assert spin_for(1e9 / 6000) * SPIN_SHARE <= 1e9 / 6000  # ... a fast one a small share of its interval
    assert spin_for(0) == 0
    for spin_ns in (SPIN_NS, 0):
        for ahead_ns in (-1_000_000, 50_000, SPIN_NS + 300_000, 3_000_000):
            due = time.monotonic_ns() + ahead_ns
            assert sleep_until(due, timeout_s=1.0, spin_ns=spin_ns)
            assert time.monotonic_ns() >= due
    t0 = time.monotonic_ns()
    assert not sleep_until(t0 + 2_000_000_000, timeout_s=0.01)
    assert time.monotonic_ns() - t0 >= 10_000_000


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
    assert slot.get(0.05) is None  # the turn is still out with frame 0
    slot.release()
    assert slot.get(1).index == 1 and slot.dropped == 0


def test_slot_processing_turn():
    """One thread at a time has the processing turn: get() hands it over with
    a frame, claim() takes it only while no frame waits, release() returns it."""
    slot = FrameSlot(every_frame=False)
    f = Frame(np.zeros((8, 8), np.uint8), 0, 0)
    assert slot.claim()  # nothing waits: the capture thread may process inline
    assert not slot.claim()  # not twice
    slot.put(f)
    assert slot.get(0.05) is None  # the turn is out: the loop does not take the frame
    slot.release()
    assert not slot.claim()  # a frame waits: it goes first, in order
    assert slot.get(1).index == 0
    assert not slot.claim()  # the loop has the turn
    slot.release()
    assert slot.claim()
    slot.release()
    slot.close()
    assert not slot.claim()


# -- parallel heads: guidance in the head runner while the loop runs quality ----------


def test_parallel_heads_default_follows_the_backends(tiny_engines, monkeypatch):
    import os

    with make_heads(tiny_engines) as heads:  # real ORT CPU sessions, one thread each
        assert all(heads.heads[n].backend.cpu_threads == 1 for n in ("quality", "guidance"))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
        p = Pipeline(SyntheticSource(1), heads)
        assert (p.parallel_heads, p.heads_mode) == (True, "adaptive")
        p = Pipeline(SyntheticSource(1), heads, parallel_heads=False)
        assert (p.parallel_heads, p.heads_mode) == (False, "sequential")
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # one core: nothing to overlap on
        p = Pipeline(SyntheticSource(1), heads)
        assert (p.parallel_heads, p.heads_mode) == (False, "sequential")
        p = Pipeline(SyntheticSource(1), heads, parallel_heads=True)
        assert (p.parallel_heads, p.heads_mode) == (True, "parallel")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    with make_heads(tiny_engines, {"guidance": 0.001}) as heads:  # a wrapper that says nothing: sequential
        assert Pipeline(SyntheticSource(1), heads).parallel_heads is False


def test_parallel_heads_overlap_in_time(tiny_engines, no_thread_leak):
    results = []
    with make_heads(tiny_engines, {"quality": 0.03, "guidance": 0.03}) as heads, SyntheticSource(8, live=False) as src:
        s = Pipeline(src, heads, every_frame=True, parallel_heads=True, on_result=results.append).run()
        q, g = heads.heads["quality"].backend, heads.heads["guidance"].backend
    assert s["heads_parallel"] is True and s["frames_processed"] == 8
    assert s["heads_mode"] == "parallel" and s["heads_parallel_share"] == 1.0
    assert len(q.spans) == len(g.spans) == 8
    for (q0, q1, qt), (g0, g1, gt) in zip(q.spans, g.spans):
        assert qt != gt and gt == "edge-assist-heads"
        assert max(q0, g0) < min(q1, g1), "quality and guidance of one frame should run at the same time"
    # stages: guidance is its own time in the runner, guidance_wait what the loop waited for it
    for r in results:
        assert r.heads_parallel
        assert r.stages_ms["guidance"] >= 29 and 0 <= r.stages_ms["guidance_wait"] < r.stages_ms["guidance"]
    assert set(s["stages_ms"]) >= {"quality", "guidance", "guidance_wait"}


@pytest.mark.parametrize("frames", [1, 3])
def test_parallel_and_sequential_heads_agree(tmp_path, frames, no_thread_leak):
    """Every-frame, sync interpreter: the same frames give the same results
    either way (the guidance window of stacked frames included)."""
    from tiny_models import write_tiny_engines

    engines = write_tiny_engines(tmp_path / "e", guidance_frames=frames)
    got = {}
    for par in (False, True):
        res = []
        with make_heads(engines) as heads, SyntheticSource(12, live=False) as src:
            s = Pipeline(src, heads, every_frame=True, parallel_heads=par, on_result=res.append).run()
        assert s["heads_parallel"] is par and s["interpreter_mode"] == "sync"
        assert [r.frame.index for r in res] == list(range(12))
        got[par] = [(r.raw_quality.score, r.raw_guidance.probs, r.hints.interpreter.text) for r in res]
        assert ("guidance_wait" in s["stages_ms"]) is par
    assert got[True] == got[False]


def test_parallel_heads_live_mode_with_async_interpreter(tiny_engines, no_thread_leak):
    with make_heads(tiny_engines, {"interpreter": 0.02}) as heads, SyntheticSource(40, fps=200) as src:
        s = Pipeline(src, heads, parallel_heads=True).run()
    assert s["heads_parallel"] is True and s["interpreter_mode"] == "async"
    assert s["frames_in"] == s["frames_processed"] + s["frames_dropped"] + s["frames_skipped"]
    assert s["interpreter_runs"] > 0


def test_error_in_the_head_runner_surfaces(tiny_engines, no_thread_leak):
    with make_heads(tiny_engines) as heads, SyntheticSource(20, live=False) as src:
        heads.heads["guidance"].backend = SlowBackend(heads.heads["guidance"].backend, 0.0, fail_at=4)
        pipe = Pipeline(src, heads, every_frame=True, parallel_heads=True)
        with pytest.raises(RuntimeError, match="boom in call 4"):
            pipe.run()
    assert pipe.frames_processed == 3


def test_error_in_quality_with_parallel_heads_collects_guidance(tiny_engines, no_thread_leak):
    with make_heads(tiny_engines) as heads, SyntheticSource(20, live=False) as src:
        heads.heads["quality"].backend = SlowBackend(heads.heads["quality"].backend, 0.0, fail_at=2)
        heads.heads["guidance"].backend = SlowBackend(heads.heads["guidance"].backend, 0.02)
        pipe = Pipeline(src, heads, every_frame=True, parallel_heads=True)
        with pytest.raises(RuntimeError, match="boom in call 2"):
            pipe.run()
        assert heads.heads["guidance"].backend.calls == 2  # the runner finished its job before run() returned


def test_error_in_the_head_runner_surfaces_from_a_background_pipeline(tiny_engines, no_thread_leak):
    with make_heads(tiny_engines) as heads, SyntheticSource(None, fps=100) as src:
        heads.heads["guidance"].backend = SlowBackend(heads.heads["guidance"].backend, 0.0, fail_at=3)
        pipe = Pipeline(src, heads, parallel_heads=True).start()
        pipe.join(10)
        assert not pipe._thread.is_alive()
        assert isinstance(pipe.error, RuntimeError) and "boom" in str(pipe.error)


def test_head_runner_hand_off_rules(no_thread_leak):
    r = HeadRunner()
    try:
        with pytest.raises(RuntimeError, match="nothing was submitted"):
            r.result()
        r.submit(lambda x: x * 2, 21)
        with pytest.raises(RuntimeError, match="collect the previous result"):
            r.submit(lambda x: x, 1)
        assert r.result() == 42
        r.submit(lambda x: 1 / x, 0)
        with pytest.raises(ZeroDivisionError):
            r.result()
        r.submit(lambda x: x + 1, 1)  # the runner still works after an error
        assert r.result() == 2
        r.submit(time.sleep, 0.05)  # stop() while a job runs: it ends, then the thread
    finally:
        r.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        r.submit(lambda x: x, 1)
    r2 = HeadRunner()
    r2.submit(lambda x: x, 1)
    r2.stop()  # a job submitted and perhaps not yet taken: no error, no thread left


def test_heads_chooser_measures_both_ways_then_takes_the_cheaper_and_probes():
    c = CostChooser(window=3, probe_every=4)
    cost = {True: 1.0, False: 2.0}
    picks = []
    for _ in range(6):  # the first frames alternate until both ways are measured
        p = c.choose()
        picks.append(p)
        c.add(p, cost[p])
    assert picks == [True, False, True, False, True, False]
    picks = []
    for _ in range(12):
        p = c.choose()
        picks.append(p)
        c.add(p, cost[p])
    assert picks.count(False) == 3 and all(p is False for i, p in enumerate(picks) if (i + 7) % 4 == 0)
    cost = {True: 5.0, False: 2.0}  # the second core got busy: parallel now costs more
    for _ in range(40):
        p = c.choose()
        c.add(p, cost[p])
    picks = [c.choose() for _ in range(8)]
    assert picks.count(True) == 2  # sequential now, parallel only on the probes


def test_adaptive_heads_use_both_ways_and_stay_correct(tiny_engines, no_thread_leak, monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    res = []
    with make_heads(tiny_engines) as heads, SyntheticSource(40, live=False) as src:
        s = Pipeline(src, heads, every_frame=True, on_result=res.append).run()
    assert s["heads_mode"] == "adaptive"
    assert 0 < s["heads_parallel_share"] < 1  # both ways ran (alternating at first, then probes)
    assert [r.frame.index for r in res] == list(range(40))
    for r in res:  # guidance_wait on every frame: all of guidance when in line
        assert (r.stages_ms["guidance_wait"] == r.stages_ms["guidance"]) is (not r.heads_parallel)
    with make_heads(tiny_engines) as heads, SyntheticSource(40, live=False) as src:
        ref = []
        Pipeline(src, heads, every_frame=True, parallel_heads=False, on_result=ref.append).run()
    assert [r.raw_guidance.probs for r in res] == [r.raw_guidance.probs for r in ref]


def test_primer_plans_a_pass_before_the_next_frame_is_due():
    ms = 1_000_000
    pr = Primer(period_ns=10 * ms, adaptive=False)
    assert pr.plan(0) is None  # no frame yet: nothing to foresee
    pr.frame_done(0, 1.0)
    assert pr.lead_ns() == 1 * ms + Primer.MARGIN_MIN_NS  # no pass timed yet: 1 ms assumed
    assert pr.plan(2 * ms) == (10 * ms - pr.lead_ns(), 10 * ms)
    assert pr.plan(9_900_000) is None  # too late for a pass before this frame
    assert pr.plan(10_500_000) == (20 * ms - pr.lead_ns(), 20 * ms)  # that frame is late: the one after
    assert pr.decide(10 * ms) is True and pr.plan(2 * ms) is None  # decided once per due time
    pr.passed(2.0, collided=True)
    assert pr.collisions == 1 and pr.lead_ns() == 2 * ms + Primer.MARGIN_MIN_NS + Primer.MARGIN_STEP_NS
    assert pr.frame_done(10 * ms, 1.0) is True and pr.frames_primed == 1
    assert pr.frame_done(20 * ms, 1.0) is False  # no decision for that one: not primed


def test_primer_learns_the_interval_the_frames_come_at():
    ms = 1_000_000
    pr = Primer(period_ns=10 * ms, adaptive=False)  # the source says 100 fps ...
    for i in range(4):
        pr.frame_done(i * 25 * ms, 1.0)  # ... and delivers 40
    assert pr.period_ns == 10 * ms  # fewer than 5 intervals: the nominal rate
    for i in range(4, 8):
        pr.frame_done(i * 25 * ms, 1.0)
    assert pr.period_ns == 25 * ms
    assert pr.plan(7 * 25 * ms + 2 * ms)[1] == 8 * 25 * ms


def test_adaptive_primer_compares_only_decided_frames():
    pr = Primer(period_ns=10_000_000, adaptive=True)
    pr.frame_done(0, 5.0)  # no gap before it (never decided): not a sample
    assert all(len(d) == 0 for d in pr.chooser.costs.values())
    t = 0
    for _ in range(40):  # primed frames cost 1 ms, unprimed 3 ms
        t += 10_000_000
        primed = pr.decide(t)
        pr.frame_done(t, 1.0 if primed else 3.0)
    picks = [pr.decide(t + i) for i in range(1, 9)]
    assert picks.count(True) >= 7  # primed, except the odd probe


def test_priming_runs_one_pass_per_paced_frame(tiny_engines, no_thread_leak):
    res = []
    with make_heads(tiny_engines, slow={"quality": 0.0, "guidance": 0.0}) as heads, SyntheticSource(40, fps=40) as src:
        pipe = Pipeline(src, heads, prime=True, parallel_heads=False, on_result=res.append)
        s = pipe.run()
        calls = {n: heads.heads[n].backend.calls for n in ("quality", "guidance")}
    pr = s["prime"]
    assert pr["mode"] == "on" and pr["passes"] >= 30 and pr["collisions"] <= pr["passes"]
    # every head ran once per frame plus once per priming pass, no more
    assert calls == {"quality": s["frames_processed"] + pr["passes"], "guidance": s["frames_processed"] + pr["passes"]}
    # each pass primed the frame after it, but the last may have primed for a frame that never came
    assert pr["passes"] - 1 <= sum(r.primed for r in res) <= pr["passes"]
    assert [r.frame.index for r in res] == sorted(r.frame.index for r in res)


def test_priming_is_off_in_every_frame_mode_and_when_asked(tiny_engines, no_thread_leak):
    with make_heads(tiny_engines, slow={"quality": 0.0}) as heads:
        with SyntheticSource(10, live=False) as src:
            s = Pipeline(src, heads, every_frame=True, prime=True).run()
        assert s["prime"]["mode"] == "off" and s["prime"]["passes"] == 0
        with SyntheticSource(10, fps=40) as src:
            s = Pipeline(src, heads, prime=False).run()
        assert s["prime"] == {"mode": "off", "share": 0.0, "passes": 0, "collisions": 0, "lead_ms": None, "pass_ms": None}
        assert heads.heads["quality"].backend.calls == 20 == 10 + s["frames_processed"]
