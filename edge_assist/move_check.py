"""Undo a move that made the view worse (the move check head).

From one frame the guidance head often cannot read which way an
out-of-plane error lies (an elevational slide, a rotation, a fan), so it
guesses, and a wrong guess leads away from the view, often for good: a
move that leads back where the probe has been is not shown again
(hints.no_revisit). A sonographer watches what the last move did to the
image and, if it made things worse, goes back and tries the other way.

The move check head (training/move_check.py) reads the frame before a
move and the frame after it and gives the probability that the move
brought the pose component it changes closer to the target view. Where it
says worse (p below `threshold`) for a slide, rotation, fan or rock, the
hints show the reverse move for `undo` moves (back, and one step the other
way) and keep the move that failed out for `bar` moves from the check.
A move is read only where the image changed (probe_moved). The undo passes no_revisit (it goes back on purpose); the next move is not
checked (it was the undo), and a move is checked at most once per `unit`.

The clock `t` counts moves in the closed loop (one per frame, `unit` 1)
and seconds in the smoother (`unit` the time one move takes), like
hints.BlindSweep and best_view.BackToBest. Measured: docs/TRAINING.md,
"Undoing a move that made the view worse".
"""

from __future__ import annotations

import numpy as np

from edge_assist.frames import GuidanceResult
from edge_assist.guidance_memory import MoveMemory
from edge_assist.vocab import ACTIONS, REVERSE_ACTION

# Depth and gain are read well from one frame (their sign 0.99 and 1.00): only the pose moves are checked.
CHECKED_MOVES = tuple(a for a in ACTIONS if a.startswith(("slide_", "rotate_", "fan_", "rock_")))
CHECK_THRESHOLD = 0.1  # p(better) below this: undo
UNDO_MOVES = 2  # the reverse this many times: back where the probe was, then one step the other way
UNDO_BAR_MOVES = 4  # the move that failed is kept out this many moves from the check
# A move is read only where the two frames differ by more than this (mean |difference|, grey levels of the
# preprocessed frame): the check learnt from moves, and a still probe is not one. In the simulator two
# frames of one pose differ by 0.1 grey levels at the median and 1.8 at most (live speckle), a pose move
# by 9.6 at the median and less than 2 in 5 % of moves (docs/TRAINING.md).
MOTION_GREY = 2.0


def probe_moved(before: np.ndarray, after: np.ndarray, std: float) -> bool:
    """Whether two preprocessed frames ((pixel/255 - mean) / std) differ by more than MOTION_GREY."""
    return float(np.mean(np.abs(after - before))) * std * 255.0 > MOTION_GREY


class UndoWorseMove:
    def __init__(self, threshold: float = CHECK_THRESHOLD, undo: int = UNDO_MOVES, bar: int = UNDO_BAR_MOVES, unit: float = 1.0):
        self.threshold = float(threshold)
        self.unit = float(unit)
        self.undo_span, self.bar_span = int(undo) * self.unit, int(bar) * self.unit
        self.reset()

    def reset(self) -> None:
        self._reverse: str | None = None
        self._undo_until = float("-inf")
        self._barred: dict[str, float] = {}  # move -> kept out until
        self._quiet_until = float("-inf")  # no check before (the move made then was the undo)
        self._next_check = float("-inf")
        self.undos = 0  # started since reset (for reports)

    def active(self, t: float) -> bool:
        """Showing the undo at clock t."""
        return self._reverse is not None and t < self._undo_until

    def wants_check(self, move: str | None, t: float) -> bool:
        """Whether `move`, made about one move before t, is to be checked now."""
        return move in CHECKED_MOVES and t >= self._next_check and t >= self._quiet_until and not self.active(t)

    def judge(self, move: str, p_better: float, t: float) -> None:
        """The head's reading of `move` (asked for by wants_check) at clock t."""
        self._next_check = t + self.unit
        if p_better < self.threshold:
            self._reverse, self._undo_until = REVERSE_ACTION[move], t + self.undo_span
            self._barred[move] = t + self.bar_span
            self._quiet_until = self._undo_until + self.unit
            self.undos += 1

    def barred_probs(self, probs: dict[str, float], t: float) -> dict[str, float]:
        """`probs` with the moves kept out at t set to zero (the same dict when none is)."""
        barred = {m for m, until in self._barred.items() if t < until}
        return {m: (0.0 if m in barred else p) for m, p in probs.items()} if barred else probs

    def bar(self, g: GuidanceResult, t: float) -> GuidanceResult:
        """`g` without the moves kept out at t (their probability zero)."""
        probs = self.barred_probs(g.probs, t)
        if probs is g.probs:
            return g
        best = max(probs, key=probs.get)
        return GuidanceResult(best, probs[best], probs)

    def steer(self, proposed: str, t: float) -> str:
        """The move to show at t: the undo while it lasts, else `proposed`."""
        return self._reverse if self.active(t) else proposed


class MoveCheckFeed:
    """Live: the frame shown about one move ago and the hint shown then
    (the operator is taken to follow the hint on screen, as for a guidance
    head with memory: guidance_memory.MoveMemory), read by the move check
    when the rule asks for it. record() adds each frame with its hint."""

    def __init__(self, move_s: float, std: float):
        self.memory = MoveMemory(move_s * 1000.0)
        self.std = float(std)  # the preprocessing's (probe_moved)

    @classmethod
    def for_smoother(cls, heads, smoother) -> "MoveCheckFeed | None":
        """The feed for a smoother's undo rule, or None where the heads have no move check or the rule is off."""
        if smoother.undo is None or not heads.has_move_check():
            return None
        return cls(smoother.undo.unit, float(heads.manifest.preprocess.get("std", 1.0)))

    def reading(self, heads, rule: UndoWorseMove, tensor: np.ndarray, t_ns: int) -> tuple[str, float] | None:
        ref = self.memory.reference(t_ns)
        if ref is None or not rule.wants_check(ref[1], t_ns / 1e9) or not probe_moved(ref[0], tensor, self.std):
            return None
        return ref[1], heads.move_check(ref[0], tensor, ref[1])

    def record(self, t_ns: int, tensor: np.ndarray, shown: str) -> None:
        self.memory.record(t_ns, tensor, shown)

    def reset(self) -> None:
        self.memory.reset()
