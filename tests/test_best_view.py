from edge_assist.best_view import BackToBest
from edge_assist.frames import GuidanceResult, QualityResult
from edge_assist.hints import GOOD_QUALITY, HintSmoother, SmoothingConfig


def back_run(moves, scores, **kw):
    """The moves BackToBest shows (move clock) for the proposed moves and the meter's scores."""
    back = BackToBest(GOOD_QUALITY, **kw)
    return [back.steer(m, s, t) for t, (m, s) in enumerate(zip(moves, scores))], back


def test_goes_back_the_way_it_came_last_move_first_then_holds():
    moves = ["slide_left", "fan_away", "rotate_cw", "rotate_cw", "rotate_cw", "rotate_cw", "slide_left"]
    scores = [0.8, 0.75, 0.45, 0.5, 0.8, 0.6, 0.6]
    shown, back = back_run(moves, scores)
    # best 0.8 at move 0; after slide_left and fan_away the meter reads 0.45: back by fan_toward, then slide_right
    assert shown[:2] == ["slide_left", "fan_away"]
    assert shown[2:4] == ["fan_toward", "slide_right"]
    assert shown[4] == "hold"  # back where the best was read, and the meter reads good there
    assert shown[5:] == ["rotate_cw", "slide_left"]  # one move of hold, then the proposals again
    assert back.returns == 1 and not back.active


def test_no_hold_where_the_meter_no_longer_reads_good():
    shown, back = back_run(["slide_head"] * 5, [0.9, 0.55, 0.5, 0.6, 0.6])
    assert shown == ["slide_head", "slide_feet", "slide_head", "slide_head", "slide_head"]  # back one move, then on
    assert back.returns == 1


def test_only_after_a_good_view_and_a_clear_drop():
    assert back_run(["slide_head"] * 6, [0.65, 0.6, 0.3, 0.2, 0.1, 0.1])[0] == ["slide_head"] * 6  # never good
    assert back_run(["slide_head"] * 6, [0.9, 0.8, 0.7, 0.65, 0.62, 0.61])[0] == ["slide_head"] * 6  # never 0.3 below
    # a hold (the probe still) is not a move to undo, and no moves: nowhere to go back along
    assert back_run(["hold", "hold", "hold"], [0.9, 0.4, 0.3])[0] == ["hold"] * 3


def test_once_per_best_and_a_better_view_counts_again():
    moves = ["rock_left"] * 12
    scores = [0.8, 0.4, 0.8, 0.8, 0.4, 0.3,  # back once to 0.8; from there on, not to that one again
              0.9, 0.7, 0.5, 0.6, 0.9, 0.8]  # 0.9 is better: back to it, two moves
    shown, back = back_run(moves, scores)
    assert shown[:6] == ["rock_left", "rock_right", "hold", "rock_left", "rock_left", "rock_left"]
    assert shown[6:] == ["rock_left", "rock_left", "rock_right", "rock_right", "hold", "rock_left"]
    assert back.returns == 2


def test_a_best_too_far_behind_is_forgotten():
    moves = ["slide_left"] * 12
    scores = [0.9] + [0.65] * 6 + [0.75, 0.3, 0.8, 0.5, 0.5]
    shown, _ = back_run(moves, scores, within=6)
    # 0.9 is seven moves behind at 0.75: forgotten, and 0.75 is the best since: back one move to it
    assert shown[:8] == ["slide_left"] * 8
    assert shown[8:] == ["slide_right", "hold", "slide_left", "slide_left"]
    kept = back_run(moves, scores, within=8)[0]
    assert kept[8:] == ["slide_right"] * 4  # 0.9 still within reach: back along eight moves to it
    far = back_run(["slide_left"] * 9, [0.9] + [0.65] * 7 + [0.3])[0]
    assert far == ["slide_left"] * 9  # nothing good since the forgotten best


def smoother_run(frames, **cfg):
    s = HintSmoother(SmoothingConfig(**cfg))
    head = GuidanceResult("slide_head", 0.7, {"slide_head": 0.7, "slide_feet": 0.1, "depth_up": 0.2})
    return [s.hints(i, int(i * 1e9 / 30), q, head, None) for i, q in enumerate(frames)], s


GOOD, POOR = QualityResult(0.85, [], {}), QualityResult(0.2, [], {})


def test_the_smoother_goes_back_over_time_and_says_so():
    # good for 1 s while sliding, then the image falls away (30 fps, a move every 0.5 s)
    hints, s = smoother_run([GOOD] * 30 + [POOR] * 60 + [GOOD] * 30, move_s=0.5)
    shown = [h.guidance.action for h in hints]
    first_back = shown.index("slide_feet")
    assert 30 < first_back < 35  # once the smoothed meter is 0.3 below its best
    # the way out since the best was a few frames: back for one move (0.5 s) ...
    assert shown[first_back:first_back + 15] == ["slide_feet"] * 15
    assert hints[first_back].guidance_text == "Back to the better view: slide across the plane, toward the feet side"
    # ... then, the view back there still poor, no hold: the head's moves again (first a detour: slide_head
    # would lead back out where the probe has just been, hints.no_revisit)
    after = shown[first_back + 15:]
    assert "hold" not in after and "slide_feet" not in after[3:]  # the hysteresis's 3 frames
    assert after[-1] == "slide_head" and s.returns == 1


def test_the_smoother_holds_where_the_meter_comes_back():
    # the image comes back as the way back is shown: hold, and the text calls the view good once the meter does
    hints, _ = smoother_run([GOOD] * 30 + [POOR] * 10 + [GOOD] * 40, move_s=0.5)
    shown = [h.guidance.action for h in hints]
    first_back = shown.index("slide_feet")
    after = shown[first_back + 15:]
    assert after[:15] == ["hold"] * 15  # one move of hold
    assert hints[first_back + 15].guidance_text == "Hold still – good view"


def test_the_smoother_judges_the_view_back_there_on_the_newest_frame():
    # the image comes back on the very frame the way back ends: the smoothed meter still reads poor,
    # the newest frame good: hold, and the text calls the view good only once the smoothed meter does
    hints, _ = smoother_run([GOOD] * 30 + [POOR] * 16 + [GOOD] * 40, move_s=0.5)
    shown = [h.guidance.action for h in hints]
    arrived = shown.index("slide_feet") + 15
    assert arrived == 46 and shown[arrived:arrived + 15] == ["hold"] * 15
    assert hints[arrived].guidance_text == "Hold position" and hints[arrived].quality.score < GOOD_QUALITY
    assert hints[arrived + 14].guidance_text == "Hold still – good view"


def test_the_smoother_without_the_rule():
    frames = [GOOD] * 30 + [POOR] * 60
    for cfg in ({"back_to_best": False}, {"move_s": None}):
        hints, s = smoother_run(frames, **cfg)
        assert {h.guidance.action for h in hints} == {"slide_head"} and s.returns == 0
    hints, s = smoother_run([QualityResult(0.65, [], {})] * 30 + [POOR] * 60)  # the meter never read good
    assert {h.guidance.action for h in hints} == {"slide_head"} and s.returns == 0


def test_a_clock_that_goes_back_starts_the_timed_rules_afresh():
    # a new source whose clock starts lower while the way back is shown: the
    # way back (timed on the old clock) must not hold the hints for good
    s = HintSmoother(SmoothingConfig(move_s=0.5))
    head = GuidanceResult("slide_head", 0.7, {"slide_head": 0.7, "slide_feet": 0.1, "depth_up": 0.2})
    shown = [s.hints(i, int((100 + i / 30) * 1e9), q, head, None).guidance.action
             for i, q in enumerate([GOOD] * 30 + [POOR] * 4)]
    assert shown[-1] == "slide_feet"
    later = [s.hints(i, int(i * 1e9 / 30), POOR, head, None).guidance.action for i in range(30)]
    assert "slide_feet" not in later[5:] and "hold" not in later[5:]
