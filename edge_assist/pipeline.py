"""The real-time loop: capture thread -> latest-frame slot -> preprocess once
-> quality + guidance on every frame -> interpreter (gated, may lag) ->
smoothed hints -> sinks, under a per-frame latency budget. Between frames of
a paced source the loop may prime the caches for the next one (Primer).

Threads: the capture thread (reads the source), the processing loop (the
thread that calls run()), the head runner (parallel heads: guidance runs there
while the loop runs quality) and the interpreter worker (async mode). All of
them end before run() returns; stop() may be called from any thread.

Inline capture: with a paced source that is cheap to read and a pipeline
that keeps up with room to spare, the capture thread processes (and primes
for) the frames it reads itself, with the slot's processing turn, instead of
waking the loop thread for each; otherwise frames go through the slot.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from edge_assist.errors import EndOfStream
from edge_assist.frames import Frame, GuidanceResult, Hints, InterpreterResult, QualityResult
from edge_assist.guidance_memory import GuidanceFeed
from edge_assist.heads import HeadSet
from edge_assist.hints import HintSmoother, SmoothingConfig
from edge_assist.move_check import MoveCheckFeed
from edge_assist.metrics import LatencyLog, summarize_ms
from edge_assist.preprocess import Prepared
from edge_assist.sources.base import FrameSource
from edge_assist.vocab import ABSTAIN_TEXT, ABSTAIN_TEXT_ZH, QUALITY_THRESHOLD

# A new frame size is accepted once it has persisted this long (a scanner that
# changed its output mode), until then such frames are skipped and counted.
SIZE_CHANGE_FRAMES = 30

# Adaptive parallel heads: the recent cost of each way is the median of this
# many frames, and every PROBE_EVERY-th frame tries the way not in use.
HEADS_WINDOW = 7
HEADS_PROBE_EVERY = 16

# Inline capture (Pipeline): only while the median processing time of the
# last INLINE_WINDOW frames is within this share of the frame interval.
INLINE_WINDOW = 16
INLINE_SHARE = 0.5
# ... and the median CPU time of the last INLINE_WINDOW reads is within this:
# about twice the Primer's smallest margin, far below a frame interval (a
# read that only waits costs 0.03-0.1 ms here; the simulator renders for 4+ ms).
INLINE_READ_CPU_NS = 1_000_000


def _ms(ns: int) -> float:
    return ns / 1e6


def precise_timers() -> bool:
    """Ask Linux for exact timer expiry in the calling thread (timer slack
    1 ns instead of 50 us): a paced source sleeping until its next frame is
    due then wakes on time (measured here: 98 -> 48 us late at the median).
    False where the call is unavailable (not Linux); nothing else changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0) == 0  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        return False


class FrameSlot:
    """Holds the newest frame only (live), or one frame with back-pressure
    (every-frame mode). Overwritten frames are counted as dropped.

    It also holds the processing turn: one thread at a time processes (or
    primes for) a frame. get() hands a frame over together with the turn;
    claim() takes the turn without a frame (the capture thread processing a
    frame it has just read, or priming), only while no frame waits and
    nobody else has it, so frames are never processed out of order;
    release() gives it back."""

    def __init__(self, every_frame: bool):
        self.every_frame = every_frame
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self._busy = False  # a thread has the processing turn
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self.every_frame:
                while self._frame is not None and not self._closed:
                    self._cond.wait(0.1)
            elif self._frame is not None:
                self.dropped += 1  # newest frame wins
            if self._closed:
                self.dropped += 1
                return
            self._frame = frame
            self._cond.notify_all()

    def get(self, timeout_s: float) -> Frame | None:
        """The waiting frame, with the processing turn (release() it when
        done); None when none came within timeout_s. While another thread
        has the turn no frame is handed over."""
        with self._cond:
            if self._frame is None or self._busy:
                self._cond.wait(timeout_s)
            if self._busy:
                return None
            frame, self._frame = self._frame, None
            if frame is not None:
                self._busy = True
            self._cond.notify_all()
            return frame

    def claim(self) -> bool:
        """Take the processing turn without a frame: only when no frame waits
        and no thread has it (and the slot is open)."""
        with self._cond:
            if self._frame is not None or self._busy or self._closed:
                return False
            self._busy = True
            return True

    def release(self) -> None:
        """Give the processing turn back (after get() returned a frame, or claim() True)."""
        with self._cond:
            self._busy = False
            if self._frame is not None:  # a get() waits for it; nobody else waits on the turn
                self._cond.notify_all()

    @property
    def pending(self) -> bool:
        """A frame is waiting (a read without the lock: a hint, not a claim)."""
        return self._frame is not None

    def close(self) -> None:
        """Stop accepting frames; a frame still waiting is dropped."""
        with self._cond:
            self._closed = True
            if self._frame is not None:
                self._frame = None
                self.dropped += 1
            self._cond.notify_all()


@dataclass
class FrameResult:
    frame: Frame
    prepared: Prepared
    hints: Hints
    raw_quality: QualityResult
    raw_guidance: GuidanceResult
    stages_ms: dict[str, float]
    e2e_ms: float
    missed_budget: bool
    interpreter_ran: bool = False
    heads_parallel: bool = False  # quality and guidance ran at the same time
    primed: bool = False  # the caches were primed before this frame came


class Sink(Protocol):
    def write(self, result: FrameResult) -> None: ...
    def close(self) -> None: ...


class InterpreterWorker:
    """Runs the interpreter on one frame at a time in its own thread so that it
    never delays quality and guidance. A new job is only accepted when idle."""

    def __init__(self, heads: HeadSet, log: LatencyLog, run_always: bool = False):
        self._heads = heads
        self._run_always = run_always
        self._log = log
        self._cond = threading.Condition()
        self._job = None
        self._busy = False
        self._stop = False
        self._latest: InterpreterResult | None = None
        self.runs = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="edge-assist-interpreter", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._busy

    def submit(self, tensor, frame_index, quality, mm_per_px, source=None) -> bool:
        """source: (frame pixels, scan region) for the lesion head's second look."""
        with self._cond:
            if self._busy or self._stop:
                return False
            self._busy = True
            self._job = (tensor, frame_index, quality, mm_per_px, source)
            self._cond.notify_all()
            return True

    def latest(self) -> InterpreterResult | None:
        with self._cond:
            return self._latest

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                tensor, idx, quality, mm, source = self._job
                self._job = None
            t0 = time.perf_counter_ns()
            try:
                res = self._heads.interpreter(tensor, frame_index=idx, quality=quality, mm_per_px=mm, run_always=self._run_always,
                                              source=source)
            except Exception as exc:  # surfaced by the pipeline, never lost in a thread
                self.error = exc
                res = None
            self._log.add("interpreter", _ms(time.perf_counter_ns() - t0))
            with self._cond:
                if res is not None:
                    self._latest = res
                self.runs += 1
                self._busy = False

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()


class HeadRunner:
    """Runs one job at a time in its own thread beside the processing loop:
    the loop submits guidance, runs quality itself, then collects guidance.

    The hand-off uses two plain locks as binary semaphores, the cheapest
    wake-up CPython has (a Condition adds a lock and Python-level bookkeeping
    on both sides). An exception in the job is kept and raised by result() in
    the loop's thread: it is never lost in this thread. Nothing spins: both
    sides block in the kernel while they wait."""

    def __init__(self, name: str = "edge-assist-heads"):
        self._go = threading.Lock()
        self._go.acquire()  # released by submit() (and stop())
        self._done = threading.Lock()
        self._done.acquire()  # released by the thread when a job is finished
        self._job: tuple | None = None
        self._result = None
        self._error: BaseException | None = None
        self._pending = False
        self._stop = False
        self.job_ms = 0.0  # how long the last job ran in this thread
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, arg) -> None:
        if self._stop:
            raise RuntimeError("HeadRunner is stopped")
        if self._pending:
            raise RuntimeError("HeadRunner: collect the previous result before submitting again")
        self._job = (fn, arg)
        self._pending = True
        self._go.release()

    def result(self):
        """Wait for the submitted job; its return value, or its exception raised here."""
        if not self._pending:
            raise RuntimeError("HeadRunner: nothing was submitted")
        self._done.acquire()
        self._pending = False
        res, err = self._result, self._error
        self._result = self._error = None
        if err is not None:
            raise err
        return res

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            if self._stop:
                return
            fn, arg = self._job
            self._job = None
            t0 = time.perf_counter_ns()
            try:
                self._result = fn(arg)
            except BaseException as exc:  # raised again by result() in the loop's thread
                self._error = exc
            self.job_ms = _ms(time.perf_counter_ns() - t0)
            self._done.release()

    def stop(self) -> None:
        """End the thread (after the job it is running, if any) and join it.
        Called by the thread that submits."""
        self._stop = True
        try:
            self._go.release()
        except RuntimeError:
            pass  # a job was submitted and not yet taken: the thread sees _stop first
        self._thread.join()


class CostChooser:
    """One of two ways, frame by frame, by what each costs here.

    Both ways are timed on the frame's path: the first frames alternate, then
    the way with the lower recent median is used, and every `probe_every`-th
    frame tries the other one, so a change of load is seen within a few
    seconds. Used for parallel vs sequential heads and for priming on or off."""

    def __init__(self, window: int = HEADS_WINDOW, probe_every: int = HEADS_PROBE_EVERY):
        self.costs: dict[bool, deque[float]] = {True: deque(maxlen=window), False: deque(maxlen=window)}
        self.window = window
        self.probe_every = probe_every
        self.n = 0

    @staticmethod
    def _median(d: deque) -> float:
        return sorted(d)[len(d) // 2]

    def choose(self) -> bool:
        """True: take the first way (parallel heads; priming) for this frame."""
        self.n += 1
        yes, no = self.costs[True], self.costs[False]
        if len(yes) < self.window or len(no) < self.window:
            return len(yes) <= len(no)  # alternate until both ways are measured
        best = self._median(yes) <= self._median(no)
        return (not best) if self.n % self.probe_every == 0 else best

    def add(self, way: bool, ms: float) -> None:
        self.costs[way].append(ms)


class Primer:
    """Primes the caches shortly before the next frame of a paced source is
    due, by running the last frame's preprocessing and heads again (the
    results are thrown away).

    Why: on a shared or busy machine a core that idled for a frame interval
    has lost what the models need from its caches, and the first run after
    the gap is the slow one (this project's VM: quality + guidance 0.56 ms back to
    back, 1.4 ms after 16.7 ms of sleep, 0.6 ms when primed 1.5 ms before).
    Priming moves that cost off the frame's path at the price of one more pass
    per frame (CPU). Whether it pays is measured, not assumed: a CostChooser
    compares the frame path (preprocess + heads) of primed and unprimed frames
    and keeps priming only where it is cheaper.

    A pass starts `lead` before the frame is due: the recent median pass time
    plus a margin. A frame that comes while a pass runs waits for it (that
    wait is on its end-to-end time, counted in `collisions`); each collision
    widens the margin by a step, and it shrinks again slowly while none
    happen. When the next frame is due comes from the frames themselves (the
    median interval between the last ones), not only from the source's
    nominal rate: capture devices often deliver at another rate than they
    report."""

    MARGIN_MIN_NS = 500_000
    MARGIN_STEP_NS = 250_000  # added per collision
    SHRINK_AFTER = 120  # frames without a collision before the margin shrinks
    INTERVALS = 15  # frame intervals the period is the median of (once 5 are in)

    def __init__(self, period_ns: int, adaptive: bool = True):
        self.nominal_ns = int(period_ns)
        self.intervals: deque[int] = deque(maxlen=self.INTERVALS)
        self.chooser = CostChooser() if adaptive else None
        self.margin_ns = self.MARGIN_MIN_NS
        self.pass_ms: deque[float] = deque(maxlen=15)
        self.last_t_ns: int | None = None  # capture time of the last frame processed
        self.done_for: int | None = None  # the due time already decided for
        self.decision: bool | None = None  # for the frame now awaited: primed or not (None: not decided)
        self.passes = 0
        self.collisions = 0
        self.frames_primed = 0
        self._quiet = 0

    @property
    def period_ns(self) -> int:
        """The interval the next frame is expected after."""
        if len(self.intervals) >= 5:
            return sorted(self.intervals)[len(self.intervals) // 2]
        return self.nominal_ns

    def lead_ns(self) -> int:
        p = sorted(self.pass_ms)[len(self.pass_ms) // 2] if self.pass_ms else 1.0
        return int(p * 1e6) + self.margin_ns

    def plan(self, now_ns: int) -> tuple[int, int] | None:
        """(when to start priming, the due time it primes for), or None when
        there is no time left for a pass before the next frame, or it was
        decided already."""
        period = self.period_ns
        if self.last_t_ns is None or period <= 0:
            return None
        k = max(1, -(-(now_ns - self.last_t_ns) // period))  # the next due time after now
        due = self.last_t_ns + k * period
        start = due - self.lead_ns()
        if due == self.done_for or start < now_ns:
            return None
        return start, due

    def decide(self, due: int) -> bool:
        """Called once per interval when its priming time comes: prime or not."""
        self.done_for = due
        self.decision = self.chooser.choose() if self.chooser is not None else True
        return self.decision

    def passed(self, ms: float, collided: bool) -> None:
        self.passes += 1
        self.pass_ms.append(ms)
        if collided:
            self.collisions += 1
            self.margin_ns = min(self.margin_ns + self.MARGIN_STEP_NS, self.period_ns // 2)
            self._quiet = 0
        else:
            self._quiet += 1
            if self._quiet >= self.SHRINK_AFTER:
                self.margin_ns = max(self.MARGIN_MIN_NS, int(self.margin_ns * 0.8))
                self._quiet = 0

    def frame_done(self, t_capture_ns: int, path_ms: float) -> bool:
        """Record a processed frame and what its path cost (preprocess +
        heads); returns whether it was primed. Only frames whose interval was
        decided are compared: a frame that came with no gap before it (the
        loop was busy) is hot either way."""
        primed = bool(self.decision)
        if self.chooser is not None and self.decision is not None:
            self.chooser.add(primed, path_ms)
        self.frames_primed += int(primed)
        if self.last_t_ns is not None and t_capture_ns > self.last_t_ns:
            self.intervals.append(t_capture_ns - self.last_t_ns)
        self.last_t_ns = t_capture_ns
        self.decision = None
        return primed


class Pipeline:
    def __init__(
        self,
        source: FrameSource,
        heads: HeadSet,
        sinks: list[Sink] | tuple = (),
        *,
        budget_ms: float | None = None,
        every_frame: bool = False,
        max_frames: int | None = None,
        interpreter_mode: str | None = None,  # "async" (live default) or "sync" (every-frame default)
        smoothing: SmoothingConfig | None = None,
        on_result: Callable[[FrameResult], None] | None = None,
        warmup_frames: int = 0,
        parallel_heads: bool | None = None,  # True / False: always / never; None: adaptive where possible
        interpreter_always: bool = False,  # benchmarks: run the interpreter whatever the quality (it still abstains)
        prime: bool | None = None,  # True / False: always / never; None: adaptive for paced sources
        inline_capture: bool = True,  # paced sources: the capture thread processes the frames it reads while the loop is idle
    ):
        self.source = source
        self.heads = heads
        self.sinks = list(sinks)
        self.every_frame = every_frame
        fps = source.nominal_fps or 30.0
        self.budget_ms = float(budget_ms) if budget_ms else 1000.0 / fps
        self.max_frames = max_frames
        self.interpreter_mode = interpreter_mode or ("sync" if every_frame else "async")
        if self.interpreter_mode not in ("sync", "async"):
            raise ValueError(f"interpreter_mode must be 'sync' or 'async', not {self.interpreter_mode!r}")
        self.preprocessor = heads.preprocessor()
        self.smoother = HintSmoother(smoothing)
        self.on_result = on_result
        self.warmup_frames = warmup_frames
        # Quality and guidance at the same time (guidance in a head-runner
        # thread): forced on or off, or by default, where both heads are CPU
        # sessions and there are cores for both, chosen frame by frame by cost.
        self.parallel_heads = self._can_parallel() if parallel_heads is None else bool(parallel_heads)
        self.heads_mode = ("adaptive" if parallel_heads is None else "parallel") if self.parallel_heads else "sequential"
        # Parallel or sequential heads, by cost: guidance beside quality pays
        # off when the second core is free; when other processes keep both
        # cores busy, the second thread waits for a core (and may be preempted
        # holding the GIL), and one thread is faster. Cost: quality + the wait
        # for guidance (parallel) or quality + guidance (sequential).
        self._chooser = CostChooser() if self.heads_mode == "adaptive" else None
        self._next_parallel: bool | None = None  # chosen when the frame was primed
        # Priming needs idle time before a frame whose arrival can be foreseen:
        # a source paced at a known frame rate, not every-frame mode (no gaps).
        period_ns = int(1e9 / source.nominal_fps) if source.nominal_fps else 0
        can_prime = bool(period_ns) and not every_frame
        on = can_prime and prime is not False
        self.prime_mode = ("adaptive" if prime is None else "on") if on else "off"
        self._primer = Primer(period_ns, adaptive=prime is None) if on else None
        self._last_inputs: tuple | None = None  # (frame, tensor, guidance feed) of the last frame
        # Inline capture: where frames come with gaps (the same sources as
        # priming), the capture thread processes a frame it has just read
        # itself when nothing else is being processed, instead of waking the
        # loop thread for it: the hand-off is one thread wake-up (30-80 us on
        # this project's VM) on every frame's path. Only while the pipeline
        # keeps up with room to spare (INLINE_SHARE): a frame the capture
        # thread processes is one it is not reading, so under load frames go
        # through the slot to the loop as before and the newest still wins.
        self._period_ns = period_ns
        self.inline_capture = can_prime and bool(inline_capture)
        self._service_ms: deque[float] = deque(maxlen=INLINE_WINDOW)  # recent frames' processing time, read to sinks
        self._keeping_up = False  # set by _note_service
        self._read_cpu_ns: deque[int] = deque(maxlen=INLINE_WINDOW)  # CPU time of the capture thread's recent reads
        self._reads_cheap = False  # set by _note_read
        self.frames_inline = 0  # counted frames processed by the capture thread
        self._worker: InterpreterWorker | None = None
        self._runner: HeadRunner | None = None
        self.frames_heads_parallel = 0  # counted frames (after warm-up) whose heads ran in parallel
        self.frames_primed = 0  # counted frames (after warm-up) whose caches were primed
        self.log = LatencyLog()
        self.slot = FrameSlot(every_frame)
        self._stop = threading.Event()
        self._capture_done = threading.Event()
        self._capture_error: BaseException | None = None
        self._guidance = GuidanceFeed.for_head(heads.heads["guidance"].spec)
        # The move check (optional head): the frame about one move ago and the hint shown then.
        self._move_check = MoveCheckFeed.for_smoother(heads, self.smoother)
        self._interp_gate = float(heads.heads["interpreter"].spec.decode.get("quality_threshold", QUALITY_THRESHOLD))
        # Benchmarks load all three heads: the interpreter model then runs on
        # every frame it is free for; its result still abstains below the gate.
        self.interpreter_always = bool(interpreter_always)
        self._interp_p50_ms = 0.0
        self._shape: tuple | None = None
        self._new_shape: tuple | None = None
        self._new_shape_count = 0
        self._thread: threading.Thread | None = None
        self.frames_in = 0
        self.frames_processed = 0
        self.frames_skipped = 0
        self.misses = 0
        self.interpreter_runs = 0
        self.status = "starting"
        self.ended = False  # the source reached its end (not a stall)

    def _can_parallel(self) -> bool:
        """Quality and guidance are independent given the preprocessed tensor:
        they may run at the same time when both are CPU sessions (ORT releases
        the GIL in run()) and the cores this process may use hold both; not
        with GPU backends, wrappers that do not say, or one core."""
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not on Linux
            cores = os.cpu_count() or 1
        threads = [getattr(self.heads.heads[n].backend, "cpu_threads", None) for n in ("quality", "guidance")]
        return all(isinstance(t, int) and t > 0 for t in threads) and sum(threads) <= cores

    # ----------------------------------------------------------------- control
    def start(self) -> "Pipeline":
        """Run in a background thread (for UIs); stop() and join() end it."""
        self._thread = threading.Thread(target=self._run_safely, name="edge-assist-pipeline", daemon=True)
        self._thread.start()
        return self

    def _run_safely(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # kept for the owner to read; threads must not die silently
            self.error = exc

    error: BaseException | None = None

    def stop(self) -> None:
        self._stop.set()
        self.slot.close()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def frames_dropped(self) -> int:
        return self.slot.dropped

    # ----------------------------------------------------------------- capture
    def _capture_loop(self) -> None:
        precise_timers()
        try:
            while not self._stop.is_set():
                if self._inline_now():
                    self._prime_before_read()
                cpu0 = time.thread_time_ns() if self.inline_capture else 0
                try:
                    frame = self.source.read(timeout_s=0.1)
                except EndOfStream:
                    self.ended = True
                    return
                if frame is None:
                    continue  # a stall: live sources are not finished
                t_read = time.monotonic_ns()
                read_cpu_ns = time.thread_time_ns() - cpu0 if self.inline_capture else 0
                self.frames_in += 1
                go_on = True
                if self._inline_now() and self.slot.claim():
                    try:
                        go_on = self._handle(frame, t_read, inline=True)
                    finally:
                        self.slot.release()
                else:
                    self.slot.put(frame)
                if self.inline_capture:
                    self._note_read(read_cpu_ns)  # off the frame's path: it decides for the next frames
                if not go_on:
                    self.stop()
                    return
                if self.every_frame and self.max_frames and self.frames_in >= self.max_frames:
                    return
        except BaseException as exc:
            self._capture_error = exc
        finally:
            self._capture_done.set()

    def _inline_now(self) -> bool:
        """Inline capture is on, reads are cheap and the pipeline keeps up with room to spare."""
        return self._keeping_up and self._reads_cheap

    def _note_read(self, cpu_ns: int) -> None:
        """The CPU time a read took (a wait costs almost none). A source that
        works to make its frames (the simulator rendering, a decoder) is
        read inline only if that work is small: the capture thread primes
        before it reads, timed on the frames' capture times, which come after
        that work; with much of it the read starts after its frame is due,
        the frames come later still, and the source skips frames (the
        simulator at 30 fps lost 48 of 120)."""
        self._read_cpu_ns.append(cpu_ns)
        self._reads_cheap = sorted(self._read_cpu_ns)[len(self._read_cpu_ns) // 2] <= INLINE_READ_CPU_NS

    def _note_service(self, ms: float) -> None:
        """A frame's processing time, read to sinks: decides _keeping_up."""
        self._service_ms.append(ms)
        if self.inline_capture and len(self._service_ms) >= INLINE_WINDOW // 2:
            # The nominal interval as well as the measured one: frames the
            # capture thread is late to read come later, which must not look like room.
            period = min(self._period_ns, self._primer.period_ns) if self._primer is not None else self._period_ns
            self._keeping_up = sorted(self._service_ms)[len(self._service_ms) // 2] * 1e6 <= INLINE_SHARE * period

    def _prime_before_read(self) -> None:
        """Inline capture: the capture thread, which will process the next
        frame, primes for it (see Primer) before it waits for it."""
        primer = self._primer
        if primer is None:
            return
        now = time.monotonic_ns()
        plan = primer.plan(now)
        if plan is None:
            return
        start, due = plan
        if start > now and self._stop.wait((start - now) / 1e9):
            return
        self._prime_with_turn(due)

    def _prime_with_turn(self, due: int) -> None:
        """Decide on priming for the frame due at `due` and prime, holding
        the processing turn; nothing when a frame waits or another thread
        has the turn."""
        if not self.slot.claim():
            return
        try:
            if self._primer.decide(due):
                self._prime(self._runner, due)
        finally:
            self.slot.release()

    # ----------------------------------------------------------------- process
    def _frame_ok(self, frame: Frame) -> bool:
        px = frame.pixels
        ok_type = isinstance(px, np.ndarray) and px.dtype == np.uint8 and (
            px.ndim == 2 or (px.ndim == 3 and px.shape[2] in (1, 3, 4))
        )
        if not ok_type or min(px.shape[:2]) < 8:
            return False
        shape = px.shape
        if self._shape is None or shape == self._shape:
            self._shape = shape
            self._new_shape, self._new_shape_count = None, 0
            return True
        if shape == self._new_shape:
            self._new_shape_count += 1
        else:
            self._new_shape, self._new_shape_count = shape, 1
        if self._new_shape_count >= SIZE_CHANGE_FRAMES:
            self._shape, self._new_shape, self._new_shape_count = shape, None, 0
            self.preprocessor.reset()
            self._guidance.reset()
            if self._move_check is not None:
                self._move_check.reset()
            return True
        return False

    def _run_guidance(self, feed: tuple) -> GuidanceResult:
        """The guidance head on one frame's feed (the only place it is called;
        runs in the head runner's thread with parallel heads)."""
        return self.heads.guidance(*feed)

    def _choose_parallel(self, runner: HeadRunner | None) -> bool:
        return runner is not None and (self._chooser is None or self._chooser.choose())

    def _prime(self, runner: HeadRunner | None, due: int) -> None:
        """The last frame's preprocessing and heads once more, results thrown
        away, the way the next frame will run them (same threads): see Primer.
        Called with the processing turn held."""
        if self._last_inputs is None:
            return
        t0 = time.perf_counter_ns()
        frame, tensor, gfeed = self._last_inputs
        self.preprocessor.rehearse(frame)
        parallel = self._next_parallel = self._choose_parallel(runner)
        if parallel:
            runner.submit(self._run_guidance, gfeed)
            try:
                self.heads.quality(tensor)
            finally:
                runner.result()
        else:
            self.heads.quality(tensor)
            self._run_guidance(gfeed)
        # A collision: the frame came (or, read by this thread, was due) during the pass.
        self._primer.passed(_ms(time.perf_counter_ns() - t0), collided=self.slot.pending or time.monotonic_ns() > due)

    def _next_frame(self) -> Frame | None:
        """The next frame from the slot (None: none yet). With priming, the
        wait is split: until the priming time, the pass, then the rest."""
        primer = self._primer
        if primer is not None and not self._inline_now():  # inline, the capture thread primes
            now = time.monotonic_ns()
            plan = primer.plan(now)
            if plan is not None:
                start, due = plan
                frame = self.slot.get(timeout_s=min(0.05, (start - now) / 1e9))
                if frame is not None or time.monotonic_ns() < start:
                    return frame
                self._prime_with_turn(due)  # skipped when a frame came meanwhile
                return self.slot.get(timeout_s=0.05)
        return self.slot.get(timeout_s=0.05)

    def _abstain(self, index: int) -> InterpreterResult:
        return InterpreterResult(index, True, ABSTAIN_TEXT, None, ABSTAIN_TEXT_ZH)

    def _process(self, frame: Frame, t_dequeue: int, worker: InterpreterWorker | None,
                 runner: HeadRunner | None = None) -> FrameResult:
        stages: dict[str, float] = {"capture": _ms(t_dequeue - frame.t_capture_ns)}
        t = time.perf_counter_ns()

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter_ns()
            stages[name] = _ms(now - t)
            t = now

        prep = self.preprocessor(frame)
        lap("preprocess")
        parallel = self._next_parallel
        self._next_parallel = None
        if parallel is None:
            parallel = self._choose_parallel(runner)
        gfeed = self._guidance.inputs(prep.tensor, frame.t_capture_ns)
        self._last_inputs = (frame, prep.tensor, gfeed)
        if parallel:
            # Guidance in the runner thread, quality here, at the same time.
            # "guidance" is its own time in the runner; "guidance_wait" how
            # long this thread then waited for it: its part of the e2e path.
            runner.submit(self._run_guidance, gfeed)
            try:
                q = self.heads.quality(prep.tensor)
            finally:
                lap("quality")
                g = runner.result()  # never leave a job behind, even when quality failed
            lap("guidance_wait")
            stages["guidance"] = runner.job_ms
        else:
            q = self.heads.quality(prep.tensor)
            lap("quality")
            g = self._run_guidance(gfeed)
            lap("guidance")
            if runner is not None:
                stages["guidance_wait"] = stages["guidance"]  # in line: all of it is on the path
        if self._chooser is not None:
            self._chooser.add(parallel, stages["quality"] + stages["guidance_wait"])
        ran = False
        readable = q.score >= self._interp_gate
        wanted = readable or self.interpreter_always  # the model runs (benchmarks: always)
        if worker is None and wanted:
            interp = self.heads.interpreter(prep.tensor, frame_index=frame.index, quality=q, mm_per_px=prep.mm_per_px,
                                            run_always=self.interpreter_always, source=(frame.pixels, prep.region))
            ran = True
            lap("interpreter")
        if not readable:
            interp = self._abstain(frame.index)  # never show findings for a poor image
        elif worker is not None:
            interp = worker.latest()
        check = None
        if self._move_check is not None:
            check = self._move_check.reading(self.heads, self.smoother.undo, prep.tensor, frame.t_capture_ns)
            lap("move_check")
        hints = self.smoother.hints(frame.index, frame.t_capture_ns, q, g, interp, check=check)
        self._guidance.record(frame.t_capture_ns, prep.tensor, hints.guidance.action)
        if self._move_check is not None:
            self._move_check.record(frame.t_capture_ns, prep.tensor, hints.guidance.action)
        lap("hints")
        e2e = _ms(time.monotonic_ns() - frame.t_capture_ns)
        if worker is not None and wanted:
            # Submitted only once the hints are ready: a woken worker would take
            # the GIL in the middle of this frame's hint stage. Gated by the
            # budget: start only if its result can be fresh within this frame's.
            if e2e + self._interp_p50_ms <= self.budget_ms or self._interp_p50_ms == 0.0:
                # The frame's pixels go by reference: sources hand out a new array per frame.
                ran = worker.submit(prep.tensor, frame.index, q, prep.mm_per_px, (frame.pixels, prep.region))
        primed = False
        if self._primer is not None:
            path = stages["preprocess"] + stages["quality"] + stages.get("guidance_wait", stages["guidance"])
            primed = self._primer.frame_done(frame.t_capture_ns, path)
        return FrameResult(frame, prep, hints, q, g, stages, e2e, e2e > self.budget_ms, ran, parallel, primed)

    def _handle(self, frame: Frame, t_dequeue: int, inline: bool = False) -> bool:
        """One frame, in whichever thread has the processing turn: check,
        process, count, hand to the sinks. False: max_frames reached."""
        if not self._frame_ok(frame):
            self.frames_skipped += 1
            return True
        worker = self._worker
        result = self._process(frame, t_dequeue, worker, self._runner)
        self.frames_processed += 1
        self.interpreter_runs += int(result.interpreter_ran)
        counted = self.frames_processed > self.warmup_frames
        if result.missed_budget and counted:
            self.misses += 1
        if counted:
            self.frames_heads_parallel += int(result.heads_parallel)
            self.frames_primed += int(result.primed)
            self.frames_inline += int(inline)
            for name, ms in result.stages_ms.items():
                if name != "interpreter" or worker is None:
                    self.log.add(name, ms)
            self.log.add_e2e(result.e2e_ms, time.monotonic_ns())
        t_sink = time.perf_counter_ns()
        for sink in self.sinks:
            sink.write(result)
        if self.on_result is not None:
            self.on_result(result)
        sink_ms = _ms(time.perf_counter_ns() - t_sink)
        result.stages_ms["sink"] = sink_ms
        if counted:
            self.log.add("sink", sink_ms)
        self._note_service(_ms(time.monotonic_ns() - t_dequeue))
        if worker is not None:
            self._interp_p50_ms = self.log.median_of_last("interpreter", 50)
            if worker.error is not None:
                raise worker.error
        return not (self.max_frames and self.frames_processed >= self.max_frames)

    def run(self) -> dict:
        """Process until the source ends, max_frames, or stop(). Returns the summary."""
        old_switch = sys.getswitchinterval()
        # FACTS: collecting an ORT result needs the GIL; a short switch interval
        # keeps a busy Python thread from adding milliseconds to each head.
        sys.setswitchinterval(0.0005)
        capture = threading.Thread(target=self._capture_loop, name="edge-assist-capture", daemon=True)
        self._worker = InterpreterWorker(self.heads, self.log, self.interpreter_always) if self.interpreter_mode == "async" else None
        self.status = "running"
        try:
            self._runner = HeadRunner() if self.parallel_heads else None
            capture.start()
            while not self._stop.is_set():
                frame = self._next_frame()
                if frame is None:
                    if self._capture_done.is_set():
                        break
                    continue
                try:
                    go_on = self._handle(frame, time.monotonic_ns())
                finally:
                    self.slot.release()
                if not go_on:
                    break
        finally:
            self._stop.set()
            self.slot.close()
            if capture.ident is not None:  # started
                capture.join()
            if self._runner is not None:
                self._runner.stop()
            if self._worker is not None:
                self._worker.stop()
                self.interpreter_runs = self._worker.runs
            sys.setswitchinterval(old_switch)
            self.status = "ended" if self.ended else "stopped"
        if self._capture_error is not None:
            raise self._capture_error
        return self.summary()

    # ----------------------------------------------------------------- report
    def summary(self) -> dict:
        stages = self.log.summary()
        e2e = stages.pop("e2e", summarize_ms([]))
        counted = max(1, self.frames_processed - self.warmup_frames)
        return {
            "source": self.source.uri,
            "frames_in": self.frames_in,
            "frames_processed": self.frames_processed,
            "frames_dropped": self.frames_dropped,
            "frames_skipped": self.frames_skipped,
            "interpreter_runs": self.interpreter_runs,
            "budget_ms": self.budget_ms,
            "misses": self.misses,
            "miss_rate": self.misses / counted if self.frames_processed else 0.0,
            "drop_rate": self.frames_dropped / self.frames_in if self.frames_in else 0.0,
            "e2e_ms": {k: e2e[k] for k in ("p50", "p95", "p99", "p999", "max")},
            "stages_ms": {k: {m: v[m] for m in ("p50", "p95", "p99", "max")} for k, v in stages.items()},
            "ended": self.ended,
            "backend": self.heads.backend_name,
            "precision": self.heads.precision,
            "models": self.heads.model_info(),
            "mode": "every_frame" if self.every_frame else "latest",
            "interpreter_mode": self.interpreter_mode,
            "interpreter_always": self.interpreter_always,
            "heads_parallel": self.parallel_heads,
            "heads_mode": self.heads_mode,
            # the counters below count only frames after the warm-up: 0 while none are
            "heads_parallel_share": self.frames_heads_parallel / counted,
            "prime": self._prime_summary(counted),
            "capture": {"inline": self.inline_capture,
                        "inline_share": self.frames_inline / counted},
        }

    def _prime_summary(self, counted: int) -> dict:
        pr = self._primer
        out = {"mode": self.prime_mode, "share": 0.0, "passes": 0, "collisions": 0, "lead_ms": None, "pass_ms": None}
        if pr is not None:
            out.update(pass_ms=round(sorted(pr.pass_ms)[len(pr.pass_ms) // 2], 3) if pr.pass_ms else None,
                       share=self.frames_primed / counted,
                       passes=pr.passes, collisions=pr.collisions, lead_ms=round(pr.lead_ns() / 1e6, 3))
        return out
