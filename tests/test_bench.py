"""`edge-assist bench`: a short real run validated for schema and internal
consistency (never for timing thresholds: the machine is shared and noisy)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edge_assist.bench import available_scenarios, load_scenario
from edge_assist.bench_sources import ReplaySource, synthetic_frames
from edge_assist.cli import main

PCT = ("p50", "p95", "p99", "p999", "max")

SCENARIO = """
description = "test: synthetic speckle at 60 fps"
source = "synthetic:speckle?size=120x160&n=16&fps=60"
fps = 60
duration_s = 2
warmup_s = 0.25
limit_s = 0.5
headline = true

[[variants]]
label = "fp32"
precision = "fp32"

[[variants]]
label = "int8"
precision = "int8"

[[variants]]
label = "seq"
parallel_heads = false
prime = false

[targets]
e2e_p99_ms = 16.7
miss_rate = 0.01
overhead_ratio = 1.10
"""


def _ordered(p: dict, where: str) -> None:
    vals = [p[k] for k in PCT]
    assert all(v >= 0 for v in vals), where
    assert vals == sorted(vals), f"{where}: percentiles out of order {p}"


def _check_run(r: dict) -> None:
    f = r["frames"]
    # counts add up, over the whole run
    assert f["offered"] == f["in"] + f["dropped_source"]
    assert f["in"] == f["processed"] + f["skipped"] + f["dropped_slot"]
    assert f["counted"] == f["processed"] - f["warmup"] > 0
    assert r["e2e_ms"]["n"] == r["service_ms"]["n"] == f["counted"]
    for stage in ("capture", "preprocess", "quality", "guidance", "hints", "sink"):
        assert r["stages_ms"][stage]["n"] == f["counted"], stage
    # and over the measured window
    assert 0 <= f["window_dropped"] <= f["window_offered"]
    assert f["window_processed"] <= f["window_offered"] + 2  # + frames in flight at the window's edges
    assert r["misses"] == f["misses"] and r["miss_rate"] == pytest.approx(f["misses"] / f["counted"], abs=1e-6)
    assert 0 <= r["drop_rate"] <= 1
    _ordered(r["e2e_ms"], "e2e")
    _ordered(r["service_ms"], "service")
    for k, v in r["stages_ms"].items():
        _ordered(v, k)
        assert v["p50"] <= r["e2e_ms"]["max"] or k in ("interpreter", "sink"), k
    assert r["service_ms"]["p50"] <= r["e2e_ms"]["p50"] + 1e-9
    assert r["fps"] > 0 and r["window_s"] > 0
    assert r["fps"] == pytest.approx(f["counted"] / r["window_s"], rel=1e-3)


def test_bench_json_schema_and_consistency(tmp_path, tiny_engines, no_thread_leak, capsys):
    scen = tmp_path / "tiny.toml"
    scen.write_text(SCENARIO)
    out = tmp_path / "out"
    rc = main(["bench", "--scenario", str(scen), "--engines", str(tiny_engines), "--json", "--out", str(out)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)

    # the keys the issue asks for, at the top level (the headline run)
    for key in ("e2e_ms", "stages_ms", "fps", "budget_ms", "miss_rate", "drop_rate", "limit_ms", "overhead_ratio", "rss_mb", "machine"):
        assert key in doc, key
    assert set(PCT) <= set(doc["e2e_ms"])
    for stage in ("capture", "preprocess", "quality", "guidance", "interpreter", "hints", "sink"):
        assert {"p50", "p99"} <= set(doc["stages_ms"][stage]), stage
    assert doc["budget_ms"] == pytest.approx(1000 / 60, rel=1e-3)
    m = doc["machine"]
    assert m["cpu_model"] and m["cores_logical"] >= 1 and "onnxruntime" in m["versions"]
    assert "gpu" in m
    assert doc["rss_mb"] > 0 and doc["cpu"]["process_cores"] >= 0

    runs = {r["run_id"]: r for r in doc["runs"]}
    assert set(runs) == {"tiny-fp32", "tiny-int8", "tiny-seq"}
    assert "INT8" in runs["tiny-int8"]["skipped"]  # the tiny engines have no INT8 models
    r = runs["tiny-fp32"]
    assert doc["run_id"] == doc["headline"] == "tiny-fp32"
    _check_run(r)

    # the limit: bare session.run of the three heads, in the same run
    lim = r["limit_ms"]
    _ordered(lim, "limit")
    _ordered(r["limit_hot_ms"], "limit_hot")
    assert r["limit_method"] == "session.run"
    assert lim["n"] >= 30
    # paced: the limit's sets bracket the pipeline run, half before it, half after
    assert r["limit_pacing"].startswith("one set every")
    assert 0 < r["limit_sets_before_pipeline"] < lim["n"]
    drift = r["limit_drift"]  # how far the two halves disagree: the machine's speed moving during the run
    assert drift["before_p50"] > 0 and drift["after_p50"] > 0
    assert drift["change"] == pytest.approx(drift["after_p50"] / drift["before_p50"] - 1, abs=2e-3)
    assert drift["warn"] == (abs(drift["change"]) > 0.10)
    assert "limit_raw" not in r
    assert r["overhead_ratio"] == pytest.approx(r["e2e_ms"]["p50"] / lim["p50"], rel=1e-3)
    heads = r["limit_heads_ms"]
    assert set(heads) == {"quality", "guidance", "interpreter"}
    _ordered(r["limit_all_ms"], "limit_all")
    assert sum(h["p50"] for h in heads.values()) == pytest.approx(r["limit_all_ms"]["p50"], rel=0.5)
    # live mode: the interpreter runs beside the loop, off the e2e path
    assert r["interpreter_mode"] == "async" and r["limit_interpreter_on_path"] == 0.0
    assert lim["p50"] <= r["limit_all_ms"]["p50"]
    assert r["overhead_ratio_all"] == pytest.approx(r["e2e_ms"]["p50"] / r["limit_all_ms"]["p50"], rel=1e-3)

    # parallel heads: on by default for CPU sessions when there are cores for both;
    # the limit stays the heads back to back, overhead_ms says what the rest costs
    import os

    two = len(os.sched_getaffinity(0)) >= 2
    assert r["heads_parallel"] is two and r["heads_mode"] == ("adaptive" if two else "sequential")
    assert 0 <= r["heads_parallel_share"] <= 1
    seq = runs["tiny-seq"]
    _check_run(seq)
    assert seq["heads_parallel"] is False and "guidance_wait" not in seq["stages_ms"]
    assert seq["heads_mode"] == "sequential" and seq["heads_parallel_share"] == 0
    # priming: adaptive by default for a paced source, off where the scenario says so
    pr = r["prime"]
    assert pr["mode"] == "adaptive" and 0 <= pr["collisions"] <= pr["passes"] and 0 <= pr["share"] <= 1
    assert pr["passes"] > 0 and pr["lead_ms"] > 0
    assert seq["prime"]["mode"] == "off" and seq["prime"]["passes"] == 0 and seq["prime"]["share"] == 0
    assert "parallel_overlap" not in seq["overhead_breakdown_ms"]
    for run in (r, seq):
        assert run["overhead_ms"] == pytest.approx(run["e2e_ms"]["p50"] - run["limit_ms"]["p50"], abs=1e-3)
        bd = run["overhead_breakdown_ms"]
        parts = sum(v for k, v in bd.items() if k not in ("e2e_mean", "share", "heads_on_path"))
        assert parts == pytest.approx(bd["e2e_mean"], abs=2e-3)  # the parts add up to the mean e2e
    if r["heads_parallel"]:  # the part of guidance on the path, every frame (all of it when run in line)
        assert r["stages_ms"]["guidance_wait"]["n"] == r["frames"]["counted"]
        assert "parallel_overlap" in r["overhead_breakdown_ms"]
    md = (out / "results.md").read_text()
    assert "e2e p50 − limit p50" in md

    # the naive loop, side by side
    b = r["baseline"]
    assert b["kind"] == "naive"
    _check_run(b)
    assert b["frames"]["dropped_slot"] == 0
    assert b["stages_ms"]["interpreter"]["n"] == b["frames"]["counted"]  # every head on every frame

    # targets are evaluated and reported (not asserted: timing depends on the machine)
    assert set(r["targets"]) == {"e2e_p99_ms", "miss_rate", "overhead_ratio"}
    assert all(isinstance(t["ok"], bool) for t in r["targets"].values())

    # files: the same JSON, a markdown table, PNG plots
    assert json.loads((out / "results.json").read_text())["e2e_ms"] == doc["e2e_ms"]
    md = (out / "results.md").read_text()
    assert "| tiny-fp32 |" in md and "e2e p50" in md
    for png in ("tiny-fp32.png", "summary.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_overload_drops_are_counted_and_latency_bounded(tmp_path, tiny_engines, capsys):
    scen = tmp_path / "over.toml"
    scen.write_text(
        'source = "synthetic:speckle?size=96x96&n=8"\n'
        "prerender = 8\noverload_factor = 4.0\nbudget_ms = 16.7\nduration_s = 1\nwarmup_s = 0.1\n"
        "calibrate_s = 0.5\nbaseline = false\nlimit_s = 0.3\n"
        '[targets]\ne2e_p99_ms = "budget+frame"\ndrops_counted = true\n'
    )
    assert main(["bench", "--scenario", str(scen), "--engines", str(tiny_engines), "--json", "--no-out"]) == 0
    doc = json.loads(capsys.readouterr().out)
    r = doc["runs"][0]
    _check_run(r)
    o = r["overload"]
    assert o["source_fps"] == pytest.approx(4 * o["capacity_fps"], rel=1e-3)
    assert r["frames"]["dropped_slot"] + r["frames"]["dropped_source"] > 0
    assert r["drop_rate"] > 0.2
    assert r["targets"]["drops_counted"]["ok"]
    assert r["baseline"] is None
    assert r["limit_pacing"].startswith("back to back")
    assert r["limit_sets_before_pipeline"] == 0  # overload: measured after the run only (hot)
    assert r["limit_drift"] is None


def test_replay_source_clock_and_fifo():
    frames, _ = synthetic_frames("synthetic:speckle?size=32x32&n=4")
    src = ReplaySource(frames, fps=200, buffer=3)
    first = src.read()
    t0 = first.t_capture_ns
    assert src.read().t_capture_ns - t0 == pytest.approx(5e6, abs=1)  # stamped with its due time
    time.sleep(0.1)  # ~20 frames are due; the FIFO keeps 3
    f = src.read()
    assert src.frames_dropped >= 15
    assert f.index == 2 + src.frames_dropped
    assert (time.monotonic_ns() - f.t_capture_ns) / 1e6 >= 10  # a stale frame shows its age
    assert src.offered == src.delivered + src.frames_dropped
    with ReplaySource(frames, fps=0, limit=5) as unpaced:
        assert [unpaced.read().index for _ in range(5)] == [0, 1, 2, 3, 4]
        with pytest.raises(Exception):
            unpaced.read()


def test_looping_dicom_keeps_its_rhythm_across_the_seam():
    """A looped cine releases the first frame of each new loop one frame
    interval after the last frame of the old one, not back to back."""
    from pydicom.data import get_testdata_file

    from edge_assist.bench_sources import LoopingSource
    from edge_assist.sources import open_source

    uri = "dicom:" + get_testdata_file("examples_ybr_color.dcm")  # 30 frames
    fps = 100.0
    with LoopingSource(lambda: open_source(uri, fps=fps), uri=uri) as src:
        got = []
        while len(got) < 34:
            f = src.read(timeout_s=1.0)
            if f is not None:
                got.append(f)
        assert src.loops == 1
    assert [f.index for f in got] == list(range(34))  # indices keep counting across the seam
    seam = (got[30].t_capture_ns - got[29].t_capture_ns) / 1e6
    assert seam >= 0.8 * 1000 / fps, f"first frame of the new loop came {seam:.2f} ms after the last one"


def test_bundled_scenarios_load():
    avail = available_scenarios()
    for name in ("live-30", "live-60", "live-60-all-heads", "asap", "dicom-replay", "overload", "precision", "threads"):
        assert name in avail, name
        sc = load_scenario(avail[name])
        assert sc.cfg["source"]
    assert load_scenario(avail["live-60"]).targets["e2e_p99_ms"] == 16.7
    assert load_scenario(avail["overload"]).cfg["overload_factor"] == 4.0
    assert load_scenario(avail["live-60-all-heads"]).cfg["interpreter_always"] is True
    assert load_scenario(avail["live-60"]).cfg["interpreter_always"] is False


@pytest.mark.parametrize(
    "text, words",
    [
        ('source = "synthetic:"\nduraton_s = 3\n', "unknown key(s) duraton_s"),
        ('source = "synthetic:"\nmode = "fast"\n', "mode must be"),
        ('source = "synthetic:\n', "not valid TOML"),
        ("duration_s = 1\n", "`source`"),
        ('source = "synthetic:"\n[targets]\np42 = 1\n', "unknown target"),
        ('source = "synthetic:"\n[[variants]]\nthreads = 2\n', "needs a `label`"),
        ('source = "synthetic:"\nparallel_heads = "yes"\n', "parallel_heads must be true or false"),
        ('source = "synthetic:"\nprime = "auto"\n', "prime must be true or false"),
        ('source = "synthetic:"\ninterpreter_always = 1\n', "interpreter_always must be true or false"),
    ],
)
def test_bad_scenarios_are_one_line_errors(tmp_path, tiny_engines, capsys, text, words):
    scen = tmp_path / "bad.toml"
    scen.write_text(text)
    assert main(["bench", "--scenario", str(scen), "--engines", str(tiny_engines), "--no-out"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_unknown_scenario_name(tiny_engines, capsys):
    assert main(["bench", "--scenario", "no-such-thing", "--engines", str(tiny_engines), "--no-out"]) == 2
    assert "unknown scenario" in capsys.readouterr().err


def _rec(e2e_p99: float, ratio: float) -> dict:
    return {"e2e_ms": {"p50": 1.0, "p99": e2e_p99}, "miss_rate": 0.0, "overhead_ratio": ratio, "budget_ms": 16.7,
            "source_fps": 60.0, "rss": {"growth_mb": 0.1},
            "frames": {"offered": 10, "processed": 10, "skipped": 0, "dropped_slot": 0, "dropped_source": 0}}


def test_repeated_runs_are_judged_on_their_median_not_on_the_run_shown():
    from edge_assist.bench_report import evaluate_targets, evaluate_targets_over_repeats

    recs = [_rec(2.5, 1.09), _rec(2.6, 1.22), _rec(2.4, 1.25)]
    shown = dict(recs[0])  # the run with the median e2e p99 is shown in full
    shown["repeats"] = {"median": {"e2e_p99": 2.5, "miss_rate": 0.0, "overhead_ratio": 1.22, "rss_growth_mb": 0.1}}
    targets = {"overhead_ratio": 1.10, "e2e_p99_ms": 16.7}
    assert evaluate_targets(shown, targets)["overhead_ratio"]["ok"]  # the one run alone meets it ...
    t = evaluate_targets_over_repeats(shown, recs, targets)
    assert not t["overhead_ratio"]["ok"] and t["overhead_ratio"]["value"] == 1.22  # ... the median of three does not
    assert t["overhead_ratio"]["each"] == [1.09, 1.22, 1.25] and t["overhead_ratio"]["basis"] == "median of 3 repeats"
    assert t["e2e_p99_ms"]["ok"] and t["e2e_p99_ms"]["each"] == [2.5, 2.6, 2.4]


def test_limit_drift_flags_a_machine_whose_speed_moved():
    from edge_assist.bench_measure import limit_drift

    steady = limit_drift(np.full(30, 1.0), np.full(30, 1.05))
    assert steady["change"] == pytest.approx(0.05) and not steady["warn"]
    slowed = limit_drift(np.full(30, 1.0), np.full(30, 1.3))  # a VM's busy host, a Jetson throttling
    assert slowed["warn"] and slowed["before_p50"] == 1.0 and slowed["after_p50"] == 1.3
    assert limit_drift(np.full(30, 1.2), np.full(30, 1.0))["warn"]  # faster after counts too
