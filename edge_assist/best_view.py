"""Going back to the best view seen.

In the closed loop the hints often lead through the target view or next
to it, the quality meter high there, and on past it: the guidance head
gives 'hold' only about even odds a little off the target, and an
operator who stops on the first hold then stops somewhere worse, or not
at all (docs/TRAINING.md, "Reached and settled"). A sonographer who sees
the image get clearly worse right after a good one goes back the way
they came and holds there.

So once the meter has read good (at least `good`) and then falls more
than `drop` below the best it read, within `within` moves of that best,
the hints show the moves made since the best in reverse, last first,
each for as long as it was shown (at least one move); back there, 'hold'
if the meter reads good again, for one move. Once per best: after going
back the way, only a better view than that one is gone back to. A best
more than `within` moves behind is forgotten, so that a good view found
later counts.

The clock `t` counts moves in the closed loop (one per frame) and seconds
in the smoother, with `within` scaled by `unit`, the time one move takes
(like hints.BlindSweep); the way back passes no_revisit (it goes back on
purpose). The smoother's meter takes a few frames to follow the image,
so whether the view back there reads good is judged on the newest frame
alone (`current`); a wait for the smoothed meter, showing 'hold' in the
meantime, made an operator who stops on hold stop on views that did not
come back (docs/TRAINING.md, "Going back to the best view seen")."""

from __future__ import annotations

from edge_assist.vocab import REVERSE_ACTION

RETURN_DROP = 0.3  # the meter this far below its best ...
RETURN_WITHIN_MOVES = 6  # ... within this many moves of the best: go back there


class BackToBest:
    def __init__(self, good: float, drop: float = RETURN_DROP, within: float = RETURN_WITHIN_MOVES, unit: float = 1.0):
        self.good, self.drop = float(good), float(drop)
        self.unit = float(unit)
        self.window = float(within) * self.unit  # in the clock's units
        self.reset()

    def reset(self) -> None:
        self._best: float | None = None  # the best meter reading, and whether it may still be gone back to
        self._armed = False
        self._path: list[list] = []  # [move, duration] shown since the best, oldest first
        self._shown: str | None = None  # what steer() returned last, and when
        self._t: float | None = None
        self._way_back: list[tuple[str, float]] = []  # (move, until) still to show
        self._hold_until: float | None = None
        self.returns = 0  # started since reset (for reports)

    @property
    def returning(self) -> bool:
        """Showing the way back (not the hold at its end)."""
        return bool(self._way_back)

    @property
    def active(self) -> bool:
        return bool(self._way_back) or self._hold_until is not None

    def steer(self, proposed: str, score: float, t: float, current: float | None = None) -> str:
        """The move to show at clock `t`: `proposed` (what the other rules
        chose), or the way back, or the hold at its end. `score`: the meter
        (smoothed, in the smoother); `current`: its reading on the newest
        frame alone, if that differs. Call once per move made (closed loop)
        or per frame (smoother)."""
        if self._t is not None and not self.active and self._best is not None and self._shown in REVERSE_ACTION:
            self._credit(self._shown, t - self._t)
        self._t = t
        self._shown = self._next(proposed, score, t, score if current is None else current)
        return self._shown

    def _credit(self, move: str, dt: float) -> None:
        if self._path and self._path[-1][0] == move:
            self._path[-1][1] += dt
        else:
            self._path.append([move, dt])
        if sum(d for _, d in self._path) > self.window:
            self._best, self._armed, self._path = None, False, []  # too far behind to go back to

    def _next(self, proposed: str, score: float, t: float, current: float) -> str:
        while self._way_back and self._way_back[0][1] <= t:
            self._way_back.pop(0)
            if not self._way_back:  # back where the best was read
                self._path = []
                if current >= self.good:
                    self._hold_until = t + self.unit
        if self._way_back:
            return self._way_back[0][0]
        if self._hold_until is not None:
            if t < self._hold_until:
                return "hold"
            self._hold_until = None
        if self._best is None or score > self._best or (self._armed and score >= self._best):  # the latest of equal readings
            self._best, self._armed, self._path = score, True, []
        elif self._armed and self._best >= self.good and score < self._best - self.drop and self._path:
            self._armed = False
            until = t
            for move, duration in reversed(self._path):
                until += max(1, round(duration / self.unit)) * self.unit  # a move shown at all was made at least once
                self._way_back.append((REVERSE_ACTION[move], until))
            self.returns += 1
            return self._way_back[0][0]
        return proposed
