"""The lesion head's second look: crop geometry, the manifest entry, the
decode through real (tiny) ONNX models, and the pipeline passing frames to it."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edge_assist.errors import EndOfStream
from edge_assist.frames import Frame, QualityResult, ScanRegion
from edge_assist.lesion_crop import CropBox, box_around, box_from_measurement, cut
from edge_assist.lesion_measure import measure_on_mask
from tiny_models import INTERP_DISC, LESION_CROP, LESION_DISC_CELLS, write_tiny_engines

GOOD = QualityResult(score=0.95, reasons=[])


def test_cut_centres_the_box_and_blacks_out_what_lies_outside():
    region = np.zeros((100, 120), np.uint8)
    region[40:60, 50:70] = 200  # a 20 px bright square centred at (60, 50)
    crop = cut(region, CropBox(60.0, 50.0, 40.0), size=40)  # 1:1, the square in the middle
    assert crop.shape == (40, 40) and crop.dtype == np.uint8
    assert (crop[10:30, 10:30] == 200).all() and crop[:10].max() == 0 and crop[:, 30:].max() == 0
    # half outside the top-left corner: the outside reads black, the inside is the image
    corner = np.full((100, 120), 90, np.uint8)
    c = cut(corner, CropBox(0.0, 0.0, 20.0), size=20)
    assert c[:10].max() == 0 and c[:, :10].max() == 0 and (c[10:, 10:] == 90).all()
    # entirely outside: all black, no error
    assert cut(corner, CropBox(500.0, 500.0, 20.0), size=20).max() == 0


def test_cut_resizes_to_the_head_input_and_reads_colour_as_grey():
    grey = np.tile(np.arange(200, dtype=np.uint8), (200, 1))
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    box = CropBox(100.0, 100.0, 150.0)
    small, from_rgb = cut(grey, box, size=64), cut(rgb, box, size=64)
    assert small.shape == (64, 64) and np.array_equal(small, from_rgb)
    assert small[0, 0] < small[0, 63]  # the ramp survives the shrink, left to right
    up = cut(grey, CropBox(100.0, 100.0, 8.0), size=64)  # magnified 8x
    assert up.shape == (64, 64) and 95 <= up.mean() <= 104


def test_box_grid_and_limits():
    assert CropBox(10.4, 20.6, 9.6).grid() == (5, 16, 10)
    assert box_around(50, 50, 4.0).side == 24  # never smaller than MIN_SIDE_PX
    assert box_around(50, 50, 40.0).side == 100  # CONTEXT x the long axis
    b = box_from_measurement((0.25, 0.5), 0.1, (200, 300))  # fractions of a 300 x 200 region
    assert (b.cx, b.cy, b.side) == (75.0, 100.0, 50.0)


@pytest.mark.parametrize("probe", ["linear", "curvilinear", "phased"])
def test_depth_fraction_reads_the_depth_scale_down_the_middle_of_the_fan(probe):
    """On the simulator's own scan conversion: a point v mm below the centre of
    the probe face lies v / depth down the depth scale, whatever the probe."""
    from edge_assist.lesion_crop import depth_fraction, depth_third
    from edge_assist.sim.geometry import PROBES, BeamGeometry

    g = BeamGeometry(PROBES[probe], 120.0, (256, 256))
    region = g.region()
    for v in (5.0, 39.0, 41.0, 60.0, 79.0, 81.0, 115.0):
        y = (v - g.v_top) / g.spacing_mm[0]  # image rows: v = v_top + y * spacing
        assert depth_fraction(y, (256, 256), region.mask) == pytest.approx(v / 120.0, abs=0.01)
    assert depth_third(0.2) == "near_field" and depth_third(0.5) == "mid_field" and depth_third(0.9) == "far_field"
    assert depth_fraction(64.0, (256, 256)) == 0.25  # no fan known: the region's top to bottom


def test_measure_on_mask_gives_the_centre_of_the_region():
    m = np.zeros((64, 64), np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    m[(xx - 20.0) ** 2 + (yy - 40.0) ** 2 <= 36] = 1.0
    meas = measure_on_mask(m)
    assert meas.centre == pytest.approx((20.5 / 64, 40.5 / 64), abs=0.01)
    assert measure_on_mask(m, with_outline=False).outline == () and meas.outline


def _engines(tmp_path, **kw):
    return write_tiny_engines(tmp_path / "engines", lesion_head=True, **kw)


def test_the_lesion_head_reads_and_measures_a_crop_of_the_source_frame(tmp_path):
    from edge_assist.heads import HeadSet, lesion_box
    from edge_assist.manifest import load_manifest

    manifest = load_manifest(_engines(tmp_path))
    assert set(manifest.heads) == {"quality", "guidance", "interpreter", "lesion"}
    pixels = np.random.default_rng(0).integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
    region = ScanRegion(box=(40, 20, 240, 220), spacing_mm=(0.3, 0.3))  # 200 x 200 px, 0.3 mm a pixel
    x = np.zeros((1, 1, 64, 64), np.float32)
    with HeadSet(manifest) as heads:
        res = heads.interpreter(x, frame_index=3, quality=GOOD, mm_per_px=(0.9375, 0.9375), source=(pixels, region))
        f = res.findings
        assert not res.abstained and f.lesion_present and f.second_look and f.size_measured
        # The box: 2.5 x the long axis of the interpreter's disc, around its centre; the
        # size: the long axis of the lesion head's disc, in crop fractions x the box side x 0.3 mm.
        (cx, cy), _ = INTERP_DISC
        box = lesion_box(heads.heads["lesion"].spec, heads.heads["interpreter"].run(x)["mask"], (200, 200))
        assert box.cx == pytest.approx(cx * 200, abs=1) and box.cy == pytest.approx(cy * 200, abs=1)
        side = box.grid()[2]
        lesion_mask = heads.heads["lesion"].run(np.zeros((1, 1, LESION_CROP, LESION_CROP), np.float32))["mask"]
        expected = measure_on_mask(lesion_mask)
        assert f.size_mm == round(expected.extent * side * 0.3, 1)
        assert f.location == "mid_field"  # the centre of its mask lies half way down the region
        assert expected.extent == pytest.approx((2 * LESION_DISC_CELLS + 1) / (LESION_CROP // 2), rel=0.3)
        xs, ys = np.array(f.lesion_outline).T
        assert abs(xs.mean() - cx) < 0.03 and abs(ys.mean() - cy) < 0.03  # drawn where the lesion is
        assert np.ptp(ys) * 200 < side  # and inside the box
        # without the frame (or on an abstention) there is no second look
        alone = heads.interpreter(x, frame_index=4, quality=GOOD, mm_per_px=(0.9375, 0.9375)).findings
        assert not alone.second_look
        poor = heads.interpreter(x, frame_index=5, quality=QualityResult(0.1, []), mm_per_px=None, source=(pixels, region))
        assert poor.abstained and poor.findings is None


def test_without_spacing_the_second_look_reads_but_reports_no_millimetres(tmp_path):
    from edge_assist.heads import HeadSet
    from edge_assist.manifest import load_manifest

    pixels = np.zeros((200, 200), np.uint8)
    with HeadSet(load_manifest(_engines(tmp_path))) as heads:
        f = heads.interpreter(np.zeros((1, 1, 64, 64), np.float32), frame_index=0, quality=GOOD, mm_per_px=None,
                              source=(pixels, ScanRegion(box=(0, 0, 200, 200)))).findings
    assert f.second_look and f.size_mm is None and not f.size_measured and f.echogenicity is not None


def test_manifest_checks_the_lesion_entry(tmp_path):
    from edge_assist.errors import ManifestError
    from edge_assist.manifest import load_manifest

    root = _engines(tmp_path)
    raw = json.loads((root / "manifest.json").read_text())
    raw["heads"]["lesion"]["input"]["shape"] = [1, 1, 16, 8]
    (root / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="square crop"):
        load_manifest(root)
    raw["heads"]["lesion"]["input"]["shape"] = [1, 1, 16, 16]
    del raw["heads"]["lesion"]["outputs"]["mask"]
    (root / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="mask"):
        load_manifest(root)
    del raw["heads"]["lesion"]  # optional: the three heads alone still load
    (root / "manifest.json").write_text(json.dumps(raw))
    assert set(load_manifest(root).heads) == {"quality", "guidance", "interpreter"}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_pipeline_gives_the_lesion_head_the_source_frame(tmp_path, mode):
    """Readable frames through the real pipeline, the interpreter in line or in
    its own thread: the findings come from the second look."""
    from edge_assist.heads import HeadSet
    from edge_assist.manifest import load_manifest
    from edge_assist.pipeline import Pipeline
    from edge_assist.sources.base import FrameSource

    class Frames(FrameSource):
        """Thirty 160 x 200 RGB frames with a known scan region and spacing."""

        uri, is_live, nominal_fps = "frames:", False, 30.0

        def __init__(self):
            self.n = 0

        def read(self, timeout_s: float = 1.0):
            if self.n >= 30:
                raise EndOfStream
            self.n += 1
            px = np.full((160, 200, 3), 60, np.uint8)
            return Frame(px, self.n - 1, time.monotonic_ns(), region=ScanRegion(box=(20, 10, 180, 150), spacing_mm=(0.5, 0.5)))

        def close(self):
            pass

    results = []
    with HeadSet(load_manifest(_engines(tmp_path))) as heads:
        Pipeline(Frames(), heads, every_frame=True, interpreter_mode=mode, on_result=results.append).run()
    found = [r.hints.interpreter for r in results if r.hints.interpreter is not None and not r.hints.interpreter.abstained]
    assert found and all(i.findings.second_look and i.findings.size_measured for i in found)


def test_measure_on_mask_matches_the_weighted_covariance_it_stands_for():
    """The moments-based measurement equals the probability-weighted
    covariance of the region's pixel centres (what calipers along the long axis
    of a filled ellipse read: 4 standard deviations), on random masks."""
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(200):
        m = np.clip(rng.normal(0, 0.1, (48, 64)), 0, 1).astype(np.float32)
        yy, xx = np.mgrid[0:48, 0:64]
        cx, cy, r = rng.uniform(5, 59), rng.uniform(5, 43), rng.uniform(1, 12)
        m[((xx - cx) / r) ** 2 + ((yy - cy) / (0.6 * r)) ** 2 <= 1] = rng.uniform(0.6, 1.0)
        meas = measure_on_mask(m)
        if meas is None:
            continue
        from edge_assist.lesion_measure import MASK_THRESHOLD
        import cv2

        _, labels, stats, _ = cv2.connectedComponentsWithStats((m >= MASK_THRESHOLD).astype(np.uint8), connectivity=8)
        k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        ys, xs = np.nonzero(labels == k)
        w = m[ys, xs].astype(np.float64)
        cov = np.cov(np.stack([(xs + 0.5) / 48, (ys + 0.5) / 48]), aweights=w, bias=True)
        assert meas.extent == pytest.approx(4 * np.sqrt(np.linalg.eigvalsh(cov)[-1]) + 1 / 48, abs=1e-9)
        assert meas.centre == pytest.approx((np.average(xs + 0.5, weights=w) / 64, np.average(ys + 0.5, weights=w) / 48), abs=1e-9)
        xs_o, ys_o = np.array(meas.outline).T
        assert xs_o.min() >= (xs.min() - 0.5) / 64 and xs_o.max() <= (xs.max() + 1.5) / 64  # the outline hugs the region
        checked += 1
    assert checked > 150
