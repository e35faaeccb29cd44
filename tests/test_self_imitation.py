"""Self-imitation of the guidance head (training/self_imitation.py): real ONNX heads, real practice episodes."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge_assist.training.self_imitation import SelfImitation, fine_tune, guidance_from_onnx, practice, practice_loss, refine_guidance
from edge_assist.vocab import ACTIONS

ENGINES = Path(__file__).resolve().parents[1] / "engines"
TINY = SelfImitation(samples=2, epochs=2, max_moves=12)


def test_guidance_from_onnx_computes_what_the_exported_head_does():
    model = guidance_from_onnx(ENGINES / "guidance.onnx")
    x = np.random.default_rng(3).normal(size=(6, 1, 128, 128)).astype(np.float32)
    sess = ort.InferenceSession(str(ENGINES / "guidance.onnx"), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        got = model(torch.from_numpy(x))[0].numpy()
    assert np.abs(got - want).max() <= 1e-4


def test_guidance_from_onnx_refuses_another_head():
    with pytest.raises(ValueError, match="not a guidance head"):
        guidance_from_onnx(ENGINES / "quality.onnx")


@pytest.fixture(scope="module")
def practised():
    return practice(ENGINES, [0], TINY, round_=1, workers=1)


def test_practice_labels_the_moves_of_the_episodes_that_reached_the_view(practised):
    d = practised
    assert d.episodes() == (3 * TINY.samples, int(d.success[np.unique(d.episode, return_index=True)[1]].sum()))
    assert d.images.shape[1:] == (128, 128) and d.images.dtype == np.uint8
    np.testing.assert_allclose(d.soft.sum(1), 1.0, atol=1e-5)  # the expert's soft target on every frame
    for ep in np.unique(d.episode):
        rows = np.flatnonzero(d.episode == ep)
        assert (d.made[rows[:-1]] >= 0).all() and d.made[rows[-1]] == -1  # a move after every frame but the last
        assert len(rows) <= TINY.max_moves + 1
    assert (d.imitated == d.success).all() and d.imitated.any()  # thyroid from patient 0 is reached within 12 moves
    ends = d.imitated & (d.made == -1)  # where the view was reached the operator holds
    assert ends.sum() == len(np.unique(d.episode[d.success])) and (d.target[ends] == ACTIONS.index("hold")).all()
    assert (d.target[d.made >= 0] == d.made[d.made >= 0]).all()


def test_fine_tuning_lowers_the_practice_loss(practised):
    model = guidance_from_onnx(ENGINES / "guidance.onnx")
    d = practised

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            from edge_assist.training.train import to_tensor

            logits = model(to_tensor(d.images))[0]
            return float(practice_loss(logits, torch.from_numpy(d.soft), torch.from_numpy(d.target), torch.from_numpy(d.imitated), TINY))

    before = loss()
    history = fine_tune(model, d, replace(TINY, epochs=3, lr=1e-3), seed=1, batch_size=16)
    assert len(history) == 3 and loss() < before
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(float(m.running_var.mean()) == pytest.approx(1.0, abs=1e-4) for m in bn)  # folded statistics did not move


def test_refine_guidance_exports_the_refined_head_in_place_and_resumes(tmp_path):
    from edge_assist.manifest import load_manifest

    engines = tmp_path / "engines"
    shutil.copytree(ENGINES, engines)
    before = json.loads((engines / "manifest.json").read_text())["heads"]["guidance"]
    report = refine_guidance(engines, tmp_path / "work", [0], replace(TINY, epochs=1), seed=5, workers=1, batch_size=16)
    after = json.loads((engines / "manifest.json").read_text())["heads"]["guidance"]
    assert after["sha256"] != before["sha256"] and after["decode"] == before["decode"]  # the temperature is the started head's
    assert after["training"]["self_imitation"]["round"] == 1 and after["parity_max_abs_diff"] <= 1e-4
    assert report["rounds"][0]["episodes"] == 3 * TINY.samples
    load_manifest(engines)  # the hashes match
    # the same settings from the same head again: the checkpoint is reused, not trained again
    (engines / "guidance.onnx").write_bytes((ENGINES / "guidance.onnx").read_bytes())
    raw = json.loads((engines / "manifest.json").read_text())
    raw["heads"]["guidance"] = before
    (engines / "manifest.json").write_text(json.dumps(raw))
    again = refine_guidance(engines, tmp_path / "work", [0], replace(TINY, epochs=1), seed=5, workers=1, batch_size=16)
    assert again["rounds"][0]["history"] == report["rounds"][0]["history"]
    assert json.loads((engines / "manifest.json").read_text())["heads"]["guidance"]["sha256"] == after["sha256"]


def test_self_imitation_cli_needs_an_engines_folder(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "edge_assist", "train", "self-imitation", "--out", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "make models" in p.stderr
