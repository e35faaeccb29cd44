"""Preprocessing: region detection on real and synthetic screen captures,
the per-frame path (shapes, dtypes, normalisation, mm/px) and its speed."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from edge_assist.frames import Frame, ScanRegion
from edge_assist.preprocess import Prepared, Preprocessor, detect_scan_region, to_grey
from edge_assist.sources import open_source

# -- synthetic screen captures ---------------------------------------------------


def fan_mask(kind: str, H: int, W: int) -> np.ndarray:
    """Boolean HxW mask of a linear / curvilinear / phased image on a 'screen'."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cx, top = W * 0.55, H * 0.14
    if kind == "linear":
        return (xx >= W * 0.3) & (xx < W * 0.8) & (yy >= top) & (yy < H * 0.86)
    if kind == "curvilinear":
        r0, r1, half = H * 0.35, H * 1.02, np.deg2rad(30)
        ay = top - r0 * np.cos(half)  # virtual apex above: the arc's ends touch the top
    else:  # phased: apex on the top edge
        r0, r1, half = 0.0, H * 0.72, np.deg2rad(42)
        ay = top
    r = np.hypot(xx - cx, yy - ay)
    theta = np.arctan2(xx - cx, yy - ay)
    return (r >= r0) & (r <= r1) & (np.abs(theta) <= half) & (yy >= top)


def speckle_frame(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Log-compressed, blurred Rayleigh speckle inside `mask`, with a dark cyst."""
    H, W = mask.shape
    env = rng.rayleigh(1.0, size=(H, W)).astype(np.float32)
    env = cv2.GaussianBlur(env, (0, 0), 1.2)
    yy, xx = np.mgrid[0:H, 0:W]
    echo = np.where(np.hypot(yy - H * 0.5, xx - W * 0.55) < H * 0.08, 0.15, 1.0)  # anechoic cyst
    img = 60 + 40 * np.log1p(4 * env * echo) * (1.0 - 0.5 * yy / H)  # depth attenuation
    return np.where(mask, np.clip(img, 0, 255), 0).astype(np.uint8)


def draw_ui(rgb: np.ndarray) -> None:
    """Vendor UI around the image: banner, text column, logo, grey bar, depth label."""
    H, W = rgb.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    rgb[: int(H * 0.08)] = (30, 50, 90)  # banner
    cv2.putText(rgb, "ACME ULTRASOUND  MI 1.1  TIS 0.4", (10, int(H * 0.06)), font, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    for i, line in enumerate(["Gen ABD", "C5-1", "28Hz", "Gn 60", "DR 70", "11cm", "2D"]):
        cv2.putText(rgb, line, (8, int(H * 0.16) + 22 * i), font, 0.5, (230, 230, 230), 1, cv2.LINE_AA)
    lx, ly = int(W * 0.08), int(H * 0.62)
    cv2.circle(rgb, (lx, ly), 12, (40, 90, 200), -1)  # logo
    cv2.putText(rgb, "P", (lx - 6, ly + 6), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    bar = np.linspace(255, 0, int(H * 0.4)).astype(np.uint8)[:, None]  # grey scale bar
    rgb[int(H * 0.2) : int(H * 0.2) + len(bar), W - 22 : W - 12] = bar[:, :, None]
    cv2.putText(rgb, "LIVER  TRANS", (int(W * 0.35), H - 12), font, 0.5, (255, 255, 0), 1, cv2.LINE_AA)


def screen_frames(kind: str, n: int = 8, H: int = 480, W: int = 640, seed: int = 0):
    """n RGB screen captures of one probe kind, and the true box of the image."""
    rng = np.random.default_rng(seed)
    mask = fan_mask(kind, H, W)
    ys, xs = np.where(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    frames = []
    for _ in range(n):
        rgb = np.repeat(speckle_frame(mask, rng)[:, :, None], 3, axis=2)
        draw_ui(rgb)
        frames.append(rgb)
    return frames, box


def box_error(a, b) -> int:
    return max(abs(int(p) - int(q)) for p, q in zip(a, b))


def dicom_frames(path: str, n: int | None = None, keep_region: bool = True) -> list[Frame]:
    with open_source(f"dicom:{path}", every_frame=True) as src:
        frames = [src.read() for _ in range(n or src.frame_count)]
    if not keep_region:  # as if screen-captured: no tags
        frames = [Frame(f.pixels, f.index, f.t_capture_ns, meta=f.meta) for f in frames]
    return frames


YBR = get_testdata_file("examples_ybr_color.dcm")
RGB = get_testdata_file("examples_rgb_color.dcm")
PALETTE = get_testdata_file("examples_palette.dcm")


# -- grey conversion and the per-frame output ---------------------------------------


def test_to_grey_shapes_and_luma():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> BT.601 luma 76
    assert to_grey(rgb).shape == (4, 5) and to_grey(rgb)[0, 0] == 76
    rgba = np.dstack([rgb, np.full((4, 5), 255, np.uint8)])
    assert to_grey(rgba)[0, 0] == 76
    g = np.arange(20, dtype=np.uint8).reshape(4, 5)
    assert to_grey(g) is g and to_grey(g[:, :, None]).shape == (4, 5)


def test_prepared_shapes_dtypes_and_normalisation():
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    frame = Frame(px, 0, 0, region=ScanRegion(box=(10, 20, 290, 180)))
    out = Preprocessor(size=(96, 128), mean=0.5, std=0.25)(frame)
    assert isinstance(out, Prepared)
    assert out.tensor.shape == (1, 1, 96, 128) and out.tensor.dtype == np.float32
    assert out.image.shape == (96, 128) and out.image.dtype == np.uint8
    np.testing.assert_allclose(out.tensor[0, 0], (out.image / 255.0 - 0.5) / 0.25, atol=1e-5)
    assert out.region.box == (10, 20, 290, 180) and out.mm_per_px is None
    # The crop is what gets resized: INTER_AREA of the grey crop.
    want = cv2.resize(to_grey(px[20:180, 10:290]), (128, 96), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out.image, want)


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (0.25, 0.25), (0.5, 0.2), (0.485, 0.229)])
def test_normalisation_table_is_bit_identical_to_the_arithmetic(mean, std):
    """The per-frame cv2.LUT gives exactly `img * scale + offset` in float32
    (training used that arithmetic), for every grey level."""
    pre = Preprocessor(size=(16, 16), mean=mean, std=std, detect=False)
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    want = levels * np.float32(1.0 / (255.0 * std)) + np.float32(-mean / std)
    out = pre(Frame(levels.copy(), 0, 0))
    assert out.tensor.dtype == np.float32 and out.tensor.flags.c_contiguous
    np.testing.assert_array_equal(out.tensor[0, 0], want)
    # strided and colour inputs too (the grey crop is made contiguous first)
    rgb = np.repeat(levels[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(pre(Frame(rgb, 1, 0)).tensor[0, 0], want)
    wide = np.zeros((16, 32), np.uint8)
    wide[:, ::2] = levels
    pre2 = Preprocessor(size=(16, 16), mean=mean, std=std, detect=False)
    np.testing.assert_array_equal(pre2(Frame(wide[:, ::2], 2, 0)).tensor[0, 0], want)


def test_each_frame_gets_its_own_tensor():
    pre = Preprocessor(size=(32, 32), detect=False)
    a = pre(Frame(np.full((64, 64), 10, np.uint8), 0, 0))
    b = pre(Frame(np.full((64, 64), 200, np.uint8), 1, 0))
    assert not np.shares_memory(a.tensor, b.tensor)
    assert a.tensor.max() < b.tensor.min()


def test_output_never_aliases_the_source_buffer():
    px = np.zeros((128, 128), np.uint8)
    out = Preprocessor(size=(128, 128), detect=False)(Frame(px, 0, 0))
    px[:] = 99
    assert out.image.max() == 0


def test_source_region_wins_and_mm_per_px_scales_with_the_resize():
    frames = dicom_frames(YBR, n=3)
    pp = Preprocessor(size=(128, 128))
    out = pp(frames[0])
    assert out.region.box == (42, 15, 298, 208)  # the DICOM tags, not a detection
    assert pp.region is None  # nothing detected
    row, col = frames[0].region.spacing_mm
    assert out.mm_per_px == pytest.approx((row * 193 / 128, col * 256 / 128))
    # Same physical depth either way: rows x mm/px.
    assert 128 * out.mm_per_px[0] == pytest.approx(193 * row)


def test_region_is_clipped_to_the_frame_and_mask_applied():
    px = np.full((100, 100), 200, np.uint8)
    mask = np.zeros((80, 80), np.uint8)
    mask[:, :40] = 255  # left half of the box is image, right half is not
    region = ScanRegion(box=(40, 40, 120, 120), kind="linear", spacing_mm=(0.5, 0.5), mask=mask)
    out = Preprocessor(size=(60, 60))(Frame(px, 0, 0, region=region))
    assert out.region.box == (40, 40, 100, 100)
    assert out.mm_per_px == pytest.approx((0.5, 0.5))
    assert out.image[:, :35].min() == 200 and out.image[:, 45:].max() == 0


# -- detection on real images ---------------------------------------------------------


def test_detection_without_tags_agrees_with_the_sonosite_tags():
    tagged = dicom_frames(YBR, n=8)[0].region.box  # (42, 15, 298, 208)
    pp = Preprocessor(warmup_frames=8)
    for f in dicom_frames(YBR, n=8, keep_region=False):
        out = pp(f)
    assert box_error(out.region.box, tagged) <= 8, (out.region.box, tagged)  # measured: 6 (right edge)
    assert out.region.kind == "phased"  # the SonoSite P21 sector ("Sector" on its menu bar)
    assert pp.region is out.region
    # The UI text left of the fan ("PLA", "Gen THI") is not in the crop.
    assert out.region.box[0] > 30


def test_detection_on_ge_single_frame_drops_text_and_finds_the_linear_image():
    (frame,) = dicom_frames(RGB)
    out = Preprocessor()(frame)
    # Hand-measured edges of the image rectangle (text above and below it).
    assert box_error(out.region.box, (7, 54, 312, 169)) <= 5, out.region.box
    assert out.region.kind == "linear"


def test_detection_on_philips_palette_frame_drops_banner_text_logo_and_bar():
    (frame,) = dicom_frames(PALETTE, keep_region=False)
    region = detect_scan_region([frame.pixels])
    x0, y0, x1, y1 = region.box
    assert y0 >= 60  # blue banner ends at row ~58
    assert x0 > 300  # text column and the "P" logo at x < 330
    assert x1 < 770  # grey-scale bar at x ~780
    assert region.kind == "curvilinear"  # C5-1; only the near field is visible (probe in air)


# -- detection on synthetic screen captures --------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "curvilinear", "phased"])
def test_synthetic_capture_temporal_detection(kind):
    frames, truth = screen_frames(kind, n=8, seed=3)
    pp = Preprocessor(size=(128, 128), warmup_frames=8)
    for i, px in enumerate(frames):
        out = pp(Frame(px, i, 0))
    assert box_error(out.region.box, truth) <= 4, (out.region.box, truth)
    assert out.region.kind == kind
    assert out.mm_per_px is None  # a screen capture has no spacing


@pytest.mark.parametrize("kind", ["linear", "curvilinear", "phased"])
def test_synthetic_capture_single_frame_detection(kind):
    frames, truth = screen_frames(kind, n=1, seed=4)
    region = detect_scan_region(frames)
    # One frame has no temporal evidence: texture density sits a little inside the edges.
    assert box_error(region.box, truth) <= 14, (region.box, truth)
    assert region.kind == kind


def test_region_is_cached_then_redetected_on_reset_or_size_change():
    lin, _ = screen_frames("linear", n=8, seed=5)
    pha, pha_box = screen_frames("phased", n=8, seed=6)
    pp = Preprocessor(warmup_frames=4)
    for i, px in enumerate(lin[:4]):
        pp(Frame(px, i, 0))
    cached = pp.region
    assert pp(Frame(pha[0], 4, 0)).region is cached  # new content, same stream: no re-detection
    pp.reset()
    for i, px in enumerate(pha[:4]):
        out = pp(Frame(px, i, 0))
    assert out.region.kind == "phased" and box_error(out.region.box, pha_box) <= 4
    before = pp.region
    small = cv2.resize(pha[0], (320, 240), interpolation=cv2.INTER_AREA)
    out = pp(Frame(small, 9, 0))  # new frame size: detected afresh (single frame)
    assert pp.region is not before
    assert box_error(out.region.box, tuple(v // 2 for v in pha_box)) <= 8


def test_detect_false_uses_the_whole_frame():
    px = np.zeros((50, 70, 3), np.uint8)
    out = Preprocessor(size=(32, 32), detect=False)(Frame(px, 0, 0))
    assert out.region.box == (0, 0, 70, 50)


def test_uniform_frame_falls_back_to_the_whole_frame():
    assert detect_scan_region([np.zeros((60, 80), np.uint8)]).box == (0, 0, 80, 60)


# -- speed -------------------------------------------------------------------------------


def test_cached_per_frame_cost_240x320():
    """Reported budget: <= ~0.3 ms per 240x320 frame once the region is cached.

    Measured median ~0.1 ms on the 2-core dev machine; the assert is loose
    because that machine is shared and noisy.
    """
    frames = dicom_frames(YBR, n=30, keep_region=False)  # RGB, detected region with hull mask
    pp = Preprocessor(size=(128, 128), warmup_frames=8)
    for f in frames[:8]:
        pp(f)
    times = []
    for i in range(600):
        t = time.perf_counter_ns()
        pp(frames[i % 30])
        times.append(time.perf_counter_ns() - t)
    median_ms = float(np.median(times)) / 1e6
    print(f"preprocess 240x320 RGB -> 128x128: median {median_ms * 1e3:.0f} us, p99 {np.percentile(times, 99) / 1e3:.0f} us")
    assert median_ms < 0.6


def test_rehearse_repeats_the_work_and_touches_no_state():
    rng = np.random.default_rng(3)
    frames = [Frame(rng.integers(0, 255, (120, 160), dtype=np.uint8), i, 0) for i in range(3)]
    pre = Preprocessor(size=(64, 64), warmup_frames=4)
    pre.rehearse(frames[0])  # before the first frame: no plan yet, nothing happens
    assert pre.region is None
    first = pre(frames[0])
    state = (len(pre._warm), pre._plan, pre._detected)
    pre.rehearse(frames[1])
    assert (len(pre._warm), pre._plan, pre._detected) == state  # detection did not see it
    again = Preprocessor(size=(64, 64), warmup_frames=4)
    assert np.array_equal(again(frames[0]).tensor, first.tensor)
    assert np.array_equal(pre(frames[1]).tensor, again(frames[1]).tensor)
