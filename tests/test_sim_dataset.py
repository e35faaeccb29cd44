"""Dataset generation from the virtual patient."""

from __future__ import annotations

import json
from collections import Counter

import cv2
import numpy as np
import pytest

from edge_assist.sim import SimError
from edge_assist.sim.dataset import generate, parse_seeds, write_dataset
from edge_assist.vocab import ACTIONS, QUALITY_REASONS


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1,5,7-9") == [1, 5, 7, 8, 9]
    for bad in ("", "a-b", "5-1", "-2"):
        with pytest.raises(SimError):
            parse_seeds(bad)


def test_generate_is_deterministic_and_fresh():
    a = list(generate("liver", [0, 1], 4, rng_seed=3))
    b = list(generate("liver", [0, 1], 4, rng_seed=3))
    assert len(a) == 8
    assert all(np.array_equal(x[0], y[0]) and json.dumps(x[1]) == json.dumps(y[1]) for x, y in zip(a, b))
    c = list(generate("liver", [0, 1], 4, rng_seed=4))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_mix_is_balanced():
    frames = [t for _, t in generate("all", range(5), 12, rng_seed=0)]
    n = len(frames)
    assert n == 3 * 5 * 12
    good = sum(t["quality"] >= 0.5 for t in frames) / n
    assert 0.35 <= good <= 0.6, good
    # Good quality means no flag, and a flag means quality below the threshold.
    assert all((t["quality"] >= 0.5) == (not t["reasons"]) for t in frames)
    reasons = Counter(r for t in frames for r in t["reasons"])
    for r in QUALITY_REASONS:
        assert reasons[r] >= 0.03 * n, (r, reasons)
    actions = Counter(t["action"] for t in frames)
    assert set(actions) >= {"hold", "depth_up", "depth_down", "gain_up", "gain_down"}
    # slides are about 7 % of the scenario labels (5.0-7.8 % in three draws of 180-360 frames)
    assert sum(v for k, v in actions.items() if k.startswith("slide")) >= 0.04 * n
    lesions = sum(t["findings"]["lesion_present"] for t in frames) / n
    assert 0.15 < lesions < 0.8


def test_write_dataset(tmp_path):
    out = tmp_path / "ds"
    summary = write_dataset(out, ["liver", "cardiac"], [0, 1], 3, rng_seed=1, masks=True)
    assert summary["frames"] == 12
    lines = [json.loads(s) for s in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 12 and lines[0]["image"] == "images/000000.png"
    for line in lines:
        assert {"image", "report", "report_zh", "labels", "spacing_mm", "mask"} <= set(line)
        img = cv2.imread(str(out / line["image"]), cv2.IMREAD_UNCHANGED)
        assert img.shape == (256, 256) and img.dtype == np.uint8
        assert line["report"] == line["labels"]["report_en"]
        assert len(line["spacing_mm"]) == 2
        assert line["labels"]["action"] in ACTIONS
        mask = cv2.imread(str(out / line["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == img.shape
    assert json.loads((out / "dataset.json").read_text())["frames"] == 12
    assert not (out / "manifest.jsonl.tmp").exists()
    with pytest.raises(SimError):
        write_dataset(out, "liver", [0], 1)
    write_dataset(out, "liver", [0], 1, overwrite=True)


def test_lesion_masks_cover_what_the_truth_measures():
    """generate(with_lesion_mask=True): the mask of the lesion the truth
    reports (no halo, only where visible); measured like the truth, it gives
    the truth's size; frames without a reported lesion have an empty mask."""
    from edge_assist.sim.truth import measure_lesion

    seen = 0
    for image, truth, mask in generate(["liver", "thyroid", "cardiac"], range(3), 6, 1, with_lesion_mask=True):
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        if not truth["findings"]["lesion_present"]:
            assert not mask.any()
            continue
        seen += 1
        ys, xs = np.nonzero(mask)
        sp = truth["spacing_mm"][0]
        size, _ = measure_lesion(xs * sp, ys * sp, sp)
        assert abs(size - truth["findings"]["size_mm"]) <= max(1.0, 0.1 * truth["findings"]["size_mm"])
    assert seen >= 5
    with pytest.raises(SimError):
        next(generate(["liver"], [0], 1, with_mask=True, with_lesion_mask=True))
