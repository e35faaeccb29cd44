"""Measurements for `edge-assist bench`: the pipeline, the naive loop, the
bare-inference limit, CPU and memory, and the machine.

Definitions (also in benchmarks/README.md):

- e2e (end to end): from the frame's capture time to its hints being ready:
  capture hand-off and any wait in the slot, preprocess, quality, guidance,
  the interpreter when it runs in the loop (sync mode; in async mode it runs
  beside the loop and is not on this path), hint smoothing. The sink comes
  after and is reported as its own stage. With the replay source the capture
  time is the frame's due time on the source clock, so a late capture thread
  counts against the pipeline.
- service: e2e minus the capture stage: the processing loop's own time.
- limit: bare `session.run` of quality, guidance and interpreter one after the
  other on a ready-made preprocessed tensor (the last one the pipeline
  prepared), with the very sessions (and so session options) the pipeline
  used, in the same process, right after the pipeline run; for paced live
  runs half its sets come right before the pipeline run (on the source's
  first frame, preprocessed the same way) and half right after, pooled
  (`limit_sets_before_pipeline`), so the VM's drifting speed weighs on both.
- overhead ratio: e2e p50 / limit p50.
- overhead_ms: e2e p50 - limit p50, in milliseconds. With parallel heads
  (`heads_parallel`: the pipeline ran guidance in a second thread while the
  loop ran quality) the pipeline can beat the sequential limit and the ratio
  can fall below 1: the limit stays the two heads back to back, and
  overhead_ms says plainly what the rest of the pipeline costs beyond it.
  `heads_mode`: "adaptive" (the default where parallel is possible: each frame
  takes the way, parallel or sequential, that costs less here now, probing the
  other now and then), "parallel" or "sequential" (forced);
  `heads_parallel_share`: the share of counted frames whose heads overlapped.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_assist.bench_sources import T_READ_KEY
from edge_assist.errors import EdgeAssistError, EndOfStream
from edge_assist.guidance_memory import GuidanceFeed, one_hot
from edge_assist.move_check import MoveCheckFeed
from edge_assist.metrics import summarize_ms
from edge_assist.vocab import ACTIONS

# guidance_wait: with parallel heads, how long the loop waited for guidance
# after its own quality run (then "guidance" is guidance's time in its thread).
STAGES = ("capture", "preprocess", "quality", "guidance", "guidance_wait", "interpreter", "move_check", "hints", "sink")


def _ms(ns: int) -> float:
    return ns / 1e6


def pct(samples) -> dict:
    """summarize_ms with rounded values (3 decimals) for JSON."""
    s = summarize_ms(samples)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}


# --------------------------------------------------------------------------- per-frame record


class FrameRecorder:
    """Per-frame timeline in preallocated arrays (so recording does not grow
    memory frame by frame): completion time, e2e, capture stage, missed,
    interpreter ran, frame index."""

    FIELDS = ("t_done_ns", "e2e_ms", "capture_ms", "missed", "interp", "index", "source_late_ms")

    def __init__(self, capacity: int):
        self.n = 0
        self._alloc(max(256, int(capacity)))
        self.last_tensor = None

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "a", None)
        a = np.zeros((cap, len(self.FIELDS)), dtype=np.float64)
        a.fill(np.nan)  # touch every page now: no RSS growth while recording
        if old is not None:
            a[: self.n] = old[: self.n]
        self.a = a

    def add(self, t_done_ns: int, e2e_ms: float, capture_ms: float, missed: bool, interp: bool, index: int,
            source_late_ms: float = np.nan) -> None:
        if self.n >= len(self.a):
            self._alloc(2 * len(self.a))
        self.a[self.n] = (t_done_ns, e2e_ms, capture_ms, missed, interp, index, source_late_ms)
        self.n += 1

    def on_result(self, r) -> None:  # Pipeline's on_result hook (timed as part of the sink stage)
        f = r.frame
        t_read = f.meta.get(T_READ_KEY)
        late = _ms(t_read - f.t_capture_ns) if t_read is not None else np.nan
        self.add(time.monotonic_ns(), r.e2e_ms, r.stages_ms.get("capture", 0.0), r.missed_budget, r.interpreter_ran, f.index, late)
        self.last_tensor = r.prepared.tensor

    def capture_split(self, first: int) -> dict | None:
        """The capture stage of the counted frames split into the source's
        lateness (due time -> read() returned) and the hand-off (-> the loop
        took the frame: slot, thread wake-up, waiting while the loop was busy)."""
        v = self.view()
        late, cap = v["source_late_ms"][first:], v["capture_ms"][first:]
        ok = ~np.isnan(late)
        if not ok.any():
            return None
        return {"source_late_ms": pct(late[ok]), "handoff_ms": pct((cap - late)[ok])}

    def view(self) -> dict[str, np.ndarray]:
        return {k: self.a[: self.n, j] for j, k in enumerate(self.FIELDS)}


# --------------------------------------------------------------------------- CPU and memory


class ResourceMonitor:
    """RSS samples over time and CPU use between mark() and stop().

    CPU: this process's user+system time over wall time (1.0 = one core busy);
    `others_cores`: what the rest of the machine used meanwhile (load by other
    users: a disturbed measurement shows here)."""

    def __init__(self):
        import psutil

        self._psutil = psutil
        self.proc = psutil.Process()
        self.samples: list[tuple[int, float]] = []  # (monotonic_ns, rss MB)
        self._mark = None
        self._end = None

    def _snap(self):
        ct = self.proc.cpu_times()
        st = self._psutil.cpu_times()
        busy = sum(getattr(st, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
        return time.monotonic_ns(), ct.user + ct.system, busy

    def sample(self) -> None:
        self.samples.append((time.monotonic_ns(), self.proc.memory_info().rss / 2**20))

    def mark(self) -> None:
        self._mark = self._snap()
        self.sample()

    def stop(self) -> None:
        self.sample()
        self._end = self._snap()

    def report(self) -> dict:
        if self._mark is None or self._end is None:
            return {}
        (t0, p0, s0), (t1, p1, s1) = self._mark, self._end
        wall = max(1e-9, (t1 - t0) / 1e9)
        proc = (p1 - p0) / wall
        others = max(0.0, (s1 - s0) / wall - proc)
        ts = np.array([t for t, _ in self.samples if t0 <= t <= t1], dtype=np.float64)
        rss = np.array([m for t, m in self.samples if t0 <= t <= t1], dtype=np.float64)
        all_rss = [m for _, m in self.samples]
        slope = 0.0
        if len(ts) >= 3 and ts[-1] > ts[0]:
            slope = float(np.polyfit((ts - ts[0]) / 60e9, rss, 1)[0])  # MB per minute
        return {
            "cpu": {
                "process_cores": round(proc, 3),
                "process_percent": round(100 * proc, 1),
                "machine_cores": os.cpu_count(),
                "others_cores": round(others, 3),
                "loadavg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            },
            "rss_mb": round(max(all_rss), 2) if all_rss else 0.0,
            "rss": {
                "start_mb": round(float(rss[0]), 2) if rss.size else 0.0,
                "end_mb": round(float(rss[-1]), 2) if rss.size else 0.0,
                "peak_mb": round(max(all_rss), 2) if all_rss else 0.0,
                "range_mb": round(float(rss.max() - rss.min()), 2) if rss.size else 0.0,
                "slope_mb_per_min": round(slope, 3),
                "growth_mb": round(slope * wall / 60.0, 3),
                "samples": int(rss.size),
            },
        }

    def timeline(self, t_ref_ns: int) -> tuple[np.ndarray, np.ndarray]:
        t = np.array([(t - t_ref_ns) / 1e9 for t, _ in self.samples])
        m = np.array([m for _, m in self.samples])
        return t, m


# --------------------------------------------------------------------------- a measured phase


@dataclass
class Phase:
    """What one measured phase (pipeline or naive) produced."""

    kind: str
    stages: dict[str, list[float]]
    e2e: list[float]
    service: list[float]
    frames: dict[str, int]
    window_s: float
    budget_ms: float
    recorder: FrameRecorder
    monitor: ResourceMonitor
    t_window_ns: tuple[int, int]
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        counted = self.frames["counted"]
        f = self.frames
        dropped_w = f["window_dropped"]
        offered_w = f["window_offered"]
        out = {
            "kind": self.kind,
            "e2e_ms": pct(self.e2e),
            "service_ms": pct(self.service),
            "stages_ms": {k: pct(self.stages[k]) for k in STAGES if self.stages.get(k)},
            "fps": round(counted / self.window_s, 3) if self.window_s > 0 else 0.0,
            "window_s": round(self.window_s, 3),
            "budget_ms": round(self.budget_ms, 4),
            "misses": f["misses"],
            "miss_rate": round(f["misses"] / counted, 6) if counted else 0.0,
            "drop_rate": round(dropped_w / offered_w, 6) if offered_w else 0.0,
            "frames": dict(self.frames),
        }
        out.update(self.monitor.report())
        if out.get("cpu") and f.get("window_processed"):
            # CPU time per frame: much less sensitive to other load than wall latency
            out["cpu"]["ms_per_frame"] = round(out["cpu"]["process_cores"] * self.window_s * 1000 / f["window_processed"], 4)
            out["cpu"]["interpreter_share"] = round(f["interpreter_runs"] / max(1, f["processed"]), 4)
        if out.get("rss") and f.get("window_processed"):
            out["rss"]["growth_bytes_per_frame"] = round(out["rss"]["growth_mb"] * 2**20 / f["window_processed"], 1)
        out.update(self.extra)
        return out


def source_drops(source) -> int:
    """Frames the source itself lost because its reader was late: the replay
    FIFO's `frames_dropped`; a live source's `frames_skipped` (the simulator
    skips to the frame due now). A file source's `frames_skipped` counts
    damaged frames, not drops, and is not counted here."""
    n = getattr(source, "frames_dropped", None)
    if n is None and getattr(source, "is_live", False):
        n = getattr(source, "frames_skipped", 0)
    return int(n or 0)


def _wait_until(pred, timeout_s: float, monitor: ResourceMonitor, what: str, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout_s
    next_sample = time.monotonic()
    while not pred():
        if not alive():
            return
        if time.monotonic() > deadline:
            raise EdgeAssistError(f"benchmark stalled: {what} did not happen within {timeout_s:.0f} s; is the source delivering frames?")
        if time.monotonic() >= next_sample:
            monitor.sample()
            next_sample += 0.1
        time.sleep(0.01)


def run_pipeline_phase(source, heads, *, budget_ms, every_frame, interpreter_mode, warmup_frames, duration_s,
                       capacity_hint: int, parallel_heads: bool | None = None, interpreter_always: bool = False,
                       prime: bool | None = None, inline_capture: bool = True) -> Phase:
    """Run the real Pipeline: warm-up frames are not counted; then the
    measured window lasts duration_s; then stop()."""
    from edge_assist.pipeline import Pipeline

    rec = FrameRecorder(capacity_hint)
    mon = ResourceMonitor()
    pipe = Pipeline(source, heads, [], budget_ms=budget_ms, every_frame=every_frame, interpreter_mode=interpreter_mode,
                    on_result=rec.on_result, warmup_frames=warmup_frames, parallel_heads=parallel_heads,
                    interpreter_always=interpreter_always, prime=prime, inline_capture=inline_capture)
    src_dropped = lambda: source_drops(source)  # noqa: E731
    mon.sample()
    pipe.start()
    try:
        alive = lambda: pipe._thread is not None and pipe._thread.is_alive()  # noqa: E731
        _wait_until(lambda: pipe.frames_processed >= warmup_frames, 60.0, mon, f"warm-up ({warmup_frames} frames)", alive)
        t_w0 = time.monotonic_ns()
        snap0 = (pipe.frames_in, pipe.frames_dropped, src_dropped(), pipe.frames_skipped)
        mon.mark()
        end = time.monotonic() + duration_s
        while time.monotonic() < end and alive():
            mon.sample()
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
        t_w1 = time.monotonic_ns()
        snap1 = (pipe.frames_in, pipe.frames_dropped, src_dropped(), pipe.frames_skipped)
        mon.stop()
    finally:
        pipe.stop()
        pipe.join(30)
    if pipe.error is not None:
        raise pipe.error
    s = pipe.summary()
    log = pipe.log
    stages = {k: log.samples(k) for k in STAGES}
    e2e = log.samples("e2e")
    cap = stages.get("capture", [])
    service = [e - c for e, c in zip(e2e, cap)] if len(cap) == len(e2e) else []
    counted = max(0, pipe.frames_processed - warmup_frames)
    frames = {
        "offered": s["frames_in"] + src_dropped(),
        "in": s["frames_in"],
        "processed": s["frames_processed"],
        "skipped": s["frames_skipped"],
        "dropped_slot": s["frames_dropped"],
        "dropped_source": src_dropped(),
        "warmup": warmup_frames,
        "counted": counted,
        "misses": s["misses"],
        "interpreter_runs": s["interpreter_runs"],
        "window_offered": (snap1[0] + snap1[2]) - (snap0[0] + snap0[2]),
        "window_dropped": (snap1[1] + snap1[2]) - (snap0[1] + snap0[2]),
        "window_skipped": snap1[3] - snap0[3],
    }
    # the window's processed frames are counted from the recorder (completion time inside the window)
    v = rec.view()
    frames["window_processed"] = int(np.count_nonzero((v["t_done_ns"] >= t_w0) & (v["t_done_ns"] <= t_w1)))
    window_s = (t_w1 - t_w0) / 1e9
    ph = Phase("pipeline", stages, e2e, service, frames, window_s, pipe.budget_ms, rec, mon, (t_w0, t_w1),
               extra={"interpreter_mode": pipe.interpreter_mode, "interpreter_always": pipe.interpreter_always,
                      "mode": s["mode"], "ended": s["ended"],
                      "heads_parallel": pipe.parallel_heads, "heads_mode": s["heads_mode"],
                      "heads_parallel_share": round(s["heads_parallel_share"], 4), "prime": s["prime"],
                      "capture_inline": s["capture"]})
    # fps from frames completed inside the window (frames after the warm-up are
    # counted for latency even if they finish after the window closes)
    ph.extra["fps_window"] = round(frames["window_processed"] / window_s, 3) if window_s > 0 else 0.0
    split = rec.capture_split(warmup_frames)
    if split:
        ph.extra["capture_split_ms"] = split
    return ph


def run_naive_phase(source, heads, *, budget_ms, warmup_frames, duration_s, capacity_hint: int) -> Phase:
    """The loop one writes first: read a frame, preprocess, run every head on
    every frame (the interpreter too, whatever the quality), smooth, deliver;
    one thread, no slot, no gating. Reads are in order: a slow loop gets the
    source's buffered (stale) frames, and the source drops what overflows."""
    from edge_assist.hints import HintSmoother
    from edge_assist.pipeline import precise_timers

    precise_timers()  # the source is read in this thread: pace it as the pipeline's capture thread does
    pre = heads.preprocessor()
    smoother = HintSmoother()
    guidance = GuidanceFeed.for_head(heads.heads["guidance"].spec)
    checks = MoveCheckFeed.for_smoother(heads, smoother)
    rec = FrameRecorder(capacity_hint)
    mon = ResourceMonitor()
    stages: dict[str, list[float]] = {k: [] for k in STAGES}
    e2e_all: list[float] = []
    service: list[float] = []
    processed = skipped = misses = 0
    src_dropped = lambda: source_drops(source)  # noqa: E731
    delivered = 0
    snap0 = None
    t_w0 = t_w1 = 0
    end = None
    next_sample = time.monotonic()
    mon.sample()
    ended = False
    while True:
        now_s = time.monotonic()
        if now_s >= next_sample:  # between frames, outside every timed stage
            mon.sample()
            next_sample = now_s + 0.1
        if end is not None and now_s >= end:
            break
        try:
            frame = source.read(timeout_s=0.1)
        except EndOfStream:
            ended = True
            break
        if frame is None:
            continue
        delivered += 1
        t_deq = time.monotonic_ns()
        st = {"capture": _ms(t_deq - frame.t_capture_ns)}
        px = frame.pixels
        if not (isinstance(px, np.ndarray) and px.dtype == np.uint8 and min(px.shape[:2]) >= 8):
            skipped += 1
            continue
        t = time.perf_counter_ns()

        def lap(name):
            nonlocal t
            now = time.perf_counter_ns()
            st[name] = _ms(now - t)
            t = now

        prep = pre(frame)
        lap("preprocess")
        q = heads.quality(prep.tensor)
        lap("quality")
        g = heads.guidance(*guidance.inputs(prep.tensor, frame.t_capture_ns))
        lap("guidance")
        interp = heads.interpreter(prep.tensor, frame_index=frame.index, quality=q, mm_per_px=prep.mm_per_px, run_always=True,
                                   source=(frame.pixels, prep.region))
        lap("interpreter")
        check = None
        if checks is not None:
            check = checks.reading(heads, smoother.undo, prep.tensor, frame.t_capture_ns)
            lap("move_check")
        hints = smoother.hints(frame.index, frame.t_capture_ns, q, g, interp, check=check)
        guidance.record(frame.t_capture_ns, prep.tensor, hints.guidance.action)
        if checks is not None:
            checks.record(frame.t_capture_ns, prep.tensor, hints.guidance.action)
        lap("hints")
        e2e = _ms(time.monotonic_ns() - frame.t_capture_ns)
        t_sink = time.perf_counter_ns()
        t_read = frame.meta.get(T_READ_KEY) if frame.meta else None
        rec.add(time.monotonic_ns(), e2e, st["capture"], e2e > budget_ms, True, frame.index,
                _ms(t_read - frame.t_capture_ns) if t_read is not None else np.nan)
        rec.last_tensor = prep.tensor
        st["sink"] = _ms(time.perf_counter_ns() - t_sink)
        del hints
        processed += 1
        if processed == warmup_frames:
            t_w0 = time.monotonic_ns()
            snap0 = (delivered, src_dropped(), skipped)
            mon.mark()
            end = time.monotonic() + duration_s
        elif processed > warmup_frames:
            for k, v in st.items():
                stages[k].append(v)
            e2e_all.append(e2e)
            service.append(e2e - st["capture"])
            misses += int(e2e > budget_ms)
    t_w1 = time.monotonic_ns()
    if snap0 is None:  # the source ended inside the warm-up
        snap0 = (delivered, src_dropped(), skipped)
        t_w0 = t_w1
        mon.mark()
    mon.stop()
    counted = max(0, processed - warmup_frames)
    frames = {
        "offered": delivered + src_dropped(),
        "in": delivered,
        "processed": processed,
        "skipped": skipped,
        "dropped_slot": 0,
        "dropped_source": src_dropped(),
        "warmup": warmup_frames,
        "counted": counted,
        "misses": misses,
        "interpreter_runs": processed,
        "window_offered": (delivered + src_dropped()) - (snap0[0] + snap0[1]),
        "window_dropped": src_dropped() - snap0[1],
        "window_skipped": skipped - snap0[2],
        "window_processed": counted,
    }
    window_s = (t_w1 - t_w0) / 1e9
    ph = Phase("naive", stages, e2e_all, service, frames, window_s, budget_ms, rec, mon, (t_w0, t_w1),
               extra={"interpreter_mode": "every frame, in the loop", "mode": "in order, no slot", "ended": ended,
                      "heads_parallel": False, "heads_mode": "sequential", "heads_parallel_share": 0.0})
    ph.extra["fps_window"] = round(counted / window_s, 3) if window_s > 0 else 0.0
    split = rec.capture_split(warmup_frames)
    if split:
        ph.extra["capture_split_ms"] = split
    return ph


# --------------------------------------------------------------------------- the limit


def _bare_runner(head):
    """The barest call the backend offers: ORT's session.run with prebuilt
    output names, else the backend's _run (no input checks)."""
    b = head.backend
    inner = getattr(b, "inner", b)  # test wrappers
    sess = getattr(inner, "_session", None)
    names = getattr(inner, "_output_names", None)
    if sess is not None and names is not None:
        return (lambda feed: sess.run(names, feed)), "session.run"
    return inner._run, f"{type(inner).__name__}._run"


# A bracketing limit whose halves differ by more than this says the machine's
# speed moved during the run: its overhead ratio is uncertain by about as much.
LIMIT_DRIFT_WARN = 0.10


def limit_drift(before: np.ndarray, after: np.ndarray) -> dict:
    """How far the bare quality + guidance time moved between the limit's
    sets taken before the pipeline ran and those after (p50s, ms; `change`
    = after / before - 1). A VM whose host is busy, or a Jetson that
    throttles as it warms, changes speed within minutes; both halves are
    pooled into the limit, and this says how much they disagree."""
    b, a = float(np.median(before)), float(np.median(after))
    change = a / b - 1.0 if b > 0 else float("nan")
    # ns precision: with tiny models (~0.04 ms) 4 decimals would not give `change` back to 1e-3
    return {"before_p50": round(b, 6), "after_p50": round(a, 6), "change": round(change, 4),
            "warn": bool(abs(change) > LIMIT_DRIFT_WARN)}


def measure_limit(heads, tensor: np.ndarray, *, iterations: int, max_s: float, pace_fps: float = 0.0,
                  on_path: np.ndarray | None = None, warmup: int = 20, earlier: dict | None = None) -> dict:
    """Bare session.run of quality, guidance and interpreter, one after the
    other, on one ready tensor, in the calling thread; each head timed.

    limit_ms sums, per iteration, the heads that are on a frame's end-to-end
    path in the pipeline: quality + guidance, plus the interpreter where
    `on_path` (cycled: the pipeline's per-frame record) says it ran inside the
    loop (sync mode). limit_all_ms is all three every time.

    pace_fps > 0: one set of runs per tick of a clock at that rate, sleeping
    in between, as a frame-paced workload does (a core that idles between
    frames wakes with cold caches: on this project's VM a tiny model takes
    0.8 ms instead of 0.02 ms after 16 ms of sleep). pace_fps = 0: back to
    back (hot).

    earlier: the "limit_raw" of a call made before the pipeline ran (same
    heads, same pacing): its sets are pooled with these, so the limit
    brackets the pipeline run in time and a drift of the machine's speed
    during the run weighs on both alike."""
    runs = {}
    method = None
    for name in ("quality", "guidance", "interpreter"):
        h = heads.heads[name]
        frames = h.spec.frames
        x = tensor if frames == 1 else np.ascontiguousarray(np.concatenate([tensor] * frames, axis=1))
        fn, method = _bare_runner(h)
        feed = {h.spec.input_name: x}
        if h.spec.action_input:  # guidance with memory: a previous move, as the pipeline feeds it
            feed[h.spec.action_input] = one_hot(ACTIONS[0])
        runs[name] = (fn, feed)
    q_s, g_s, i_s = [], [], []
    pc = time.perf_counter_ns
    for _ in range(warmup):
        for fn, feed in runs.values():
            fn(feed)
    qf, qfeed = runs["quality"]
    gf, gfeed = runs["guidance"]
    inf, ifeed = runs["interpreter"]
    period_ns = int(1e9 / pace_fps) if pace_fps and pace_fps > 0 else 0
    if period_ns:
        iterations = min(iterations, max(50, int(max_s * pace_fps)))
    deadline = time.monotonic() + max_s
    next_tick = time.monotonic_ns() + period_ns
    cpu0 = time.process_time()
    for i in range(max(1, iterations)):
        if period_ns:
            wait = next_tick - time.monotonic_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            next_tick += period_ns
        t0 = pc()
        qf(qfeed)
        t1 = pc()
        gf(gfeed)
        t2 = pc()
        inf(ifeed)
        t3 = pc()
        q_s.append(t1 - t0)
        g_s.append(t2 - t1)
        i_s.append(t3 - t2)
        if not period_ns and i >= 50 and time.monotonic() > deadline:
            break
    cpu_ms = (time.process_time() - cpu0) * 1000
    q, g, it = (np.asarray(a, dtype=np.float64) / 1e6 for a in (q_s, g_s, i_s))
    raw = {"q": q, "g": g, "it": it, "cpu_ms": cpu_ms}  # this call's own sets: another call's `earlier`
    sets_before, drift = 0, None
    if earlier is not None and len(earlier["q"]):
        sets_before = len(earlier["q"])
        drift = limit_drift(earlier["q"] + earlier["g"], q + g)
        q, g, it = (np.concatenate([earlier[k], v]) for k, v in (("q", q), ("g", g), ("it", it)))
        cpu_ms += earlier["cpu_ms"]
    cpu_ms_per_set = cpu_ms / max(1, len(q))
    if on_path is None or len(on_path) == 0:
        path = np.zeros(len(q), dtype=bool)
    else:
        path = np.resize(np.asarray(on_path, dtype=bool), len(q))
    total = q + g + np.where(path, it, 0.0)
    return {
        "limit_ms": pct(total),
        "limit_all_ms": pct(q + g + it),
        "limit_heads_ms": {"quality": pct(q), "guidance": pct(g), "interpreter": pct(it)},
        "limit_interpreter_on_path": round(float(path.mean()), 4),
        "limit_method": method,
        "limit_cpu_ms_per_set": round(cpu_ms_per_set, 4),  # process CPU time per set of all three heads
        "limit_pacing": f"one set every {1000 / pace_fps:.2f} ms (paced at {pace_fps:.1f} fps), sleeping in between" if period_ns else "back to back (hot)",
        "limit_sets_before_pipeline": sets_before,
        "limit_drift": drift,
        "limit_samples": total,
        "limit_all_samples": q + g + it,
        "limit_raw": raw,
    }


# --------------------------------------------------------------------------- the machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu() -> str | None:
    tegra = _read("/etc/nv_tegra_release").strip()
    if tegra:
        model = _read("/proc/device-tree/model").strip("\x00\n ")
        return f"{model or 'NVIDIA Jetson'} ({tegra.splitlines()[0][:80]})"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return "; ".join(line.strip() for line in out.stdout.strip().splitlines())
        except (OSError, subprocess.SubprocessError):
            pass
    return None


def machine_info() -> dict:
    cpuinfo = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), None)
    flags_line = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "neon", "asimd") if f in flags_line]
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil is a bench dependency
        physical, mem_gb = None, None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = os.cpu_count()
    providers = None
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:  # pragma: no cover
        pass
    commit = None
    try:
        root = Path(__file__).resolve().parent.parent
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        if r.returncode == 0:
            commit = r.stdout.strip()
            d = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
            if d.returncode == 0 and d.stdout.strip():
                commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cores_logical": os.cpu_count(),
        "cores_physical": physical,
        "cores_usable": affinity,
        "cpu_flags": flags,
        "memory_gb": mem_gb,
        "gpu": _gpu(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {
            k: _version(d)
            for k, d in (
                ("edge-assist", "edge-assist"),
                ("numpy", "numpy"),
                ("onnxruntime", "onnxruntime"),
                ("onnxruntime-gpu", "onnxruntime-gpu"),
                ("opencv", "opencv-python-headless"),
                ("pydicom", "pydicom"),
                ("tensorrt", "tensorrt"),
                ("psutil", "psutil"),
            )
            if _version(d) is not None
        },
        "ort_providers": providers,
        "commit": commit,
        "loadavg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
