"""Preprocessing: scan region -> crop -> grey -> resize -> normalise.

One function for run time and training time, so the networks see the same
pixels in both. The region comes from the source when it knows it (DICOM
ultrasound-region tags, the simulator); otherwise it is detected once from
the first frames of a screen capture and cached: per-frame work is then a
crop, a colour conversion and one cv2.resize.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_assist.frames import Frame, ScanRegion

__all__ = ["Prepared", "Preprocessor", "detect_scan_region", "to_grey"]

# Detection works on frames scaled down to at most this many pixels a side:
# fast on 1080p captures, and the fan is large compared with that resolution.
_DETECT_MAX_SIDE = 400


@dataclass
class Prepared:
    tensor: np.ndarray  # float32, shape (1, 1, H, W), normalised
    image: np.ndarray  # uint8 HxW grey crop resized to (H, W) (for drawing / datasets)
    region: ScanRegion  # region used (box in source-frame pixels)
    mm_per_px: tuple[float, float] | None  # (row, col) mm per pixel of the RESIZED image


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """HxW uint8 grey from HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) pixels.

    Colour uses BT.601 luma, so colour-Doppler pixels become grey of their
    brightness, as on a scanner's grey-scale recording.
    """
    if pixels.ndim == 2:
        g = pixels
    elif pixels.shape[2] == 1:
        g = pixels[:, :, 0]
    elif pixels.shape[2] == 3:
        g = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)  # OpenCV takes strided crops as they are
    elif pixels.shape[2] == 4:
        g = cv2.cvtColor(pixels, cv2.COLOR_RGBA2GRAY)
    else:
        raise ValueError(f"cannot make grey from pixels of shape {pixels.shape}")
    if g.dtype != np.uint8:
        g = np.clip(g, 0, 255).astype(np.uint8)
    return g


# -- scan-region detection ------------------------------------------------------


def _speckle_mask(grey: np.ndarray) -> np.ndarray:
    """Pixels inside a densely textured, filled area: speckle, not text or flat UI.

    Text and graphics are strokes on a flat background: within a text line
    many pixels are background. An ultrasound image has texture nearly
    everywhere and few pixels at the background level. Both densities are
    taken over a window a few percent of the frame wide.
    """
    g = grey.astype(np.float32)
    m = cv2.blur(g, (3, 3))
    std = np.sqrt(np.maximum(cv2.blur(g * g, (3, 3)) - m * m, 0))
    # Noise floor: digital captures have exactly flat backgrounds (0), an
    # analogue capture card adds noise everywhere; speckle stands above it.
    floor = float(np.percentile(std, 20))
    bg = float(np.percentile(g, 20))
    textured = (std > 1.0 + 3 * floor).astype(np.float32)
    filled = (g > bg + 4 + 3 * floor).astype(np.float32)
    k = max(5, int(round(min(grey.shape) * 0.04)) | 1)
    return ((cv2.blur(textured, (k, k)) > 0.6) & (cv2.blur(filled, (k, k)) > 0.75)).astype(np.uint8)


def _temporal_mask(greys: list[np.ndarray]) -> np.ndarray | None:
    """Pixels that change over the warm-up frames (the live image, not static UI)."""
    if len(greys) < 3:
        return None
    stack = np.stack(greys).astype(np.float32)
    std = stack.std(axis=0)
    # Digital sources repeat static UI bit-exactly (std 0) while even the
    # darkest live speckle flickers a little; add margin for capture noise.
    floor = float(np.percentile(std, 20))
    moving = (std > 0.3 + 3 * floor).astype(np.uint8)
    # Too little change (a frozen image, a still phantom): no temporal evidence.
    return moving if moving.mean() > 0.02 else None


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[best, cv2.CC_STAT_AREA] < 0.01 * mask.size:
        return None
    return (labels == best).astype(np.uint8)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    flood[1:-1, 1:-1] = mask
    cv2.floodFill(flood, None, (0, 0), 2)
    return (flood[1:-1, 1:-1] != 2).astype(np.uint8)


def _classify(mask: np.ndarray) -> str | None:
    """linear / curvilinear / phased from the filled shape (box-sized 0/1 mask).

    Looks at the top edge t(x) (first row of the shape in each column):
    linear: flat top over the full width; phased: the top narrows to a
    near-point apex in the middle; curvilinear: the probe face is an arc
    whose middle lies lower than its ends (t is W-shaped across the box).
    """
    h, w = mask.shape
    if h < 8 or w < 8:
        return None
    present = mask.any(axis=0)
    t = np.where(present, np.argmax(mask > 0, axis=0), h).astype(np.float32)
    t = cv2.medianBlur(t.reshape(1, -1), 5).ravel() if w >= 5 else t
    # Centre of the shape (the probe's axis), not of the box: UI bits can
    # stretch the box on one side.
    xc = int(round(float(np.average(np.arange(w), weights=mask.sum(axis=0)))))
    band = max(1, w // 20)
    t_c = float(np.median(t[max(0, xc - band) : xc + band + 1]))
    off = max(1, w // 10)
    t_left = float(t[: max(1, xc - off)].min())
    t_right = float(t[min(w - 1, xc + off) :].min())
    widths = mask.sum(axis=1)
    near_top = float(widths[: max(1, h // 10)].mean()) / float(widths.max())
    if mask.mean() > 0.9 and near_top > 0.85:
        return "linear"
    if t_c - max(t_left, t_right) > 0.04 * h:
        return "curvilinear"  # both sides of the top edge lie above its middle
    if near_top < 0.35 and t_c - float(t.min()) < 0.04 * h:
        return "phased"
    return "linear" if mask.mean() > 0.85 else None


def detect_scan_region(frames: list[np.ndarray]) -> ScanRegion:
    """Find the ultrasound image inside screen-captured frames.

    With several frames, temporal variance separates the live image from the
    static vendor UI around it; with one frame (or a frozen image), dense
    speckle texture does. The largest such component, holes filled, is the
    scan area; its bounding box is the region and its convex hull the mask.
    Falls back to the whole frame when nothing fan- or rectangle-like is found.
    """
    if not frames:
        raise ValueError("detect_scan_region needs at least one frame")
    H, W = frames[0].shape[:2]
    s = min(1.0, _DETECT_MAX_SIDE / max(H, W))
    greys = [to_grey(f) for f in frames]
    if s < 1.0:
        greys = [cv2.resize(g, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_AREA) for g in greys]
    mask = _temporal_mask(greys)
    if mask is None:  # one frame, or nothing moves: texture of the mean image
        mean = np.mean(np.stack(greys), axis=0).astype(np.uint8) if len(greys) > 1 else greys[0]
        mask = _speckle_mask(mean)
    # A small closing joins speckle grains; the opening then removes what is
    # narrower than ~3.5 % of the frame (text, lines, tick marks) and cuts
    # the thin bridges to UI drawn right next to the image. Only then is the
    # largest piece chosen and closed, so UI is never merged back in.
    k = max(3, int(round(min(mask.shape) * 0.035)) | 1)
    ell = lambda n: cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (n, n))  # noqa: E731
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, ell(3))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, ell(k))
    comp = _largest_component(mask)
    if comp is None:
        return ScanRegion(box=(0, 0, W, H))
    pad = 2 * k  # room so the closing is not clipped at the frame edge
    comp = cv2.copyMakeBorder(comp, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    comp = cv2.morphologyEx(comp, cv2.MORPH_CLOSE, ell(2 * k + 1))[pad:-pad, pad:-pad]
    comp = _fill_holes(comp)
    x, y, w, h = cv2.boundingRect(comp)
    kind = _classify(comp[y : y + h, x : x + w])

    # Back to full resolution; the convex hull gives a clean fan outline.
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours)).astype(np.float32) / s
    x0, y0 = int(np.floor(x / s)), int(np.floor(y / s))
    x1, y1 = min(W, int(np.ceil((x + w) / s))), min(H, int(np.ceil((y + h) / s)))
    full = np.zeros((y1 - y0, x1 - x0), np.uint8)
    hull -= np.array([x0, y0], np.float32)
    cv2.fillConvexPoly(full, np.round(hull).astype(np.int32), 255)
    return ScanRegion(box=(x0, y0, x1, y1), kind=kind, mask=full)


# -- the per-frame path ------------------------------------------------------------


@dataclass
class _Plan:
    """Everything about a region that does not change from frame to frame."""

    region: ScanRegion  # as given or detected (identity is the cache key)
    used: ScanRegion  # box clipped to the frame; what Prepared.region reports
    mask: np.ndarray | None  # (H, W) uint8 0/255 at output size, None = keep all
    mm_per_px: tuple[float, float] | None


class Preprocessor:
    """frame -> Prepared. Keeps the scan region between frames of one stream.

    Region priority: the frame's own region (DICOM tags, simulator), else one
    detected from the first `warmup_frames` frames (a first guess from frame 1
    so output starts at once), else the whole frame when detect=False.
    Call reset() when the stream changes; a new frame size resets by itself.
    """

    def __init__(self, size=(128, 128), mean=0.0, std=1.0, detect=True, warmup_frames=8):
        self.size = (int(size[0]), int(size[1]))  # (H, W)
        if std == 0:
            raise ValueError("std must not be 0")
        # (img/255 - mean)/std as one multiply-add in float32 ...
        self._scale = np.float32(1.0 / (255.0 * std))
        self._offset = np.float32(-mean / std)
        # ... tabulated for the 256 grey levels: one cv2.LUT per frame gives
        # bit-identical values to `img * scale + offset` (the same float32
        # arithmetic, done once per level) in one pass without temporaries.
        self._lut = np.arange(256, dtype=np.uint8) * self._scale + self._offset
        self.detect = detect
        self.warmup_frames = max(1, int(warmup_frames))
        self.reset()

    def reset(self) -> None:
        self._shape: tuple[int, int] | None = None
        self._detected: ScanRegion | None = None
        self._final = False  # detection done with all warm-up frames
        self._warm: list[np.ndarray] = []
        self._plan: _Plan | None = None

    @property
    def region(self) -> ScanRegion | None:
        """The detected region in use (None before the first frame or when sources give one)."""
        return self._detected

    def _detect(self, pixels: np.ndarray) -> ScanRegion:
        H, W = pixels.shape[:2]
        if not self.detect:
            if self._detected is None:
                self._detected = ScanRegion(box=(0, 0, W, H))
            return self._detected
        if self._final:
            return self._detected
        self._warm.append(to_grey(pixels).copy())  # copy: sources may reuse buffers
        n = len(self._warm)
        # Detect on frame 1 (single-frame texture) and again once all warm-up
        # frames are in (temporal variance); in between keep the first guess.
        if n == 1 or n >= self.warmup_frames:
            self._detected = detect_scan_region(self._warm)
        if n >= self.warmup_frames:
            self._final, self._warm = True, []
        return self._detected

    def _make_plan(self, region: ScanRegion, shape: tuple[int, int]) -> _Plan:
        H, W = shape
        bx0, by0, bx1, by1 = region.box
        x0, y0, x1, y1 = max(0, bx0), max(0, by0), min(W, bx1), min(H, by1)
        if x1 - x0 < 2 or y1 - y0 < 2:  # region outside this frame: use all of it
            x0, y0, x1, y1 = bx0, by0, bx1, by1 = 0, 0, W, H
        fan = region.mask
        if fan is not None and fan.shape[:2] == (by1 - by0, bx1 - bx0):
            fan = fan[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        else:
            fan = None  # missing or not box-sized: keep the whole box
        used = region
        if (x0, y0, x1, y1) != tuple(region.box):
            used = ScanRegion(box=(x0, y0, x1, y1), kind=region.kind, spacing_mm=region.spacing_mm, mask=fan)
        oh, ow = self.size
        mask = None
        if fan is not None:
            m = cv2.resize(np.where(fan > 0, 255, 0).astype(np.uint8), (ow, oh), interpolation=cv2.INTER_AREA)
            mask = np.where(m >= 128, 255, 0).astype(np.uint8)
            if mask.all():
                mask = None  # nothing to blank: skip the per-frame AND
        mm = None
        if region.spacing_mm is not None:
            mm = (region.spacing_mm[0] * (y1 - y0) / oh, region.spacing_mm[1] * (x1 - x0) / ow)
        return _Plan(region=region, used=used, mask=mask, mm_per_px=mm)

    def __call__(self, frame: Frame) -> Prepared:
        px = frame.pixels
        shape = px.shape[:2]
        if shape != self._shape:
            self.reset()
            self._shape = shape
        region = frame.region if frame.region is not None else self._detect(px)
        plan = self._plan
        if plan is None or not (plan.region is region or (plan.region == region and plan.region.mask is region.mask)):
            plan = self._plan = self._make_plan(region, shape)

        return self._transform(px, plan)

    def rehearse(self, frame: Frame) -> None:
        """Run the per-frame work on `frame` again and throw the result away,
        touching no state: a pipeline primes the caches with it before the
        next frame is due. Does nothing before a plan exists."""
        plan = self._plan
        if plan is not None and frame.pixels.shape[:2] == self._shape:
            self._transform(frame.pixels, plan)

    def _transform(self, px: np.ndarray, plan: "_Plan") -> Prepared:
        x0, y0, x1, y1 = plan.used.box
        oh, ow = self.size
        # Grey first: INTER_AREA costs per channel (measured 72 us grey vs
        # 152 us RGB for a 256x193 crop), the conversion only 16 us.
        img = to_grey(px[y0:y1, x0:x1])
        if img.shape[0] != oh or img.shape[1] != ow:
            img = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_AREA)
        if plan.mask is not None:
            img = cv2.bitwise_and(img, plan.mask)
        elif np.shares_memory(img, px):  # never hand out a view of the source's buffer
            img = img.copy()
        if not img.flags.c_contiguous:
            img = np.ascontiguousarray(img)
        tensor = cv2.LUT(img, self._lut).reshape(1, 1, oh, ow)
        return Prepared(tensor=tensor, image=img, region=plan.used, mm_per_px=plan.mm_per_px)
