"""The FrameSource protocol that every source implements."""

from __future__ import annotations

import abc
import time

from edge_assist.frames import Frame


class FrameSource(abc.ABC):
    """A stream of frames with an explicit lifetime.

    read(timeout_s) returns the next Frame, or None when nothing arrived in
    time (a live source that stalls is not finished); a finite source raises
    EndOfStream after its last frame. `status` is a short human string such as
    "ok" or "no signal" that a UI can show.
    """

    uri: str = ""
    is_live: bool = False  # live sources are never waited for: newest frame wins
    nominal_fps: float | None = None

    @property
    def status(self) -> str:
        return "ok"

    @property
    def frame_count(self) -> int | None:
        """Total frames for finite sources, None for live ones."""
        return None

    @abc.abstractmethod
    def read(self, timeout_s: float = 1.0) -> Frame | None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# A sleeping thread wakes late: on this project's VM 50-120 us after the
# time asked for (the hypervisor's timer), even with exact timer expiry
# (pipeline.precise_timers). A paced source that stamps a frame with the
# instant it is due would hand it over that late, on every frame's path. So
# paced sources spin the last SPIN_NS before a frame is due instead of
# sleeping through it: 0.2 ms of one core a frame (1.2 % at 60 fps) for a
# frame that comes on time (benchmarks/README.md, "The source's wake-up").
# Never more than 1/SPIN_SHARE of the frame interval: a source at hundreds
# of frames a second would spin all the time, holding the GIL that the
# processing loop needs (the overload scenario: e2e p50 0.44 -> 2.5 ms).
SPIN_NS = 200_000
SPIN_SHARE = 20


def spin_for(period_ns: float) -> int:
    """How long a source paced at one frame per period_ns spins before each frame is due."""
    return int(min(SPIN_NS, max(0.0, period_ns) / SPIN_SHARE))


def sleep_until(due_ns: int, timeout_s: float, spin_ns: int = 0) -> bool:
    """Wait until monotonic time due_ns: sleep, and spin the last `spin_ns`
    (spin_for). If due_ns is more than timeout_s away, sleep timeout_s and
    return False (the caller returns "no frame yet")."""
    wait_ns = due_ns - time.monotonic_ns()
    if wait_ns > timeout_s * 1e9:
        time.sleep(max(0.0, timeout_s))
        return False
    if wait_ns > spin_ns:
        time.sleep((wait_ns - spin_ns) / 1e9)
    while time.monotonic_ns() < due_ns:
        pass
    return True


class Pacer:
    """Releases frames of a finite source at their nominal times.

    A paced file behaves like a live stream: when the consumer is slow the
    source keeps going (the pipeline's slot drops frames), it never waits.
    """

    def __init__(self, fps: float):
        self.period_ns = int(1e9 / fps) if fps and fps > 0 else 0
        self.t0_ns: int | None = None

    def _offset_ns(self, index: int) -> int:
        return index * self.period_ns

    def wait_for(self, index: int, timeout_s: float, lead_ns: int = 0) -> bool:
        """Sleep until frame `index` is due (less lead_ns); False if that is
        beyond timeout_s. The first call sets the clock: that frame is due now."""
        offset = self._offset_ns(index)
        if self.t0_ns is None:
            self.t0_ns = time.monotonic_ns() - offset
        due = self.t0_ns + offset
        # The frame's own interval sets the spin (spin_for); a wait to start
        # work ahead of the frame (lead_ns) need not be exact and only sleeps.
        spin = spin_for(offset - self._offset_ns(index - 1)) if index > 0 and lead_ns == 0 else 0
        return sleep_until(due - lead_ns, timeout_s, spin)
