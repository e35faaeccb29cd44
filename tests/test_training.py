"""Training, export, calibration and evaluation: tiny but real runs (seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edge_assist.training.common import auroc, spearman  # noqa: E402
from edge_assist.training.make_models import concat, rollouts, sim_frames  # noqa: E402

ENGINES = Path(__file__).resolve().parents[1] / "engines"  # the committed models


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("simdata")
    train = sim_frames(range(0, 2), 6, 1, d, workers=1, name="t")
    val = sim_frames(range(10_000, 10_001), 4, 2, d, workers=1, name="v")
    roll = rollouts(range(0, 1), 1, 3, d, max_moves=8, workers=1, name="r")
    return train, val, roll


def _losses(ckpt: Path) -> list[float]:
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    return [row["train_loss"] for row in ck["history"]]


def test_metrics_small_cases():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_sim_frames_follow_the_data_contract(sim_data):
    train, val, roll = sim_data
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (128, 128)
    assert len(train) == 2 * 3 * 6 and not np.isnan(train.quality).any()
    assert set(np.unique(train.action)) <= set(range(15)) and (roll.action >= 0).all()
    assert np.isfinite(train.mm_per_px).all()  # the simulator knows its pixel spacing
    both = concat(train, roll)
    assert len(both) == len(train) + len(roll) and len(both.reports) == len(both)


def test_quality_tiny_training_lowers_the_loss_and_resumes(sim_data, tmp_path):
    from edge_assist.training.train import load_head, train_quality

    train, val, _ = sim_data
    ck = train_quality(train, val, tmp_path, epochs=6, seed=0, batch_size=8, lr=3e-3)
    losses = _losses(ck)
    assert len(losses) == 6 and losses[-1] < losses[0]
    model, meta = load_head(ck)
    assert meta["complete"] and "reason_threshold" in meta["decode"]
    # Same data and settings: nothing to do; a lost final file is rebuilt from the last epoch's checkpoint.
    mtime = ck.stat().st_mtime_ns
    assert train_quality(train, val, tmp_path, epochs=6, seed=0, batch_size=8, lr=3e-3) == ck and ck.stat().st_mtime_ns == mtime
    ck.unlink()
    ck2 = train_quality(train, val, tmp_path, epochs=6, seed=0, batch_size=8, lr=3e-3)
    assert _losses(ck2) == losses


def test_guidance_tiny_training_lowers_the_loss(sim_data, tmp_path):
    from edge_assist.training.train import train_guidance

    train, val, roll = sim_data
    ck = train_guidance(concat(roll, train), roll, tmp_path, epochs=6, seed=0, batch_size=8, lr=3e-3)
    losses = _losses(ck)
    assert losses[-1] < losses[0]
    meta = torch.load(ck, map_location="cpu", weights_only=False)
    assert meta["decode"]["temperature"] > 0


def test_network_takes_the_frame_size_it_is_configured_for():
    """NetConfig.input_size: the flattened grid follows the frame's side;
    a checkpoint without the field (every one before it) reads as 128."""
    from edge_assist.training.models import GuidanceNet, NetConfig

    for side in (96, 192):
        net = GuidanceNet(NetConfig(input_size=side)).eval()
        logits, pose = net(torch.zeros(2, 1, side, side))
        assert logits.shape == (2, 15) and pose.shape[0] == 2
    old = NetConfig().to_dict()
    del old["input_size"]
    assert NetConfig.from_dict(old).input_size == 128


def test_dagger_replay_fine_tunes_on_the_round_and_a_sample_of_the_rest(sim_data, tmp_path):
    """Plan.dagger_replay: a DAgger round fine-tunes on its own trajectories
    and a sample of the earlier data (without replacement, fixed by the
    seed), while all of it is still returned for the quality head. Every
    round's network has the plan's widths (Plan.guidance_net)."""
    from dataclasses import replace

    from edge_assist.training.make_models import PLANS, replay_sample, train_guidance_dagger

    train, val, roll = sim_data
    data = concat(roll, train)
    a, b = replay_sample(data, 7, 3), replay_sample(data, 7, 3)
    assert len(a) == 7 and np.array_equal(a.images, b.images) and not np.array_equal(a.images, replay_sample(data, 7, 4).images)
    assert len({im.tobytes() for im in a.images}) == 7  # no frame twice
    assert replay_sample(data, 10 * len(data), 3) is data

    net = {"widths": [8, 16, 24, 32, 40], "squeeze": 16, "hidden": 64}
    plan = replace(PLANS["tiny"], dagger_replay=0.5, max_moves=8, guidance_net=net)
    rounds, g_train = train_guidance_dagger(roll, train, roll, [0], plan, tmp_path / "run", tmp_path / "data", seed=0, workers=1)
    n_round = len(g_train) - len(roll) - len(train)  # the round's trajectories
    ck = torch.load(rounds[-1], map_location="cpu", weights_only=False)
    assert len(rounds) == 2 and n_round > 0
    assert ck["data"]["n_train"] == n_round + round(0.5 * n_round)
    for r in rounds:
        cfg = torch.load(r, map_location="cpu", weights_only=False)["model_cfg"]
        assert {k: cfg[k] for k in net} == net


def test_guidance_with_memory_trains_exports_and_runs(sim_data, tmp_path):
    """Frame pairs from the trajectories (the frame before each move and that
    move), a two-input head, ONNX parity, and the run-time feed."""
    from edge_assist.guidance_memory import memory_inputs
    from edge_assist.heads import Head
    from edge_assist.backends import open_backend
    from edge_assist.manifest import HeadSpec
    from edge_assist.training.export import PARITY_TOL, export_quality_or_guidance
    from edge_assist.training.make_models import with_memory
    from edge_assist.training.train import train_guidance
    from edge_assist.vocab import ACTIONS

    train, val, roll = sim_data
    pairs, moves = with_memory(concat(roll, train))
    assert pairs.images.shape[1:] == (2, 128, 128)
    steps = [m["step"] for m in roll.meta]
    assert moves[: len(roll)].sum(1).tolist() == [float(s > 0) for s in steps]  # every step but the first remembers a move
    assert moves[len(roll):].sum() == 0 and np.array_equal(pairs.images[len(roll):, 0], pairs.images[len(roll):, 1])
    k = steps.index(1)  # the pair of step 1: the frame of step 0 and the move made after it
    assert np.array_equal(pairs.images[k, 0], roll.images[k - 1]) and moves[k, ACTIONS.index(roll.meta[k - 1]["executed"])] == 1
    vp, vm = with_memory(roll)
    ck = train_guidance(pairs, vp, tmp_path / "g", epochs=2, seed=0, batch_size=8, prev_actions=(moves, vm))
    assert _losses(ck)[-1] < _losses(ck)[0]
    entry = export_quality_or_guidance(ck, tmp_path / "engines", frames_u8=val.images)
    assert entry["input"]["frames"] == 2 and entry["memory"]["action_input"] == "prev_action"
    assert entry["parity_max_abs_diff"] <= PARITY_TOL
    path = tmp_path / "engines" / entry["file"]
    spec = HeadSpec("guidance", path, None, "image", (1, 2, 128, 128), "float32", 2, {"logits": "action_logits"},
                    {"actions": list(ACTIONS)}, {}, "t", None, None, action_input="prev_action", memory_interval_ms=400.0)
    head = Head(spec, open_backend("ort", path))
    try:
        x = (val.images[:1, None].astype(np.float32) / 255.0 - 0.25) / 0.25
        a = head.run(*memory_inputs(x, x, "slide_left"))["logits"]
        b = head.run(*memory_inputs(x, x, "fan_away"))["logits"]
        assert a.shape == (1, len(ACTIONS)) and not np.allclose(a, b)  # the move reaches the model
    finally:
        head.close()


def test_fixed_seed_gives_identical_weights(sim_data, tmp_path):
    from edge_assist.training.train import train_quality

    train, val, _ = sim_data
    a = train_quality(train, val, tmp_path / "a", epochs=1, seed=5, batch_size=8)
    b = train_quality(train, val, tmp_path / "b", epochs=1, seed=5, batch_size=8)
    sa = torch.load(a, weights_only=False)["state_dict"]
    sb = torch.load(b, weights_only=False)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_channels_last_is_a_separate_run_with_plain_weights(sim_data, tmp_path, monkeypatch):
    from edge_assist.training.train import load_head, train_guidance

    train, val, roll = sim_data
    data = concat(roll, train)
    plain = train_guidance(data, roll, tmp_path, epochs=2, seed=0, batch_size=8)
    monkeypatch.setenv("EDGE_ASSIST_CHANNELS_LAST", "1")
    mtime = plain.stat().st_mtime_ns
    cl = train_guidance(data, roll, tmp_path, epochs=2, seed=0, batch_size=8)  # not taken for the plain run: trained again
    meta = torch.load(cl, map_location="cpu", weights_only=False)
    assert cl == plain and cl.stat().st_mtime_ns != mtime and meta["run_key"]["memory_format"] == "channels_last"
    assert all(t.is_contiguous() for t in meta["state_dict"].values())  # saved, and exported, as plain weights
    assert _losses(cl)[-1] < _losses(cl)[0]
    model, _ = load_head(cl)
    x = torch.zeros(2, 1, 128, 128)
    assert model(x)[0].shape == (2, 15)
    monkeypatch.delenv("EDGE_ASSIST_CHANNELS_LAST")
    again = train_guidance(data, roll, tmp_path, epochs=2, seed=0, batch_size=8)  # back to the default layout: trained again
    assert "memory_format" not in torch.load(again, map_location="cpu", weights_only=False)["run_key"]


def test_export_parity_and_manifest_entry(sim_data, tmp_path):
    from edge_assist.training.export import PARITY_TOL, export_quality_or_guidance, parity, parity_inputs
    from edge_assist.training.models import export_module
    from edge_assist.training.train import load_head, train_guidance, train_quality

    train, val, _ = sim_data
    for head, fn in (("quality", train_quality), ("guidance", train_guidance)):
        ck = fn(train, val, tmp_path / head, epochs=1, seed=0, batch_size=8)
        entry = export_quality_or_guidance(ck, tmp_path / "engines", frames_u8=val.images)
        path = tmp_path / "engines" / entry["file"]
        model = onnx.load(str(path))
        assert model.opset_import[0].version >= 17
        assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)  # folded
        assert entry["parity_max_abs_diff"] <= PARITY_TOL
        m, _ = load_head(ck)
        assert parity(export_module(head, m), path, parity_inputs(1, val.images, n=4)) <= PARITY_TOL
        assert entry["input"] == {"name": "image", "shape": [1, 1, 128, 128], "dtype": "float32", "frames": 1}
        assert path.stat().st_size < 10e6


def test_quality_export_outputs_a_probability(sim_data, tmp_path):
    from edge_assist.training.export import export_quality_or_guidance, ort_session
    from edge_assist.training.train import train_quality

    train, val, _ = sim_data
    ck = train_quality(train, val, tmp_path, epochs=1, seed=0, batch_size=8)
    export_quality_or_guidance(ck, tmp_path / "e")
    sess = ort_session(tmp_path / "e" / "quality.onnx")
    x = np.random.default_rng(0).normal(0, 3, (1, 1, 128, 128)).astype(np.float32)
    score, reasons = sess.run(None, {"image": x})
    assert score.shape == (1, 1) and 0.0 <= float(score[0, 0]) <= 1.0 and reasons.shape == (1, 9)


def test_calibration_produces_a_valid_qdq_model(tiny_engines_128, sim_data, tmp_path):
    from edge_assist.training.calibrate import bench_pair, quantize
    from edge_assist.training.export import ort_session

    _, val, _ = sim_data
    out = quantize(tiny_engines_128 / "quality.onnx", tmp_path / "q.int8.onnx", val.images)
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zp = [i for i in model.graph.initializer if i.name.endswith("zero_point") and i.data_type != onnx.TensorProto.INT32]  # not biases
    # symmetric INT8 (the form TensorRT builds from): int8 zero points, all 0
    assert zp and all(i.data_type == onnx.TensorProto.INT8 and not onnx.numpy_helper.to_array(i).any() for i in zp)
    x = ((val.images[:1].astype(np.float32) / 255 - 0.25) / 0.25)[:, None]
    a = ort_session(tiny_engines_128 / "quality.onnx").run(None, {"image": x})
    b = ort_session(out).run(None, {"image": x})
    assert np.abs(a[0] - b[0]).max() < 0.1
    speed = bench_pair(tiny_engines_128 / "quality.onnx", out, (1, 1, 128, 128), iters=20, warmup=5)
    assert speed["fp32_ms"] > 0 and speed["int8_ms"] > 0


@pytest.fixture
def tiny_engines_128(tmp_path):
    from tiny_models import write_tiny_engines

    return write_tiny_engines(tmp_path / "engines128", size=(128, 128))


EVAL_KEYS = {
    "quality": {"spearman", "auroc", "reasons_macro_f1"},
    "guidance": {"top1", "closed_loop_success", "median_moves"},
    "interpreter": {"findings_macro_f1", "size_mae_mm", "abstain_correct"},
}


def test_eval_quick_returns_the_keys_without_torch(tiny_engines_128):
    code = (
        "import json, sys\n"
        "from edge_assist.cli import main\n"
        f"rc = main(['eval', '--quick', '--json', '--engines', {str(tiny_engines_128)!r}])\n"
        "assert rc == 0\n"
        "assert 'torch' not in sys.modules, 'eval imported torch'\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    for head, keys in EVAL_KEYS.items():
        assert keys <= set(r[head]), (head, r[head].keys())
    g = r["guidance"]
    assert g["episodes"] >= 1
    pose = {"u", "w", "rot", "fan", "rock", "depth", "gain"}
    assert set(g["final_within_tolerance"]) == pose and set(g["final_error_median_tol"]) == pose
    assert all(0.0 <= v <= 1.0 for v in g["final_within_tolerance"].values())
    assert all(v >= 0.0 for v in g["final_error_median_tol"].values())
    hold = g["hold_said"]  # where the hints say hold: at, near and off the target view
    assert set(hold) >= {"at_target", "within_tolerance", "one_component_off", "head_alone"}
    assert all(0.0 <= hold[k] <= 1.0 for k in ("at_target", "within_tolerance", "one_component_off"))
    assert 0.0 <= g["pose_reached"] <= 1.0  # the diagnostic: every pose component within its tolerance
    paced = g["closed_loop_paced"]  # the same starts, following the smoothed hints
    assert 0.0 <= paced["closed_loop_success"] <= 1.0 and set(paced["success_by_preset"]) == set(g["success_by_preset"])
    for run in (g, paced):  # every success rate comes with its 95 % interval
        lo, hi = run["closed_loop_success_ci95"]
        assert 0.0 <= lo <= run["closed_loop_success"] <= hi <= 1.0
        # episodes in which the hints swept back on a blank image, and how many of them reached the view
        assert 0 <= run["swept"]["succeeded"] <= run["swept"]["episodes"] <= g["episodes"]
        # ... and in which they went back to the best view seen
        assert 0 <= run["went_back"]["succeeded"] <= run["went_back"]["episodes"] <= g["episodes"]
    # the same starts, the operator stopping where the hints first say hold
    settled = g["closed_loop_settled"]
    assert set(settled["by_preset"]) == set(g["success_by_preset"])
    assert 0.0 <= settled["success"] <= settled["ended_on_hold"] <= 1.0
    assert settled["success_ci95"][0] <= settled["success"] <= settled["success_ci95"][1]
    assert 0 <= settled["went_back"]["succeeded"] <= settled["went_back"]["episodes"] <= g["episodes"]
    # ... and reading the smoothed hints as the pipeline shows them
    assert set(paced["settled"]) == set(settled)
    assert 0.0 <= paced["settled"]["success"] <= paced["settled"]["ended_on_hold"] <= 1.0
    # the expert reaches the target from the same starts: the task itself is solvable
    assert g["expert_closed_loop_success"] == 1.0
    assert set(r["real_frames"]) >= {"examples_ybr_color", "examples_rgb_color", "examples_palette", "palette_lowest"}
    assert "int8" in r and set(r["latency_ms"]) == {"quality", "guidance", "interpreter"}
    interp = r["interpreter"]
    if "f1" in interp:  # every findings term says how many positive frames it rests on
        assert set(interp["f1_support"]) == set(interp["f1"])
        assert all(isinstance(n, int) and n >= 0 for n in interp["f1_support"].values())
        assert set(interp["terms_below_support"]) <= set(interp["f1"])
        assert len(interp["findings_macro_f1_ci95"]) == 2
    assert r["setup"]["seconds"] < 60


def test_eval_closed_loop_alone_on_a_pool_of_patients(tiny_engines_128, capsys):
    """`eval --closed-loop POOL:START:STOP`: the eval's closed loop alone, on
    the patients a retrain is judged on; a bad range is one line and exit 2."""
    from edge_assist.cli import main
    from edge_assist.heads import HeadSet
    from edge_assist.manifest import load_manifest
    from edge_assist.training.common import EVAL_SEEDS
    from edge_assist.training.evaluate import closed_loop

    assert main(["eval", "--closed-loop", "validation:0:1", "--json", "--engines", str(tiny_engines_128)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["guidance"]["episodes"] == 3 and r["setup"]["patients"].startswith("validation [0:1]")
    # the held-out range the model card's closed loop starts at gives the eval's own episodes
    assert main(["eval", "--closed-loop", "held-out:1000:1001", "--json", "--engines", str(tiny_engines_128)]) == 0
    alone = json.loads(capsys.readouterr().out)["guidance"]
    with HeadSet(load_manifest(tiny_engines_128), backend="ort", precision="fp32", threads=1) as heads:
        direct = closed_loop(heads, list(EVAL_SEEDS)[1000:1001])
    assert alone == json.loads(json.dumps(direct))
    capsys.readouterr()
    for bad in ("validation:5:2", "valid:0:1", "validation:0", "validation:a:b"):
        assert main(["eval", "--closed-loop", bad, "--engines", str(tiny_engines_128)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--closed-loop" in err and "Traceback" not in err
    assert main(["eval", "--closed-loop", "validation:0:1", "--write", "--engines", str(tiny_engines_128)]) == 2
    assert "--write" in capsys.readouterr().err
    # --until-hold adds the operator who stops on the first hold; alone it is one line and exit 2
    assert main(["eval", "--closed-loop", "validation:0:1", "--until-hold", "--engines", str(tiny_engines_128)]) == 0
    assert "stopping where the hints first say hold" in capsys.readouterr().out
    assert main(["eval", "--until-hold", "--engines", str(tiny_engines_128)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--closed-loop" in err


def test_until_hold_the_operator_stops_on_the_first_hold_and_is_judged_there():
    """closed_loop(until_hold=True) on the committed heads: an episode goes on
    past the target view until the hints show hold; it succeeds only where
    that hold is on the target view, so success implies a hold, and the
    plain loop (which stops on reaching the view) succeeds at least as often
    as the view is reached before the stop."""
    from edge_assist.heads import HeadSet
    from edge_assist.manifest import load_manifest
    from edge_assist.training.common import VAL_SEEDS
    from edge_assist.training.evaluate import closed_loop, settled_summary

    seeds = list(VAL_SEEDS)[500:504]
    with HeadSet(load_manifest(ENGINES), backend="ort", precision="fp32", threads=1) as heads:
        plain = closed_loop(heads, seeds)
        until = closed_loop(heads, seeds, until_hold=True)
        summary = settled_summary(heads, seeds)
    assert "until_hold" not in plain and until["episodes"] == plain["episodes"] == 12
    u = until["until_hold"]
    assert until["closed_loop_success"] <= u["ended_on_hold"]
    # the same starts and the same moves up to the first hold or the view: the plain loop, which goes on
    # after a hold (the next frame may show a move), reaches the view at least as often
    assert u["reached_before_the_stop"] <= plain["closed_loop_success"]
    assert summary["success"] == until["closed_loop_success"] and summary["ended_on_hold"] == u["ended_on_hold"]
    assert summary["went_back"] == until["went_back"]
    if u["ended_on_hold"]:
        assert summary["hold_on_view"] == pytest.approx(until["closed_loop_success"] / u["ended_on_hold"], abs=1e-4)


def _ddp_worker(ctx, data, out):
    from edge_assist.training.train import train_quality

    train, val = data
    train_quality(train, val, out, epochs=2, seed=3, batch_size=4, ctx=ctx)


def test_ddp_two_cpu_processes_on_gloo(sim_data, tmp_path):
    from edge_assist.training.ddp import spawn_local

    train, val, _ = sim_data
    small = (train.subset(range(16)), val.subset(range(4)))
    spawn_local(_ddp_worker, 2, small, tmp_path)
    ck = torch.load(tmp_path / "quality.pt", weights_only=False)
    assert ck["complete"] and ck["run_key"]["world_size"] == 2 and len(ck["history"]) == 2


def test_ddp_shards_cover_every_index_once():
    from edge_assist.training.ddp import DistContext

    parts = [DistContext(rank=r, world_size=3).shard(10, epoch=1, seed=0) for r in range(3)]
    assert len({len(p) for p in parts}) == 1
    assert set(np.concatenate(parts)) == set(range(10))


def _run_cli(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "edge_assist", *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("content, needle", [
    ('{"image": "a.png"}\nnot json\n', ":2: not valid JSON"),
    ('{"image": "missing.png"}\n', ":1: image missing.png not found"),
    ('{"image": "a.png", "report": 5}\n', ":1: report must be text"),
    ('{"image": "a.png", "labels": {"action": "jump"}}\n', ":1: unknown action"),
])
def test_bad_training_data_is_one_line_exit_2(tmp_path, content, needle):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32), np.uint8))
    (tmp_path / "manifest.jsonl").write_text(content)
    rc, out, err = _run_cli("train", "quality", "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_unreadable_image_names_the_line(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    (tmp_path / "manifest.jsonl").write_text('{"image": "a.png", "labels": {"quality": 0.5}}\n')
    rc, _, err = _run_cli("train", "quality", "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert rc == 2 and "line 1" in err and "cannot read image" in err, err


def test_train_cli_on_a_manifest_dataset(tmp_path):
    """`edge-assist train quality --data DIR` on a bring-your-own manifest."""
    import cv2

    rng = np.random.default_rng(0)
    lines = []
    for i in range(24):
        q = float(rng.uniform())
        img = (rng.rayleigh(40 + 80 * q, (96, 96))).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / f"{i}.png"), img)
        lines.append(json.dumps({"image": f"{i}.png", "labels": {"quality": q, "reasons": [] if q > 0.5 else ["gain_low"]}}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    rc, out, err = _run_cli("train", "quality", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--epochs", "2",
                            "--batch-size", "8")
    assert rc == 0, err
    assert Path(out.strip()).name == "quality.pt" and (tmp_path / "run" / "quality.last.pt").is_file()


def test_training_modules_stay_out_of_the_run_time_path():
    code = "import sys, edge_assist.cli, edge_assist.pipeline, edge_assist.heads; edge_assist.cli.build_parser(); print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "False", p.stderr


def raw_check(engines):
    return json.loads((engines / "manifest.json").read_text())["heads"]["move_check"]


def test_train_all_tiny_end_to_end(tmp_path):
    """`train all --plan tiny`: data, four trainings, export, gate, INT8, eval."""
    from dataclasses import replace

    from edge_assist.heads import HeadSet
    from edge_assist.manifest import load_manifest
    from edge_assist.training.common import DEFAULT_SEED
    from edge_assist.training.make_models import PLANS, train_all

    out = tmp_path / "engines"
    from edge_assist.training.self_imitation import SelfImitation

    # guidance_seed: the guidance head's own draw (the rest keeps the run's seed); self_imitation: the stage after export, off by default
    plan = replace(PLANS["tiny"], guidance_seed=7, self_imitation=SelfImitation(samples=2, epochs=1, max_moves=6))
    result = train_all(out, plan=plan, work=tmp_path / "run", data_dir=tmp_path / "data",
                       calibration=tmp_path / "calib", workers=1)
    manifest = load_manifest(out)  # hashes verified
    # lesion: the second look; move_check: trained after export on the exported guidance head's episodes
    assert set(manifest.heads) == {"quality", "guidance", "interpreter", "lesion", "move_check"}
    assert raw_check(out)["input"]["shape"] == [1, 2, 128, 128]
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["heads"]["interpreter"]["decode"]["quality_threshold"] >= 0.5
    # the gate is fitted on the validation frames and on more validation patients' (Plan.gate_extra_val_seeds)
    assert raw["heads"]["interpreter"]["abstention_gate"]["n_val"] == (1 + 1) * 3 * 4
    # the quality head trains after the guidance head, on its DAgger trajectories too (Plan.quality_on_dagger)
    q_ck = torch.load(tmp_path / "run" / "quality" / "quality.pt", weights_only=False)
    g_ck = torch.load(tmp_path / "run" / "guidance-r1" / "guidance.pt", weights_only=False)
    assert q_ck["data"]["n_train"] == g_ck["data"]["n_train"]
    assert g_ck["run_key"]["seed"] == 7 and q_ck["run_key"]["seed"] == DEFAULT_SEED
    # the teacher and the student train on more patients than the other heads
    assert "of 3 patients per preset" in raw["data"]["interpreter_frames"]
    # where it trained: the same recipe gives other weights on another instruction set (docs/TRAINING.md)
    built_on = raw["data"]["built_on"]
    assert isinstance(built_on["cpu_flags"], list) and built_on["torch_threads"] >= 1 and built_on["device"]
    assert "int8" in raw and set(raw["int8"]["heads"]) == {"quality", "guidance", "interpreter"}
    for name, h in raw["heads"].items():
        assert h["parity_max_abs_diff"] <= 1e-4
        assert (h.get("int8_file") is not None) == (name in raw["int8"]["heads"] and raw["int8"]["heads"][name]["kept"])
    assert raw["heads"]["lesion"]["input"]["shape"] == [1, 1, 64, 64] and "lesion head" not in raw["data"]["lesion_frames"]
    assert (tmp_path / "calib" / "frames.npz").stat().st_size < 2e6
    # after export the guidance head practises with the hints and is fine-tuned (Plan.self_imitation, when set)
    si = raw["heads"]["guidance"]["training"]["self_imitation"]
    assert si["round"] == 1 and si["episodes"] == 2 * 3 * 2 and si["frames"] >= si["episodes"]
    assert (tmp_path / "run" / "self-imitation" / "guidance-self-imitation-r1.pt").is_file()
    # what each head's epochs cost, from its checkpoints (also when a later run resumes them)
    assert set(raw["data"]["training_seconds"]) == {"guidance", "quality", "teacher", "interpreter", "lesion", "move_check"}
    # a tiny epoch can take under 0.05 s, which the history rounds to 0.0
    assert all(v >= 0 for v in raw["data"]["training_seconds"].values()) and sum(raw["data"]["training_seconds"].values()) > 0
    card = (out / "MODEL_CARD.md").read_text()
    assert "training_seconds: guidance " in card
    assert "not for diagnosis" in card.lower() or "must not be used for diagnosis" in card
    for head, keys in EVAL_KEYS.items():
        assert keys <= set(result[head])
    assert raw["evaluation"]["quality"]["spearman"] == result["quality"]["spearman"]
    with HeadSet(manifest) as heads:
        x = np.zeros((1, 1, 128, 128), np.float32)
        assert 0.0 <= heads.quality(x).score <= 1.0


def test_within_every_tolerance_is_the_per_component_test():
    """The closed loop's diagnostic `pose_reached`: every component within its
    tolerance, contact and truth quality, whatever the view offset says."""
    from edge_assist.sim.patient import VirtualPatient
    from edge_assist.training.evaluate import within_every_tolerance

    vp = VirtualPatient("liver", 50_123, image_size=(64, 64))
    _, truth = vp.render()
    assert within_every_tolerance(vp, truth)
    vp.set_pose_error(w=1.5 * vp.tol["w"], fan=-1.0 * vp.tol["fan"])  # the view is the target's, w is out of tolerance
    _, truth = vp.render()
    assert truth["at_target"] and not within_every_tolerance(vp, truth)
    vp.reset_to_target()
    vp.apply_degradations({"contact": 0.5})
    _, truth = vp.render()
    assert not within_every_tolerance(vp, truth)


def test_depth_start_is_the_target_view_at_a_wrong_depth():
    from edge_assist.sim.patient import STEP, VirtualPatient
    from edge_assist.training.common import expert_action
    from edge_assist.training.make_models import depth_start

    rng = np.random.default_rng(5)
    for preset in ("liver", "thyroid", "cardiac"):
        vp = VirtualPatient(preset, 3)
        depth_start(vp, rng)
        image, truth = vp.render()
        off = abs(truth["pose_error"]["depth_mm"]) / STEP["depth"]
        assert off in (2, 3) or vp.pose["depth"] in (vp.probe.depth_min, vp.probe.depth_max)
        assert expert_action(vp, truth) in ("depth_up", "depth_down")
        assert all(abs(truth["pose_error"][k]) <= 0.5 * vp.tol[c] + 1e-9
                   for c, k in (("u", "u_mm"), ("w", "w_mm"), ("rot", "rot_deg"), ("fan", "fan_deg"), ("rock", "rock_deg")))


def test_training_device_follows_edge_assist_device(monkeypatch):
    from edge_assist.training.common import TrainingError, training_device

    monkeypatch.setenv("EDGE_ASSIST_DEVICE", "cpu")
    assert training_device().type == "cpu"
    monkeypatch.delenv("EDGE_ASSIST_DEVICE")
    assert training_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv("EDGE_ASSIST_DEVICE", "cuda")
        with pytest.raises(TrainingError, match="no CUDA GPU"):
            training_device()


def test_centre_depth_labels_ask_for_the_depth_inside_its_tolerance():
    from edge_assist.sim.patient import VirtualPatient
    from edge_assist.training.common import expert_action

    vp = VirtualPatient("liver", 3)
    vp.reset_to_target()
    _, truth = vp.render()
    assert expert_action(vp, truth, centre_depth=True) == expert_action(vp, truth) == "hold"
    vp.move("depth_up")  # one step: within the depth tolerance, still the target view
    _, truth = vp.render()
    assert truth["at_target"] and expert_action(vp, truth) == "hold"
    back = expert_action(vp, truth, centre_depth=True)
    assert back in ("depth_up", "depth_down") and back != "depth_up"
    vp.move(back)
    _, truth = vp.render()
    assert truth["pose_error"]["depth_mm"] == 0 and expert_action(vp, truth, centre_depth=True) == "hold"


def test_centre_view_labels_move_inside_the_target_view_until_near_its_centre():
    from edge_assist.sim.patient import VirtualPatient
    from edge_assist.training.common import expert_action

    vp = VirtualPatient("liver", 3)
    vp.reset_to_target()
    vp.set_pose_error(w=0.9 * vp.tol["w"])  # inside the target view, near its edge
    _, truth = vp.render()
    assert truth["at_target"] and truth["view_offset"] > 0.5
    assert expert_action(vp, truth) == "hold"  # the simulator holds anywhere in the target view
    step = expert_action(vp, truth, centre_view=0.5)
    assert step == "slide_feet"  # w is positive: the slide that reduces it
    vp.move(step)
    _, truth = vp.render()
    assert truth["view_offset"] <= 0.5 and expert_action(vp, truth, centre_view=0.5) == "hold"
    vp.reset_to_target()
    _, truth = vp.render()
    assert expert_action(vp, truth, centre_view=0.0) == "hold"  # no step brings any component closer


def test_exported_output_reads_one_output_frame_by_frame_and_copes_with_no_frames(tiny_engines_128):
    from edge_assist.training.make_models import exported_output

    frames = np.random.default_rng(0).integers(0, 255, size=(3, 128, 128), dtype=np.uint8)
    score = exported_output(tiny_engines_128 / "quality.onnx", frames, "score")
    assert score.shape == (3, 1) and score.dtype == np.float64 and np.all((0 <= score) & (score <= 1))
    assert exported_output(tiny_engines_128 / "quality.onnx", frames[:0], "score").shape == (0, 1)
