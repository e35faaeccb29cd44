"""Frame sources for the benchmark: a clocked replay of frames held in memory,
a looping wrapper for finite sources, and synthetic speckle frames.

Why a replay: the benchmark measures the assistant, not the source. Frames are
rendered (simulator) or decoded (files) once, up front, and then released on a
clock like a capture card would release them: frame i exists at
t0 + i / fps, and that instant is its capture time. A reader that comes late
finds the frames in a small FIFO (like a V4L2 driver's buffer ring, default
4); when more than that are waiting the oldest are lost and counted as
`frames_dropped` (source-side drops). With fps = 0 there is no clock: every
read returns the next frame at once, stamped with the read time.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs

import numpy as np

from edge_assist.errors import EndOfStream, SourceError
from edge_assist.frames import Frame, ScanRegion
from edge_assist.sources.base import FrameSource, sleep_until, spin_for

SYNTHETIC_PREFIX = "synthetic:"
T_READ_KEY = "bench_t_read_ns"


class ReplaySource(FrameSource):
    """Replays `frames` (looped) at `fps` with a capture FIFO of `buffer` frames."""

    def __init__(self, frames: list[Frame], fps: float, *, buffer: int = 4, uri: str = "replay:", live: bool = True,
                 limit: int | None = None):
        if not frames:
            raise SourceError(f"{uri}: no frames to replay")
        self.uri = uri
        self.frames = frames
        self.fps = float(fps or 0.0)
        self.nominal_fps = self.fps or None
        self.is_live = live and self.fps > 0
        self.buffer = max(1, int(buffer))
        self.period_ns = int(round(1e9 / self.fps)) if self.fps > 0 else 0
        self.spin_ns = spin_for(self.period_ns)
        self.limit = limit  # stop (EndOfStream) after this many frames offered
        self.t0_ns: int | None = None
        self.next_index = 0  # the next frame to hand out
        self.delivered = 0
        self.frames_dropped = 0  # lost in the FIFO because the reader was late
        self._closed = False

    @property
    def offered(self) -> int:
        """Frames that came into existence so far (delivered + dropped)."""
        return self.delivered + self.frames_dropped

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self._closed:
            raise SourceError(f"{self.uri} is closed")
        if self.limit is not None and self.next_index >= self.limit:
            raise EndOfStream(self.uri)
        i = self.next_index
        if self.period_ns:
            now = time.monotonic_ns()
            if self.t0_ns is None:
                self.t0_ns = now
            due = self.t0_ns + i * self.period_ns
            if due > now:
                if not sleep_until(due, timeout_s, self.spin_ns):
                    return None
            else:
                newest = (now - self.t0_ns) // self.period_ns  # the newest frame that exists now
                if self.limit is not None:
                    newest = min(newest, self.limit - 1)
                oldest_kept = newest - self.buffer + 1
                if i < oldest_kept:  # the FIFO overflowed while nobody read
                    self.frames_dropped += oldest_kept - i
                    i = oldest_kept
                    due = self.t0_ns + i * self.period_ns
            t_capture = due
        else:
            t_capture = time.monotonic_ns()
        self.next_index = i + 1
        self.delivered += 1
        src = self.frames[i % len(self.frames)]
        meta = dict(src.meta)
        # when read() handed the frame over: splits the capture stage into the
        # source's own lateness (sleep overshoot) and the hand-off to the loop
        meta[T_READ_KEY] = time.monotonic_ns()
        return Frame(pixels=src.pixels, index=i, t_capture_ns=t_capture, region=src.region, meta=meta)

    def close(self) -> None:
        self._closed = True


class LoopingSource(FrameSource):
    """Reopens a finite source at its end so a short cine fills a long run;
    frame indices keep counting up across loops. A paced source keeps
    its rhythm across the seam: the first frame of a new loop is released one
    frame interval after the last one, not at once (a reopened source starts
    its own clock with "due now", which put two frames back to back and let
    the pipeline's slot drop one at every loop)."""

    def __init__(self, opener, uri: str):
        self._opener = opener
        self.uri = uri
        self._src = opener()
        self.nominal_fps = self._src.nominal_fps
        self.is_live = self._src.is_live
        self._offset = 0
        self._last = -1
        self._last_t_ns: int | None = None
        self._resume_at_ns: int | None = None  # when the first frame of the new loop is due
        self.loops = 0

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self._resume_at_ns is not None:
            if not sleep_until(self._resume_at_ns, timeout_s, spin_for(1e9 / self.nominal_fps)):
                return None
            self._resume_at_ns = None
        try:
            f = self._src.read(timeout_s)
        except EndOfStream:
            self._src.close()
            self._offset = self._last + 1
            self._src = self._opener()
            self.loops += 1
            paced = not getattr(self._src, "every_frame", False)
            if paced and self.nominal_fps and self._last_t_ns is not None:
                self._resume_at_ns = self._last_t_ns + int(1e9 / self.nominal_fps)
                return self.read(timeout_s)
            f = self._src.read(timeout_s)
        if f is not None:
            f.index += self._offset
            self._last = f.index
            self._last_t_ns = f.t_capture_ns
        return f

    def close(self) -> None:
        self._src.close()


def synthetic_frames(spec: str) -> tuple[list[Frame], float]:
    """`synthetic:speckle?size=HxW&n=N&fps=F&seed=S`: Rayleigh speckle frames with
    a known scan region (a linear probe), for tests and machines without the
    simulator. Returns the frames and the nominal fps."""
    rest = spec[len(SYNTHETIC_PREFIX):]
    kind, _, query = rest.partition("?")
    if kind not in ("", "speckle"):
        raise SourceError(f"unknown synthetic source {spec!r}; use synthetic:speckle?size=256x256&n=64&fps=60")
    q = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = sorted(set(q) - {"size", "n", "fps", "seed"})
    if unknown:
        raise SourceError(f"unknown option(s) {', '.join(unknown)} in {spec!r}; accepted: size, n, fps, seed")
    try:
        h, w = (int(v) for v in q.get("size", "256x256").lower().split("x"))
        n = int(q.get("n", 64))
        fps = float(q.get("fps", 60))
        seed = int(q.get("seed", 0))
    except ValueError as exc:
        raise SourceError(f"bad option in {spec!r} ({exc}); e.g. synthetic:speckle?size=256x256&n=64&fps=60") from exc
    if h < 16 or w < 16 or n < 1:
        raise SourceError(f"{spec!r}: size must be at least 16x16 and n at least 1")
    rng = np.random.default_rng(seed)
    region = ScanRegion((0, 0, w, h), "linear", (0.3, 0.3))
    frames = []
    depth_gain = np.linspace(1.0, 0.4, h, dtype=np.float32)[:, None]
    for i in range(n):
        env = rng.rayleigh(40.0, size=(h, w)).astype(np.float32) * depth_gain
        px = np.clip(env + 8 * np.sin(i / 7.0), 0, 255).astype(np.uint8)
        frames.append(Frame(px, i, 0, region=region))
    return frames, fps


def collect_frames(uri: str, n: int) -> tuple[list[Frame], float | None]:
    """Read up to n frames from a source as fast as it gives them (no pacing),
    looping a finite source that ends early only if it gave none."""
    if uri.startswith(SYNTHETIC_PREFIX):
        frames, fps = synthetic_frames(uri)
        return frames[:n] if n else frames, fps
    from edge_assist.sources import open_source

    frames: list[Frame] = []
    with open_source(uri, every_frame=True) as src:
        fps = src.nominal_fps
        stalls = 0
        while len(frames) < n:
            try:
                f = src.read(timeout_s=1.0)
            except EndOfStream:
                break
            if f is None:
                stalls += 1
                if stalls > 10:
                    raise SourceError(f"{uri} gave no frame for 10 s while pre-rendering; is it running?")
                continue
            frames.append(Frame(f.pixels, f.index, 0, region=f.region, meta=f.meta))
    if not frames:
        raise SourceError(f"{uri} gave no frames")
    return frames, fps
