from edge_assist.frames import GuidanceResult, QualityResult
from edge_assist.hints import (BlindSweep, HintSmoother, MoveTrail, SmoothingConfig, detour_move, guidance_text, hold_only_when_due,
                               no_revisit, quality_text)
from edge_assist.vocab import ACTIONS, REVERSE_ACTION


def g(action, p=0.8, other="hold"):
    return GuidanceResult(action, p, {action: p, other: 1 - p})


def test_action_does_not_flicker():
    s = HintSmoother()
    shown = [s.guidance(g("slide_left" if i % 2 else "rotate_cw", 0.6, "hold")).action for i in range(30)]
    assert len(set(shown[3:])) == 1


def test_action_switches_after_persisting():
    s = HintSmoother(SmoothingConfig(action_min_frames=3))
    for _ in range(10):
        assert s.guidance(g("slide_left", 0.9, "slide_right")).action == "slide_left"
    shown = [s.guidance(g("slide_right", 0.9, "slide_left")).action for _ in range(10)]
    assert shown[0] == "slide_left"  # one frame is not enough
    assert shown[-1] == "slide_right"
    first = shown.index("slide_right")
    assert 2 <= first <= 6


def test_reason_hysteresis():
    s = HintSmoother(SmoothingConfig(alpha=1.0, reason_on=0.6, reason_off=0.4))
    def q(p):
        return s.quality(QualityResult(0.3, [], {"no_contact": p}))
    assert q(0.7).reasons == ["no_contact"]
    assert q(0.5).reasons == ["no_contact"]  # between thresholds: stays on
    assert q(0.3).reasons == []
    assert q(0.5).reasons == []  # and stays off


def test_texts():
    assert guidance_text(GuidanceResult("hold", 0.9)) == "Hold still – good view"
    assert quality_text(QualityResult(0.2, ["partial_contact"])).startswith("Partial contact")
    assert quality_text(QualityResult(0.9, [])) == "Good image"


def test_hold_is_shown_only_on_a_good_view_or_lost_contact():
    hold = GuidanceResult("hold", 0.5, {"hold": 0.5, "slide_left": 0.3, "fan_away": 0.2})
    poor = QualityResult(0.2, ["shadowing"], {})
    shown = hold_only_when_due(hold, poor)
    assert shown.action == "slide_left" and shown.confidence == 0.3 and shown.probs["hold"] == 0.0
    assert hold_only_when_due(hold, QualityResult(0.8, [], {})).action == "hold"  # view reached (hold at even odds)
    unsure = GuidanceResult("slide_left", 0.45, {"hold": 0.25, "slide_left": 0.45, "fan_away": 0.3})
    assert hold_only_when_due(unsure, QualityResult(0.8, [], {})).action == "slide_left"  # good, but hold is not sure
    assert hold_only_when_due(unsure, QualityResult(0.8, [], {})).probs["hold"] == 0.0  # nor on offer to a later rule
    assert hold_only_when_due(unsure, QualityResult(0.9, [], {})) is unsure  # clearly good: hold stays on offer
    assert hold_only_when_due(unsure, QualityResult(0.8, [], {}), confidence=0.2) is unsure
    likely = GuidanceResult("slide_left", 0.4, {"hold": 0.35, "slide_left": 0.4, "fan_away": 0.25})
    assert hold_only_when_due(likely, QualityResult(0.8, [], {})) is likely  # hold at 0.35 is on offer on a good view
    assert hold_only_when_due(hold, QualityResult(0.6, [], {})).action == "slide_left"  # diagnostic, but the meter is not in its good band
    assert hold_only_when_due(hold, QualityResult(0.1, ["no_contact"], {})).action == "hold"  # re-seat the probe
    move = GuidanceResult("fan_away", 0.6, {"fan_away": 0.6, "hold": 0.4})
    kept = hold_only_when_due(move, poor)
    assert kept.action == "fan_away" and kept.confidence == 0.6 and kept.probs == {"fan_away": 0.6, "hold": 0.0}
    assert hold_only_when_due(move, QualityResult(0.9, [], {})) is move  # clearly good: hold stays on offer
    # through the smoother: a poor view never shows hold, however sure the head is
    s = HintSmoother(SmoothingConfig(alpha=1.0))
    sure_hold = GuidanceResult("hold", 0.9, {"hold": 0.9, "rotate_cw": 0.1})
    assert all(s.hints(i, 0, poor, sure_hold, None).guidance.action == "rotate_cw" for i in range(5))


def probs(**p):
    return {a: p.get(a, 0.0) for a in ACTIONS}


def test_every_move_has_one_reverse():
    assert set(REVERSE_ACTION) == set(ACTIONS) - {"hold"}
    assert all(REVERSE_ACTION[REVERSE_ACTION[a]] == a != REVERSE_ACTION[a] for a in REVERSE_ACTION)
    assert REVERSE_ACTION["slide_left"] == "slide_right" and REVERSE_ACTION["fan_toward"] == "fan_away"


def trail_of(*moves, horizon=8):
    t = MoveTrail(horizon)
    for m in moves:
        t.step(m)
    return t


def test_a_move_is_not_undone_straight_away():
    p = probs(slide_right=0.6, slide_left=0.2, rotate_cw=0.15, hold=0.05)
    back = GuidanceResult("slide_right", 0.6, p)
    shown = no_revisit(back, trail_of("slide_left"))
    assert shown.action == "slide_left" and shown.confidence == 0.2  # the best move that does not lead back
    assert no_revisit(back, trail_of("slide_right")) is back  # repeating a move is fine
    assert no_revisit(back, trail_of("fan_away")) is back  # the reverse of another move is fine
    assert no_revisit(back, trail_of()) is back  # first move
    assert no_revisit(back, trail_of("hold")) is back
    # a head that offers nothing else keeps its move
    only = GuidanceResult("slide_right", 0.9, {"slide_right": 0.9, "slide_left": 0.0})
    assert no_revisit(only, trail_of("slide_left")) is only
    assert detour_move({"slide_right": 0.9, "slide_left": 0.1}, trail_of("slide_left"), barred="slide_left") is None


def test_no_walking_round_a_square():
    # A, B, reverse A: the reverse of B would close the square
    trail = trail_of("slide_head", "slide_right", "slide_feet")
    g = GuidanceResult("slide_left", 0.5, probs(slide_left=0.5, slide_feet=0.3, fan_away=0.2))
    assert trail.revisits("slide_left") and not trail.revisits("fan_away")
    assert no_revisit(g, trail).action == "slide_feet"  # further along, not back to the start
    hold = GuidanceResult("hold", 0.9, probs(hold=0.9, slide_left=0.1))
    assert no_revisit(hold, trail) is hold  # holding never revisits
    # places older than the horizon may be visited again
    far = trail_of("slide_head", "slide_right", "slide_feet", horizon=2)
    assert not far.revisits("slide_left")
    assert far.revisits("slide_head")


def test_smoother_detours_before_showing_a_reverse():
    cfg = SmoothingConfig(alpha=1.0, action_min_frames=3, reversal_detour_s=0.5)
    s = HintSmoother(cfg)
    ms = 1_000_000
    t = 0
    for _ in range(5):
        t += 16 * ms
        assert s.guidance(GuidanceResult("slide_left", 0.8, probs(slide_left=0.8, fan_away=0.2)), t).action == "slide_left"
    flip = GuidanceResult("slide_right", 0.7, probs(slide_right=0.7, slide_left=0.1, fan_away=0.15, hold=0.05))
    shown = []
    for _ in range(60):  # ~1 s at 60 fps
        t += 16 * ms
        shown.append(s.guidance(flip, t).action)
    assert "slide_right" in shown and shown[:2] == ["slide_left", "slide_left"]  # hysteresis as before
    first_detour = shown.index("fan_away")
    first_back = shown.index("slide_right")
    assert first_detour == 2  # when the reverse would have been shown, the next-best move is
    # the reverse waits out the detour (0.5 s = ~31 frames), then needs its usual 3 frames
    assert 31 <= first_back - first_detour <= 35
    assert set(shown[first_detour:first_back]) == {"fan_away"}


def test_smoother_switches_to_an_unrelated_move_directly():
    s = HintSmoother(SmoothingConfig(alpha=1.0, action_min_frames=3))
    for i in range(5):
        s.guidance(GuidanceResult("slide_left", 0.8, probs(slide_left=0.8, rotate_cw=0.2)), i)
    shown = [s.guidance(GuidanceResult("rotate_cw", 0.8, probs(rotate_cw=0.8, slide_left=0.2)), 10 + i).action for i in range(5)]
    assert shown == ["slide_left", "slide_left", "rotate_cw", "rotate_cw", "rotate_cw"]


def test_smoother_does_not_lead_round_a_square():
    s = HintSmoother(SmoothingConfig(alpha=1.0, action_min_frames=3, reversal_detour_s=0.5))
    t = 0
    for move in ("slide_head", "slide_right", "slide_feet"):
        for _ in range(6):
            t += 16_000_000
            shown = s.guidance(GuidanceResult(move, 0.8, probs(**{move: 0.8, "fan_away": 0.2})), t).action
        assert shown == move
    closing = GuidanceResult("slide_left", 0.7, probs(slide_left=0.7, fan_away=0.2, slide_feet=0.1))
    seen = []
    for _ in range(10):
        t += 16_000_000
        seen.append(s.guidance(closing, t).action)
    assert "slide_left" not in seen and seen[-1] == "fan_away"  # the square is not closed


def sweep_run(moves, scores, **kw):
    """The moves BlindSweep shows (move clock) for the head's proposals and the meter's scores."""
    sweep = BlindSweep(**kw)
    return [sweep.steer(m, s, t) for t, (m, s) in enumerate(zip(moves, scores))], sweep


def test_blind_sweep_goes_back_after_sliding_one_way_on_a_blank_image():
    shown, sweep = sweep_run(["slide_head"] * 30, [0.0] * 30, after=4, back=3.0, per_spell=1)
    assert shown[:4] == ["slide_head"] * 4  # the head's guess first
    assert shown[4:16] == ["slide_feet"] * 12  # then back past the start: 3 x the way out
    assert shown[16:] == ["slide_head"] * 14  # one sweep per blank spell here: the head again
    assert sweep.sweeps == 1


def test_blind_sweep_stops_when_the_image_comes_back():
    scores = [0.0] * 6 + [0.3] * 4
    shown, _ = sweep_run(["slide_left"] * 10, scores)
    assert shown[4:6] == ["slide_right"] * 2
    assert shown[6:] == ["slide_left"] * 4  # something to steer by again: the head's move


def test_blind_sweep_only_on_blank_images_and_repeated_slides():
    assert sweep_run(["slide_head"] * 12, [0.2] * 12)[0] == ["slide_head"] * 12  # the image shows something
    fans = sweep_run(["fan_away"] * 12, [0.0] * 12)[0]
    assert fans == ["fan_away"] * 12  # only slides are swept
    mixed = ["slide_head", "slide_left"] * 6
    assert sweep_run(mixed, [0.0] * 12)[0] == mixed  # no one way to go back along
    # the image went blank only at the last of four slides: not yet
    assert sweep_run(["slide_head"] * 5, [0.5, 0.5, 0.5, 0.0, 0.0])[0] == ["slide_head"] * 5


def test_blind_sweep_budget_is_per_blank_spell():
    # two sweeps (back, then forth again), then the head's moves while the image stays blank
    shown, sweep = sweep_run(["slide_head"] * 40, [0.0] * 40, after=4, back=3.0)
    assert shown[4:16] == ["slide_feet"] * 12 and shown[16:28] == ["slide_head"] * 12
    assert sweep.sweeps == 2 and shown[28:] == ["slide_head"] * 12
    # a view in between gives the next blank spell its own sweeps
    scores = [0.0] * 10 + [0.4] + [0.0] * 10
    shown, sweep = sweep_run(["slide_head"] * 21, scores, after=4, back=1.0, per_spell=1)
    assert shown[4:8] == ["slide_feet"] * 4 and shown[14:18] == ["slide_feet"] * 4  # blank through 3 moves again
    assert sweep.sweeps == 2


def test_smoother_sweeps_back_over_time_on_a_blank_image():
    s = HintSmoother(SmoothingConfig(move_s=0.5))
    blank = QualityResult(0.0, ["shadowing"], {"shadowing": 0.9})
    head = GuidanceResult("slide_head", 0.7, {"slide_head": 0.7, "slide_feet": 0.1, "depth_up": 0.2})
    shown = [s.hints(i, int(i * 1e9 / 30), blank, head, None).guidance.action for i in range(300)]  # 10 s at 30 fps
    first_back = shown.index("slide_feet")
    assert 55 <= first_back <= 65  # the same slide for 2 s (4 moves of 0.5 s)
    assert shown[first_back:first_back + 175] == ["slide_feet"] * 175  # for about 6 s (12 moves)
    assert s.sweeps >= 1
    # a readable image: the head's move throughout, and no sweep without the meter
    s2 = HintSmoother()
    fair = QualityResult(0.4, [], {})
    assert {s2.hints(i, int(i * 1e9 / 30), fair, head, None).guidance.action for i in range(300)} == {"slide_head"}
    s3 = HintSmoother()
    assert {s3.guidance(head, int(i * 1e9 / 30)).action for i in range(300)} == {"slide_head"}
    assert HintSmoother(SmoothingConfig(move_s=None)).sweeps == 0


def test_the_text_says_why_the_arrow_turns_back():
    s = HintSmoother()
    blank = QualityResult(0.0, ["shadowing"], {"shadowing": 0.9})
    head = GuidanceResult("slide_head", 0.7, {"slide_head": 0.7, "slide_feet": 0.1, "depth_up": 0.2})
    texts = [s.hints(i, int(i * 1e9 / 30), blank, head, None).guidance_text for i in range(90)]
    assert texts[0] == "Slide across the plane, toward the head side"
    assert texts[-1] == "Nothing in view – go back: slide across the plane, toward the feet side"


def test_a_detour_is_never_a_hold_that_is_not_due():
    # The head prefers a move that leads back; hold is its next best. On a view
    # the meter does not call good, the detour must be a move: a hold there
    # froze the closed-loop operator for good (docs/TRAINING.md).
    p = probs(slide_right=0.5, hold=0.3, fan_away=0.15, slide_left=0.05)
    back = GuidanceResult("slide_right", 0.5, p)
    trail = trail_of("slide_left")
    assert no_revisit(hold_only_when_due(back, QualityResult(0.6, [], {})), trail).action == "fan_away"
    assert no_revisit(hold_only_when_due(back, QualityResult(0.9, [], {})), trail).action == "hold"  # the view is good
    # the same through the smoother, which detours on its averaged probabilities
    s = HintSmoother(SmoothingConfig(alpha=1.0, action_min_frames=1, action_margin=0.0))
    fair = QualityResult(0.6, [], {})
    first = GuidanceResult("slide_left", 0.6, probs(slide_left=0.6, hold=0.3, fan_away=0.1))
    assert s.hints(0, 0, fair, first, None).guidance.action == "slide_left"
    assert all(s.hints(i, i * 16_000_000, fair, back, None).guidance.action != "hold" for i in range(1, 20))
