"""Temporal smoothing with hysteresis, and the words the operator reads.

Raw per-frame outputs flicker; arrows that change every frame are worse than
none. Scores are smoothed with an exponential moving average; a reason flag
turns on above `on` and off only below `off`; the shown action changes only
when another action has led by `margin` for `min_frames` frames in a row, and
never to a move that leads back where the last moves have been (no_revisit).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from edge_assist.best_view import BackToBest
from edge_assist.frames import GuidanceResult, Hints, InterpreterResult, QualityResult
from edge_assist.move_check import UndoWorseMove
from edge_assist.vocab import ACTION_TEXT, REASON_TEXT, REVERSE_ACTION

GOOD_QUALITY = 0.7  # meter band above which the image is called good
CONTACT_REASONS = ("no_contact", "partial_contact")


HOLD_CONFIDENCE = 0.3  # hold_only_when_due: the head's hold probability that may call a good view reached ...
CLEARLY_GOOD = 0.85  # ... unless the quality meter is at least this high


def hold_only_when_due(g: GuidanceResult, q: QualityResult, threshold: float = GOOD_QUALITY,
                       confidence: float = HOLD_CONFIDENCE, clearly_good: float = CLEARLY_GOOD) -> GuidanceResult:
    """'hold' means the view is reached (stay) or contact is lost (re-seat the
    probe). The guidance head also says it on dark, shadowed or empty views
    it cannot read, which look like a probe in air, and on views a little
    off the target, and an operator who obeys is stuck there. So it is shown
    only where contact is lost, or where the quality meter is in its good
    band and either the head gives hold at least `confidence` or the meter
    reads `clearly_good`. Elsewhere the best other move is shown. Why both:
    the closed loop's commonest failure was a hold just outside the target
    view, where the meter read 0.75-0.9 and the head gave hold about even
    odds; at the target view the head gives it more (docs/TRAINING.md,
    "Hold only when sure"). `confidence` was 0.5 (more than all the moves
    together) until an operator who stops on the first hold was measured:
    at 0.3 they stop on the target view 3 points more often, for 7 fewer
    episodes of 1800 that reach it at all (docs/TRAINING.md, "Reached and
    settled").

    Where hold is not due its probability is set to zero even when the head
    prefers a move, so that no later rule picks it instead: no_revisit's
    detour round a move that leads back took hold as the next best, and the
    operator then stood still for good on a view that was not good
    (docs/TRAINING.md, "A detour is never a hold that is not due")."""
    if not g.probs or any(r in q.reasons for r in CONTACT_REASONS):
        return g
    if q.score >= threshold and (g.probs.get("hold", 0.0) >= confidence or q.score >= clearly_good):
        return g
    probs = {**g.probs, "hold": 0.0}  # what the smoother averages: hold is not on offer here
    best = g.action if g.action != "hold" else max(probs, key=probs.get)
    return GuidanceResult(best, probs[best], probs)


def _move_axes() -> dict[str, tuple[int, int]]:
    """(axis, +1 or -1) of every move: a move and its reverse (vocab.REVERSE_ACTION) share an axis."""
    axes: dict[str, tuple[int, int]] = {}
    for move, reverse in REVERSE_ACTION.items():
        if move not in axes:
            k = len(axes) // 2
            axes[move], axes[reverse] = (k, +1), (k, -1)
    return axes


_AXIS = _move_axes()
REVISIT_MOVES = 8  # MoveTrail: a move may not lead back to where the last this-many moves have been


class MoveTrail:
    """Where the moves made so far have taken the probe, counted in steps
    along each move's axis (slide, rotate, fan, rock, depth, gain), and
    where it was over the last `horizon` moves. Cycles in the closed loop
    were mostly a move and its reverse, then, once those were kept apart,
    four moves round a square (A, B, reverse A, reverse B): docs/TRAINING.md.
    The count is the operator's, not the probe's pose (a slide after a
    rotation is not the same slide), which is all the hints know."""

    def __init__(self, horizon: int = REVISIT_MOVES):
        self.horizon = max(1, int(horizon))
        self.reset()

    def reset(self) -> None:
        self._at = (0,) * (len(_AXIS) // 2)
        self._recent = deque([self._at], maxlen=self.horizon + 1)

    def after(self, action: str) -> tuple[int, ...]:
        axis = _AXIS.get(action)
        if axis is None:  # hold
            return self._at
        at = list(self._at)
        at[axis[0]] += axis[1]
        return tuple(at)

    def revisits(self, action: str) -> bool:
        """The move would bring the probe back to a place of the last moves (hold never does)."""
        return action in _AXIS and self.after(action) in self._recent

    def step(self, action: str) -> None:
        if action in _AXIS:
            self._at = self.after(action)
            self._recent.append(self._at)


def detour_move(probs: dict[str, float], trail: MoveTrail, barred: str | None = None) -> str | None:
    """The move to show instead of one that leads back where the probe has
    just been: the head's best move that does not (and is not `barred`);
    None when it offers no other."""
    return max((a for a, p in probs.items() if a != barred and p > 0.0 and not trail.revisits(a)), key=probs.get, default=None)


def no_revisit(g: GuidanceResult, trail: MoveTrail) -> GuidanceResult:
    """The guidance head often answers its own move with the reverse move,
    or walks round a square of four, and the operator goes round with it:
    in the closed loop many failures were such cycles (docs/TRAINING.md).
    A move that would lead back to where the last moves have been is
    therefore replaced by the head's best move that does not (hold is never
    replaced). For the closed loop (one move per frame; the caller steps the
    trail with the move made); the smoother applies the same rule over
    time."""
    if not g.probs or not trail.revisits(g.action):
        return g
    detour = detour_move(g.probs, trail)
    if detour is None:
        return g
    return GuidanceResult(detour, g.probs[detour], g.probs)


BLANK_SCORE = 0.05  # the quality meter below this: the image shows nothing to steer by
SWEEP_AFTER_MOVES = 4  # BlindSweep: the same slide this many moves, the image blank through the last of them ...
SWEEP_BACK = 3.0  # ... then the reverse slide for this many times as many moves
SWEEPS_PER_SPELL = 2  # at most this many sweeps while the image stays blank


class BlindSweep:
    """On a blank image, the guidance head has nothing to steer by and
    keeps sliding the way it guesses (behind the ribs or lung, or with the
    target far off), while no_revisit keeps it from coming back: in the
    closed loop most cardiac failures slid one way to the end of the
    episode, often away from the window (docs/TRAINING.md, "A sweep back
    when the image stays blank"). A sonographer who has slid one way for a
    while and seen nothing goes back past the start to look on the other
    side. So once the same slide has been made `after` moves in a row and
    the meter has read blank through the last `after` - 1 of them, the
    reverse slide is shown for `back` x `after` moves, or until the image
    comes back; at most `per_spell` times while it stays blank.

    The clock `t` counts moves in the closed loop (one per frame) and
    seconds in the smoother, with `after` scaled by the time one move
    takes; the sweep's moves pass no_revisit (they go back on purpose)."""

    def __init__(self, after: float = SWEEP_AFTER_MOVES, back: float = SWEEP_BACK, per_spell: int = SWEEPS_PER_SPELL,
                 unit: float = 1.0):
        self.after = float(after) * unit  # in the clock's units
        self.blank_for = (float(after) - 1.0) * unit
        self.length = float(back) * float(after) * unit
        self.per_spell = int(per_spell)
        self.reset()

    def reset(self) -> None:
        self._blank_since: float | None = None
        self._last: str | None = None  # the move shown last, and since when
        self._last_since = 0.0
        self._reverse: str | None = None  # the sweep under way, and until when
        self._until = 0.0
        self._used = 0
        self.sweeps = 0  # started since reset (for reports)

    @property
    def active(self) -> bool:
        return self._reverse is not None

    def steer(self, proposed: str, score: float, t: float) -> str:
        """The move to show at clock `t`: `proposed` (what the other rules
        chose), or the sweep's. Call once per shown move (closed loop) or
        per frame (smoother); it records what it returns."""
        if score >= BLANK_SCORE:
            self._blank_since, self._reverse, self._used = None, None, 0  # the image is back: the head again
        elif self._blank_since is None:
            self._blank_since = t
        if self._reverse is not None and t >= self._until:
            self._reverse = None
        if (self._reverse is None and self._blank_since is not None and self._used < self.per_spell
                and self._last is not None and self._last.startswith("slide_")
                and t - self._blank_since >= self.blank_for and t - self._last_since >= self.after):
            self._reverse, self._until = REVERSE_ACTION[self._last], t + self.length
            self._used += 1
            self.sweeps += 1
        action = self._reverse if self._reverse is not None else proposed
        if action != self._last:
            self._last, self._last_since = action, t
        return action


@dataclass
class SmoothingConfig:
    alpha: float = 0.35  # EMA weight of the newest frame
    reason_on: float = 0.6
    reason_off: float = 0.4
    action_margin: float = 0.10
    action_min_frames: int = 3
    # When the shown move would give way to one leading back where the last
    # moves have been (its reverse, or round a square), the best other move
    # is shown instead, and the barred one is kept out for this long: long
    # enough for the operator to make that move (evaluate.closed_loop(paced):
    # 1 s helps an operator making one move every 0.5 s or 1 s alike).
    reversal_detour_s: float = 1.0
    revisit_moves: int = REVISIT_MOVES  # MoveTrail horizon, in shown moves
    # How long the operator takes for one move: BlindSweep's, BackToBest's
    # and UndoWorseMove's move counts become seconds. None switches them off.
    move_s: float | None = 0.5
    back_to_best: bool = True  # go back to the best view seen (best_view.BackToBest)
    # undo a move the move check head calls worse (move_check.UndoWorseMove; needs that head's readings)
    undo_worse: bool = True


class HintSmoother:
    def __init__(self, config: SmoothingConfig | None = None):
        self.cfg = config or SmoothingConfig()
        self.reset()

    def reset(self) -> None:
        self._score: float | None = None
        self._reason_p: dict[str, float] = {}
        self._reasons_on: set[str] = set()
        self._action_p: dict[str, float] = {}
        self._action: str | None = None
        self._challenger: str | None = None
        self._challenger_frames = 0
        self._barred: str | None = None  # a move kept out until _barred_until_ns
        self._barred_until_ns = 0
        self._t_ns: int | None = None  # the clock of the last frame
        # The moves shown, each taken as one step the operator made.
        self._trail = MoveTrail(self.cfg.revisit_moves)
        self._sweep = BlindSweep(unit=self.cfg.move_s) if self.cfg.move_s else None
        self._back = BackToBest(GOOD_QUALITY, unit=self.cfg.move_s) if self.cfg.move_s and self.cfg.back_to_best else None
        self.undo = UndoWorseMove(unit=self.cfg.move_s) if self.cfg.move_s and self.cfg.undo_worse else None

    @property
    def sweeps(self) -> int:
        """Sweeps back on a blank image since reset (BlindSweep)."""
        return self._sweep.sweeps if self._sweep is not None else 0

    @property
    def undos(self) -> int:
        """Moves undone since reset because the move check called them worse (UndoWorseMove)."""
        return self.undo.undos if self.undo is not None else 0

    @property
    def returns(self) -> int:
        """Ways back to the best view seen since reset (BackToBest)."""
        return self._back.returns if self._back is not None else 0

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.cfg.alpha * (new - old)

    def quality(self, q: QualityResult) -> QualityResult:
        self._score = self._ema(self._score, q.score)
        for name, p in q.reason_probs.items():
            self._reason_p[name] = self._ema(self._reason_p.get(name), p)
        for name, p in self._reason_p.items():
            if p >= self.cfg.reason_on:
                self._reasons_on.add(name)
            elif p <= self.cfg.reason_off:
                self._reasons_on.discard(name)
        active = sorted(self._reasons_on, key=lambda n: -self._reason_p[n])
        return QualityResult(score=self._score, reasons=active, reason_probs=dict(self._reason_p))

    def guidance(self, g: GuidanceResult, t_ns: int | None = None, score: float | None = None,
                 current: float | None = None, check: tuple[str, float] | None = None) -> GuidanceResult:
        """The move to show. `score`: the (smoothed) quality meter, for the
        sweep on a blank image (BlindSweep) and the way back to the best
        view seen (BackToBest); without it there are neither. `current`:
        the meter on this frame alone (BackToBest judges the view it went
        back to on it). `check`: (move, probability it made the view
        better) from the move check, where `undo.wants_check` asked for it
        (move_check.MoveCheckFeed); a move it calls worse is undone."""
        t_ns = time.monotonic_ns() if t_ns is None else t_ns
        probs = g.probs or {g.action: g.confidence}
        for name, p in probs.items():
            self._action_p[name] = self._ema(self._action_p.get(name), p)
        if self._barred is not None and t_ns >= self._barred_until_ns:
            self._barred = None
        if self._t_ns is not None and t_ns < self._t_ns:  # the clock went back (a new source): the timed rules start afresh
            for rule in (self._sweep, self._back, self.undo):
                if rule is not None:
                    rule.reset()
        self._t_ns = t_ns
        t = t_ns / 1e9
        undo = self.undo
        if undo is not None and check is not None:
            undo.judge(check[0], check[1], t)
        sweep, back = (self._sweep, self._back) if score is not None else (None, None)
        if undo is not None and undo.active(t):  # the undo goes back on purpose: no other rule, no challenger
            shown = undo.steer(self._action, t)
        else:
            if not any(r is not None and r.active for r in (sweep, back)):  # while a rule shows its own moves (below), challengers wait
                self._follow_head(t_ns, undo.barred_probs(self._action_p, t) if undo is not None else None)
            shown = self._action
            if sweep is not None:
                shown = sweep.steer(shown, score, t)
            if back is not None:
                shown = back.steer(shown, score, t, current)
        if shown != self._action:
            self._action, self._challenger, self._challenger_frames = shown, None, 0
            self._trail.step(shown)
        return GuidanceResult(self._action, self._action_p.get(self._action, 0.0), dict(self._action_p))

    def _follow_head(self, t_ns: int, probs: dict[str, float] | None = None) -> None:
        """Hysteresis: switch the shown move to the head's smoothed best once
        it has led by the margin for enough frames, detouring round a move
        that leads back where the probe has just been. `probs`: the smoothed
        probabilities with the moves UndoWorseMove keeps out at zero."""
        probs = self._action_p if probs is None else probs
        best = max((a for a in probs if a != self._barred), key=probs.get)
        if self._action is None:
            self._action = best
            self._trail.step(best)
        elif best != self._action:
            lead = probs[best] - probs.get(self._action, 0.0)
            if best == self._challenger:
                self._challenger_frames += 1
            else:
                self._challenger, self._challenger_frames = best, 1
            if lead >= self.cfg.action_margin and self._challenger_frames >= self.cfg.action_min_frames:
                new = best
                if self._trail.revisits(best):
                    detour = detour_move(probs, self._trail, barred=self._action)
                    if detour is not None:
                        new = detour
                        self._barred, self._barred_until_ns = best, t_ns + int(self.cfg.reversal_detour_s * 1e9)
                self._action, self._challenger, self._challenger_frames = new, None, 0
                self._trail.step(new)
        else:
            self._challenger, self._challenger_frames = None, 0

    def hints(self, frame_index, t_capture_ns, q: QualityResult, g: GuidanceResult, interp: InterpreterResult | None,
              check: tuple[str, float] | None = None) -> Hints:
        """`check`: the move check's reading (guidance())."""
        qs = self.quality(q)
        gs = self.guidance(hold_only_when_due(g, q), t_capture_ns, score=qs.score, current=q.score, check=check)
        sweeping = self._sweep is not None and self._sweep.active
        returning = self._back is not None and self._back.returning
        undoing = self.undo is not None and self.undo.active(t_capture_ns / 1e9)
        return Hints(frame_index, t_capture_ns, qs, gs, interp, quality_text(qs), guidance_text(gs, qs, sweeping, returning, undoing))


def quality_text(q: QualityResult) -> str:
    if q.reasons:
        return REASON_TEXT.get(q.reasons[0], q.reasons[0])
    if q.score >= GOOD_QUALITY:
        return "Good image"
    return "Image quality limited"


def guidance_text(g: GuidanceResult, q: QualityResult | None = None, sweeping: bool = False, returning: bool = False,
                  undoing: bool = False) -> str:
    # "Hold" is also the right move while contact is being restored: only call
    # the view good when the quality meter agrees.
    if g.action == "hold" and q is not None and (q.score < GOOD_QUALITY or q.reasons):
        return "Hold position – fix the image first" if q.reasons else "Hold position"
    text = ACTION_TEXT.get(g.action, g.action)
    # Say why the arrow turns back: the operator sees no image either (BlindSweep),
    # saw a better one a moment ago (BackToBest), or the last move made it worse (UndoWorseMove).
    if sweeping:
        return f"Nothing in view – go back: {text[0].lower()}{text[1:]}"
    if undoing:
        return f"That made it worse – go back: {text[0].lower()}{text[1:]}"
    return f"Back to the better view: {text[0].lower()}{text[1:]}" if returning else text
