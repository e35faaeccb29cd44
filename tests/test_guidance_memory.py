"""The guidance head's memory: the frame before the last move and that move."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_assist.errors import ManifestError
from edge_assist.guidance_memory import MoveMemory, memory_inputs, one_hot
from edge_assist.heads import HeadSet
from edge_assist.manifest import load_manifest
from edge_assist.vocab import ACTIONS
from tiny_models import write_tiny_engines

MS = 1_000_000


def _t(v: float) -> np.ndarray:
    return np.full((1, 1, 4, 4), v, np.float32)


def test_one_hot_and_none():
    assert one_hot(None).shape == (1, len(ACTIONS)) and one_hot(None).sum() == 0
    v = one_hot("fan_away")
    assert v[0, ACTIONS.index("fan_away")] == 1 and v.sum() == 1
    with pytest.raises(KeyError):
        one_hot("wiggle")


def test_memory_inputs_stack_reference_then_current():
    x, a = memory_inputs(_t(1), _t(2), "slide_head")
    assert x.shape == (1, 2, 4, 4) and x[0, 0, 0, 0] == 1 and x[0, 1, 0, 0] == 2
    assert a[0, ACTIONS.index("slide_head")] == 1
    x, a = memory_inputs(None, _t(2), "slide_head")  # no reference: the frame stands in, no move
    assert x[0, 0, 0, 0] == 2 and a.sum() == 0


def test_move_memory_uses_the_newest_frame_at_least_an_interval_old():
    m = MoveMemory(interval_ms=100)
    x, a = m.inputs(_t(0), 0)
    assert a.sum() == 0 and x[0, 0, 0, 0] == 0  # nothing remembered yet
    for k in range(10):  # a frame every 20 ms with the hint shown for it
        m.record(k * 20 * MS, _t(k), ACTIONS[k])
    x, a = m.inputs(_t(99), 190 * MS)  # 190 - 100 = 90 ms: the frame of t = 80 ms
    assert x[0, 0, 0, 0] == 4 and x[0, 1, 0, 0] == 99 and a[0, ACTIONS.index(ACTIONS[4])] == 1
    assert len(m._entries) <= 6  # older entries are dropped
    x, a = m.inputs(_t(5), 50 * MS)  # the clock is behind every entry: no memory
    assert a.sum() == 0
    m.record(10 * MS, _t(1), "hold")  # clock went back: starts afresh
    assert len(m._entries) == 1
    m.reset()
    assert m.inputs(_t(1), 10**12)[1].sum() == 0
    with pytest.raises(ValueError):
        MoveMemory(0)


def test_head_with_memory_feeds_the_previous_move(tmp_path):
    root = write_tiny_engines(tmp_path / "e", guidance_memory=250.0)
    manifest = load_manifest(root)
    spec = manifest.heads["guidance"]
    assert spec.frames == 2 and spec.action_input == "prev_action" and spec.memory_interval_ms == 250.0
    with HeadSet(manifest) as heads:
        assert heads.has_memory() and not heads.has_memory("quality")
        x = np.zeros((1, 2, *heads.input_size), np.float32)
        for k, move in enumerate(ACTIONS):  # the tiny model favours the move after the previous one
            assert heads.guidance(*memory_inputs(x[:, :1], x[:, 1:], move)).action == ACTIONS[(k + 1) % len(ACTIONS)]
        heads.guidance(x)  # no move given: zeros


def test_manifest_memory_is_checked(tmp_path):
    root = write_tiny_engines(tmp_path / "e", guidance_memory=250.0)
    raw = json.loads((root / "manifest.json").read_text())
    raw["heads"]["guidance"]["memory"]["interval_ms"] = -1
    (root / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="interval_ms"):
        load_manifest(root)
    raw["heads"]["guidance"].pop("memory")  # the model takes prev_action, the manifest does not say so
    (root / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="does not match its manifest"):
        HeadSet(load_manifest(root))
    raw["heads"]["quality"]["memory"] = {"action_input": "prev_action"}
    (root / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="only a guidance head"):
        load_manifest(root)


def test_guidance_feed_stacks_the_last_frames_or_uses_memory():
    from edge_assist.guidance_memory import GuidanceFeed

    feed = GuidanceFeed(3)
    (x,) = feed.inputs(_t(1), 0)
    assert x.shape == (1, 3, 4, 4) and list(x[0, :, 0, 0]) == [1, 1, 1]  # the first frame stands in for older ones
    feed.inputs(_t(2), 1)
    (x,) = feed.inputs(_t(3), 2)
    assert list(x[0, :, 0, 0]) == [1, 2, 3]
    feed.reset()
    assert list(feed.inputs(_t(4), 3)[0][0, :, 0, 0]) == [4, 4, 4]
    assert GuidanceFeed(1).inputs(_t(5), 0)[0] is not None
    mem = GuidanceFeed(2, memory_interval_ms=10)
    mem.record(0, _t(1), "slide_left")
    x, a = mem.inputs(_t(2), 20 * MS)
    assert x[0, 0, 0, 0] == 1 and a[0, ACTIONS.index("slide_left")] == 1
