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
