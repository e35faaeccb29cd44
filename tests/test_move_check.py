import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_assist.errors import ManifestError
from edge_assist.frames import GuidanceResult, QualityResult
from edge_assist.hints import HintSmoother, SmoothingConfig
from edge_assist.manifest import load_manifest
from edge_assist.move_check import CHECK_THRESHOLD, CHECKED_MOVES, UNDO_BAR_MOVES, UNDO_MOVES, UndoWorseMove
from edge_assist.training.evaluate import HintFollower

ENGINES = Path(__file__).resolve().parents[1] / "engines"
HEAD = GuidanceResult("slide_head", 0.7, {"slide_head": 0.7, "slide_feet": 0.1, "depth_up": 0.2})
POOR = QualityResult(0.2, [], {})


def test_only_pose_moves_are_checked():
    rule = UndoWorseMove()
    assert all(rule.wants_check(m, 0) for m in CHECKED_MOVES)
    assert len(CHECKED_MOVES) == 10 and not any(rule.wants_check(m, 0) for m in ("depth_up", "gain_down", "hold", None))


def test_a_move_called_worse_is_undone_then_kept_out():
    rule = UndoWorseMove()  # the move clock: one move per step
    rule.judge("slide_head", 0.05, 0)
    assert [rule.steer("fan_away", t) for t in range(4)] == ["slide_feet", "slide_feet", "fan_away", "fan_away"]
    assert rule.undos == 1
    # the move after the undo is not checked (it was the undo); the one after that is
    assert [rule.wants_check("rock_left", t) for t in (1, 2, 3)] == [False, False, True]
    # the move that failed is kept out for four moves from the check
    assert rule.bar(HEAD, 3).action == "depth_up" and rule.bar(HEAD, 3).probs["slide_head"] == 0.0
    assert rule.bar(HEAD, 4) is HEAD


def test_a_move_not_called_worse_changes_nothing_and_checks_wait_a_move():
    rule = UndoWorseMove(unit=0.5)  # seconds, a move every 0.5 s
    rule.judge("fan_toward", 0.11, 1.0)
    assert not rule.active(1.0) and rule.steer("fan_toward", 1.0) == "fan_toward" and rule.undos == 0
    assert not rule.wants_check("fan_toward", 1.3) and rule.wants_check("fan_toward", 1.5)


def test_the_closed_loop_operator_undoes_past_no_revisit():
    f = HintFollower()
    assert f.to_check(0) is None  # no move yet
    assert f.move(HEAD, POOR, 0) == "slide_head"
    assert f.to_check(1) == "slide_head"
    # called worse: back (a move no_revisit would not show), and one step beyond
    assert [f.move(HEAD, POOR, 1, check=0.02), f.move(HEAD, POOR, 2)] == ["slide_feet", "slide_feet"]
    assert f.to_check(3) is None  # the undo is not checked
    after = f.move(HEAD, POOR, 3)
    assert after not in ("slide_head", "slide_feet") and f.undo.undos == 1
    assert f.to_check(4) is None  # depth is read from one frame: not checked


def test_the_smoother_undoes_over_time_and_says_why():
    s = HintSmoother(SmoothingConfig(move_s=0.5))
    shown, texts = [], []
    for i in range(120):  # 30 fps; the move check calls slide_head worse at 1 s
        check = ("slide_head", 0.03) if i == 30 else None
        h = s.hints(i, int(i * 1e9 / 30), POOR, HEAD, None, check=check)
        shown.append(h.guidance.action)
        texts.append(h.guidance_text)
    assert set(shown[:30]) == {"slide_head"}
    assert shown[30:60] == ["slide_feet"] * 30  # two moves of 0.5 s
    assert texts[30].startswith("That made it worse – go back: ")
    assert "slide_head" not in shown[60:90]  # kept out until 2 s after the check
    assert s.undos == 1
    # no reading (no move check head, or not asked for): the hints as before
    plain = HintSmoother(SmoothingConfig(move_s=0.5))
    assert {plain.hints(i, int(i * 1e9 / 30), POOR, HEAD, None).guidance.action for i in range(60)} == {"slide_head"}


def test_a_clock_that_goes_back_drops_the_undo():
    s = HintSmoother(SmoothingConfig(move_s=0.5))
    for i in range(31):
        s.hints(i, int((100 + i / 30) * 1e9), POOR, HEAD, None, check=("slide_head", 0.0) if i == 30 else None)
    assert s.undo.active(101.0)
    later = [s.hints(i, int(i * 1e9 / 30), POOR, HEAD, None).guidance.action for i in range(30)]
    assert "slide_feet" not in later[5:]


def test_the_committed_move_check_runs_through_the_run_time_path():
    from edge_assist.heads import HeadSet

    manifest = load_manifest(ENGINES)
    assert "move_check" in manifest.heads
    # the rule recorded with the head is the one the hints run
    rule = manifest.raw["heads"]["move_check"]["rule"]
    assert (rule["threshold"], tuple(rule["checked_moves"]), rule["undo_moves"], rule["bar_moves"]) == (
        CHECK_THRESHOLD, CHECKED_MOVES, UNDO_MOVES, UNDO_BAR_MOVES)
    with HeadSet(manifest) as heads:
        x = np.random.default_rng(0).normal(0, 1, (1, 1, 128, 128)).astype(np.float32)
        p = heads.move_check(x, x + 0.1, "fan_away")
        assert 0.0 <= p <= 1.0


def test_the_live_feed_reads_the_move_shown_one_move_ago_and_not_a_still_probe():
    from edge_assist.heads import HeadSet
    from edge_assist.move_check import MoveCheckFeed, probe_moved

    x = np.random.default_rng(1).normal(0, 1, (1, 1, 128, 128)).astype(np.float32)
    assert not probe_moved(x, x + 0.02, std=0.25)  # 1.3 grey levels: speckle, not a move
    assert probe_moved(x, x + 0.05, std=0.25)
    with HeadSet(load_manifest(ENGINES)) as heads:
        feed, rule = MoveCheckFeed(0.5, std=0.25), UndoWorseMove(unit=0.5)
        feed.record(0, x, "slide_head")
        assert feed.reading(heads, rule, x + 0.3, int(0.4e9)) is None  # not one move ago yet
        assert feed.reading(heads, rule, x, int(0.6e9)) is None  # the probe did not move
        move, p = feed.reading(heads, rule, x + 0.3, int(0.6e9))
        assert move == "slide_head" and 0.0 <= p <= 1.0
        feed.record(int(0.6e9), x, "depth_up")
        assert feed.reading(heads, rule, x + 0.3, int(1.2e9)) is None  # depth is not checked


def test_a_move_check_of_the_wrong_shape_is_refused(tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(ENGINES, engines)
    raw = json.loads((engines / "manifest.json").read_text())
    raw["heads"]["move_check"]["input"]["shape"] = [1, 1, 128, 128]
    (engines / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="two frames"):
        load_manifest(engines)


def test_move_check_tiny_training_lowers_the_loss_exports_and_runs(tmp_path):
    import torch

    from edge_assist.heads import HeadSet
    from edge_assist.training.evaluate import closed_loop
    from edge_assist.training.move_check import MoveCheckPlan, _tensor, build_net, make_move_check, move_pairs

    engines = tmp_path / "engines"
    shutil.copytree(ENGINES, engines)
    plan = MoveCheckPlan(train_seeds=3, val_seeds=1, max_moves=6, epochs=4, batch_size=16)
    entry = make_move_check(engines, tmp_path / "work", tmp_path / "data", seed=3, plan=plan, workers=1)
    assert entry["parity_max_abs_diff"] <= 1e-4 and entry["input"]["shape"] == [1, 2, 128, 128]
    assert entry["metrics"]["val"]["pairs"] == 1 * 3 * 6
    train = move_pairs(range(3), 3 + 7, tmp_path / "data", engines / "guidance.onnx", plan, workers=1, name="move-pairs-train")
    assert len(train) == 3 * 3 * 6 and train.better.dtype == bool

    def loss(model):
        with torch.no_grad():
            logits = model.eval()(_tensor(train, np.arange(len(train)))).gather(1, torch.from_numpy(train.move)[:, None])[:, 0]
            return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(train.better.astype(np.float32))))

    torch.manual_seed(3)
    before = loss(build_net())
    saved = torch.load(tmp_path / "work" / "move_check" / "move_check.pt", weights_only=False)
    trained = build_net()
    trained.load_state_dict(saved["state_dict"])
    assert loss(trained) < before
    # a second call reuses the checkpoint; the exported head runs in the closed loop
    assert make_move_check(engines, tmp_path / "work", tmp_path / "data", seed=3, plan=plan, workers=1)["sha256"] == entry["sha256"]
    with HeadSet(load_manifest(engines)) as heads:
        r = closed_loop(heads, [50_000], ["cardiac"], max_moves=8)
    assert set(r["undone"]) == {"episodes", "succeeded"}


def test_move_check_cli_needs_an_engines_folder(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "edge_assist", "train", "move-check", "--out", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "make models" in p.stderr
