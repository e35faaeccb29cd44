"""A scripted novice for demos and benchmarks.

It searches for the target view, mostly following the optimal action (as if
following the assistant's arrow) with some wrong moves, holds the view for a
few seconds, then drifts off: wanders, lifts the probe, loses contact on one
side, turns the gain, or moves fast (motion blur), and searches again.
Deterministic for a given seed: it acts on frame counts, never on wall time.
"""

from __future__ import annotations

import numpy as np

from edge_assist.sim.patient import VirtualPatient
from edge_assist.vocab import ACTIONS

MOVES = [a for a in ACTIONS if a != "hold"]


class Novice:
    def __init__(self, seed: int, fps: float = 30.0, follow_p: float = 0.75):
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x40B1CE]))
        self.fps = float(fps)
        self.follow_p = follow_p
        self.state = "search"
        self.countdown = 0
        self.wander_left = 0
        self.last_action: str | None = None

    def _frames(self, seconds: float) -> int:
        return max(1, int(round(seconds * self.fps)))

    def step(self, vp: VirtualPatient) -> str | None:
        """Advance one frame; returns the move made on this frame, if any."""
        self.last_action = None
        if self.countdown > 0:
            self.countdown -= 1
            # Motion blur fades while the probe settles.
            if vp.deg["blur"] > 0:
                vp.apply_degradations({"blur": max(0.0, vp.deg["blur"] - 0.08)})
            return None
        rng = self.rng
        if self.state == "search":
            if vp.deg["contact"] < 0.999:
                action = "hold"
            elif vp.at_target():
                self.state = "hold"
                self.countdown = self._frames(rng.uniform(2.0, 4.0))
                return None
            elif rng.random() < self.follow_p:
                action = vp.optimal_action()
            else:
                action = str(rng.choice(MOVES))
            vp.move(action)
            if action != "hold" and rng.random() < 0.3:
                vp.apply_degradations({"blur": float(rng.uniform(0.3, 0.7))})
            self.last_action = action
            self.countdown = self._frames(rng.uniform(0.25, 0.6))
            return action
        if self.state == "hold":
            self.state = "drift"
            kind = str(rng.choice(["wander", "wander", "lift", "partial", "gain", "fast"]))
            if kind == "wander":
                self.wander_left = int(rng.integers(3, 9))
            elif kind == "lift":
                vp.apply_degradations({"contact": 0.0})
                self.wander_left = int(rng.integers(1, 4))
            elif kind == "partial":
                vp.apply_degradations({"contact": float(rng.uniform(0.4, 0.8)), "contact_side": int(rng.choice([-1, 1]))})
            elif kind == "gain":
                vp.apply_degradations({"gain_db": float(rng.choice([-1, 1]) * rng.uniform(6, 15))})
            else:
                self.wander_left = int(rng.integers(2, 5))
                vp.apply_degradations({"blur": float(rng.uniform(0.6, 1.0))})
            self.countdown = self._frames(rng.uniform(0.5, 1.2))
            return None
        # drift
        if self.wander_left > 0:
            self.wander_left -= 1
            action = str(rng.choice(MOVES[:10]))  # position and angle moves
            vp.move(action)
            self.last_action = action
            self.countdown = self._frames(rng.uniform(0.15, 0.4))
            return action
        self.state = "search"
        self.countdown = self._frames(rng.uniform(0.3, 0.8))
        return None
