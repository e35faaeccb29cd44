"""What the guidance head remembers: the frame before the operator's last
move, and that move.

From one frame the way back to the target view is often unreadable: the
anatomy looks much the same a few millimetres either side of the target
plane, or a few degrees either way of rotation or fan. A sonographer
resolves that by watching what the last move did to the image. A guidance
head with memory (manifest entry `memory`) therefore takes two frames,
the reference (before the last move) and the current one, stacked as
channels, plus the last move as a one-hot vector (all zeros: no move yet).

Two ways to keep that memory:
- step by step (the simulator's closed loop, training): the reference is
  the frame before the move just made; `memory_inputs` builds the feed;
- live (`MoveMemory`): the probe moves continuously, so the reference is
  the frame shown about `interval_ms` ago and the move is the hint shown
  then (the operator is taken to follow the hint on screen).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from edge_assist.vocab import ACTIONS

ACTION_INPUT = "prev_action"
DEFAULT_INTERVAL_MS = 400.0
_INDEX = {a: i for i, a in enumerate(ACTIONS)}


def one_hot(action: str | None) -> np.ndarray:
    """[1, len(ACTIONS)] float32: the move, or zeros for none."""
    v = np.zeros((1, len(ACTIONS)), np.float32)
    if action is not None:
        v[0, _INDEX[action]] = 1.0
    return v


def memory_inputs(reference: np.ndarray | None, current: np.ndarray, action: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The feed of a guidance head with memory: ([1, 2, H, W], [1, A]).
    Without a reference (the first frame) the current frame stands in and
    the move is none."""
    if reference is None:
        reference, action = current, None
    return np.concatenate([reference, current], axis=1), one_hot(action)


class MoveMemory:
    """The live variant: a short time-indexed history of (frame, hint shown).

    inputs(tensor, t_ns) uses the newest entry at least interval_ms older
    than t_ns as the reference; until there is one (start-up, after a
    reset) the head sees no memory. record() adds the current frame with
    the hint shown for it; entries no longer needed are dropped."""

    def __init__(self, interval_ms: float = DEFAULT_INTERVAL_MS):
        if not interval_ms > 0:
            raise ValueError(f"memory interval must be > 0 ms, not {interval_ms!r}")
        self.interval_ns = int(interval_ms * 1e6)
        self._entries: deque[tuple[int, np.ndarray, str]] = deque()

    def reset(self) -> None:
        self._entries.clear()

    def reference(self, t_ns: int) -> tuple[np.ndarray, str] | None:
        """The newest (frame, hint shown) at least interval_ms older than t_ns, if any."""
        cut = t_ns - self.interval_ns
        e = self._entries
        while len(e) >= 2 and e[1][0] <= cut:  # the older one is no longer the newest old-enough entry
            e.popleft()
        if e and e[0][0] <= cut:
            return e[0][1], e[0][2]
        return None

    def inputs(self, tensor: np.ndarray, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        ref = self.reference(t_ns)
        return memory_inputs(ref[0] if ref else None, tensor, ref[1] if ref else None)

    def record(self, t_ns: int, tensor: np.ndarray, action: str) -> None:
        if self._entries and t_ns < self._entries[-1][0]:
            self._entries.clear()  # the clock went back (a new source): start afresh
        self._entries.append((int(t_ns), tensor, action))


class GuidanceFeed:
    """The guidance head's input for each frame of one live stream: the last
    `frames` frames stacked (the oldest repeated until there are enough), or
    for a head with memory, MoveMemory's reference frame and move. record()
    tells it the hint shown for a frame; reset() starts afresh."""

    def __init__(self, frames: int = 1, memory_interval_ms: float | None = None):
        self.frames = int(frames)
        self.memory = MoveMemory(memory_interval_ms) if memory_interval_ms else None
        self._history: deque[np.ndarray] = deque(maxlen=self.frames)

    @classmethod
    def for_head(cls, spec) -> "GuidanceFeed":
        """From a manifest HeadSpec."""
        return cls(spec.frames, (spec.memory_interval_ms or DEFAULT_INTERVAL_MS) if spec.action_input else None)

    def inputs(self, tensor: np.ndarray, t_ns: int) -> tuple:
        if self.memory is not None:
            return self.memory.inputs(tensor, t_ns)
        if self.frames == 1:
            return (tensor,)
        self._history.append(tensor)
        while len(self._history) < self.frames:
            self._history.appendleft(tensor)
        return (np.concatenate(list(self._history), axis=1),)

    def record(self, t_ns: int, tensor: np.ndarray, shown_action: str) -> None:
        if self.memory is not None:
            self.memory.record(t_ns, tensor, shown_action)

    def reset(self) -> None:
        self._history.clear()
        if self.memory is not None:
            self.memory.reset()
