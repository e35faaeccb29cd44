"""The lesion head's training side: simulator frames at source resolution,
a tiny training run, the checkpoint, and the cached data."""

from __future__ import annotations

import numpy as np
import torch

from edge_assist.vocab import ECHOGENICITY


def test_lesion_frames_tiny_training_lowers_the_loss(tmp_path):
    from edge_assist.sim.dataset import generate
    from edge_assist.training.lesion import LesionFrames, lesion_rows, load_lesion_checkpoint, train_lesion, true_box_crops

    data = LesionFrames.from_rows(lesion_rows(generate(["thyroid", "liver"], range(4), 8, 5, with_lesion_mask=True)))
    assert len(data) >= 4
    assert data.regions.shape[1:] == (256, 256) and data.inputs.shape[1:] == (128, 128)
    assert set(np.unique(data.masks)) <= {0, 1} and (data.masks.reshape(len(data), -1).sum(1) >= 2).all()
    assert (data.size_mm > 0).all() and (data.mm_per_px > 0).all() and (data.echo < len(ECHOGENICITY)).all()
    crops = true_box_crops(data)
    assert crops.shape == (len(data), 64, 64) and crops.dtype == np.uint8

    ckpt = train_lesion(data, data, tmp_path / "lesion", epochs=6, batch_size=4, lr=3e-3)
    model, ck = load_lesion_checkpoint(ckpt)
    losses = [h["loss"] for h in ck["history"]]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert 0.5 <= ck["temperature"] <= 3.0
    e, m, mask = model(torch.zeros(1, 1, 64, 64))
    assert e.shape == (1, 4) and m.shape == (1, 2) and mask.shape == (1, 1, 32, 32)
    mtime = ckpt.stat().st_mtime_ns
    assert train_lesion(data, data, tmp_path / "lesion", epochs=6, batch_size=4, lr=3e-3) == ckpt  # up to date: kept
    assert ckpt.stat().st_mtime_ns == mtime

    data.save(tmp_path / "l.npz")
    back = LesionFrames.load(tmp_path / "l.npz")
    assert np.array_equal(back.regions, data.regions) and back.presets == data.presets


def _write_own_dataset(root, n_patients: int = 3):
    """A 'bring your own data' folder (docs/DATA.md) from simulator frames:
    images, lesion masks for the frames that report a lesion, findings, spacing."""
    import json

    import cv2

    from edge_assist.sim.dataset import generate
    from edge_assist.training.common import sim_region

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for i, (image, truth, lesion) in enumerate(generate(["thyroid"], range(n_patients), 8, 3, with_lesion_mask=True)):
        cv2.imwrite(str(root / "images" / f"{i:04d}.png"), image)
        rec = {"image": f"images/{i:04d}.png", "spacing_mm": list(sim_region(truth, image.shape).spacing_mm),
               "labels": {"quality": truth["quality"], "findings": truth["findings"], "preset": "thyroid", "seed": truth["seed"]}}
        if truth["findings"]["lesion_present"]:
            cv2.imwrite(str(root / "masks" / f"{i:04d}.png"), lesion.astype(np.uint8) * 255)
            rec["lesion_mask"] = f"masks/{i:04d}.png"
        lines.append(json.dumps(rec))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_own_data_with_lesion_masks_trains_the_mask_and_the_lesion_head(tmp_path):
    """lesion_mask in a manifest: the interpreter's data get a mask target and
    `edge-assist train lesion` trains the lesion head from the records."""
    import json
    import subprocess
    import sys

    from edge_assist.training.data import load_dataset
    from edge_assist.training.lesion import lesion_frames_from_manifest

    root = _write_own_dataset(tmp_path / "own")
    ds = load_dataset(root)
    assert ds.lesion_mask is not None and ds.lesion_mask.shape == (len(ds), 64, 64)
    has = np.array([bool(l) for l in ds.lesion])
    assert ds.lesion_mask[has].max() > 0 and ds.lesion_mask[~has].max() == 0
    frames = lesion_frames_from_manifest(root)
    assert len(frames) >= 2 and frames.regions[0].shape == (256, 256) and not np.isnan(frames.mm_per_px).any()

    out = tmp_path / "run" / "lesion"
    p = subprocess.run([sys.executable, "-m", "edge_assist", "train", "lesion", "--data", str(root), "--out", str(out),
                        "--epochs", "2", "--batch-size", "4"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (out / "lesion.pt").is_file()

    # a bad mask on one record: one line naming the record, exit code 2
    lines = (root / "manifest.jsonl").read_text().splitlines()
    k = next(i for i, l in enumerate(lines) if "lesion_mask" in l)
    import cv2

    cv2.imwrite(str(root / "masks" / "small.png"), np.zeros((10, 10), np.uint8))

    def train_with_mask(mask_path: str):
        rec = json.loads(lines[k])
        rec["lesion_mask"] = mask_path
        (root / "manifest.jsonl").write_text("\n".join(lines[:k] + [json.dumps(rec)] + lines[k + 1:]) + "\n")
        return subprocess.run([sys.executable, "-m", "edge_assist", "train", "lesion", "--data", str(root), "--out", str(out)],
                              capture_output=True, text=True, timeout=120)

    p = train_with_mask("masks/small.png")  # does not match its image
    assert p.returncode == 2 and f"line {k + 1}" in p.stderr and "match" in p.stderr and "Traceback" not in p.stderr
    p = train_with_mask("masks/missing.png")
    assert p.returncode == 2 and f":{k + 1}:" in p.stderr and "not found" in p.stderr and "Traceback" not in p.stderr


def test_export_finds_the_lesion_checkpoint_named_or_in_the_run_folder(tmp_path):
    from edge_assist.training.export import find_checkpoints

    run = tmp_path / "run"
    for head in ("quality", "guidance", "interpreter"):
        (run / head).mkdir(parents=True)
        (run / head / f"{head}.pt").write_bytes(b"x")
    assert "lesion" not in find_checkpoints(run)  # optional: the three heads alone export
    (run / "lesion").mkdir()
    (run / "lesion" / "lesion.pt").write_bytes(b"x")
    assert find_checkpoints(run)["lesion"] == run / "lesion" / "lesion.pt"
    named = tmp_path / "other.pt"
    named.write_bytes(b"x")
    assert find_checkpoints(run, lesion=named)["lesion"] == named
