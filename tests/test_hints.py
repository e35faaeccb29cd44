from edge_assist.frames import GuidanceResult, QualityResult
from edge_assist.hints import HintSmoother, SmoothingConfig, guidance_text, hold_only_when_due, quality_text


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
    assert hold_only_when_due(hold, QualityResult(0.8, [], {})).action == "hold"  # view reached
    assert hold_only_when_due(hold, QualityResult(0.6, [], {})).action == "slide_left"  # diagnostic, but the meter is not in its good band
    assert hold_only_when_due(hold, QualityResult(0.1, ["no_contact"], {})).action == "hold"  # re-seat the probe
    move = GuidanceResult("fan_away", 0.6, {"fan_away": 0.6, "hold": 0.4})
    assert hold_only_when_due(move, poor) is move
    # through the smoother: a poor view never shows hold, however sure the head is
    s = HintSmoother(SmoothingConfig(alpha=1.0))
    sure_hold = GuidanceResult("hold", 0.9, {"hold": 0.9, "rotate_cw": 0.1})
    assert all(s.hints(i, 0, poor, sure_hold, None).guidance.action == "rotate_cw" for i in range(5))
