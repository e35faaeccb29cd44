"""Measuring a lesion on the interpreter's lesion mask, as a sonographer
places calipers: along the long axis of the lesion.

The interpreter outputs a probability mask of the reported lesion at a
fraction of the input resolution. The largest connected region above the
threshold is taken as the lesion (a stray pixel elsewhere does not widen
it); its long axis is 4 standard deviations of the probability-weighted
pixels along the principal direction (exact for a filled ellipse), plus one
cell for the pixel footprint. The result is a fraction of the image height,
like the interpreter's regressed size, so the caller turns it into mm with
the frame's row spacing — never without one. The region's outline comes
with it, so a display can show what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MASK_THRESHOLD = 0.5
MIN_CELLS = 2  # fewer cells than this: no measurement (the regressed size is used)
OUTLINE_POINTS = 32  # at most, after simplification


@dataclass(frozen=True)
class LesionMeasurement:
    extent: float  # long axis, as a fraction of the mask's height
    outline: tuple[tuple[float, float], ...]  # closed polygon, (x, y) as fractions of the mask's width and height
    centre: tuple[float, float] = (0.5, 0.5)  # probability-weighted centre, (x, y) as fractions of width and height


def measure_on_mask(mask: np.ndarray, threshold: float = MASK_THRESHOLD, min_cells: int = MIN_CELLS,
                    with_outline: bool = True) -> LesionMeasurement | None:
    """The largest region of `mask` (probabilities, any leading singleton
    axes, square cells), or None when no region of at least min_cells cells
    reaches the threshold. with_outline=False skips tracing the outline."""
    p = np.asarray(mask, dtype=np.float32)
    p = p.reshape(p.shape[-2], p.shape[-1])
    n, labels, stats, _ = cv2.connectedComponentsWithStats((p >= threshold).astype(np.uint8), connectivity=8)
    if n <= 1:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[k, cv2.CC_STAT_AREA] < min_cells:
        return None
    region = labels == k
    h, width = float(p.shape[0]), float(p.shape[1])
    # Probability-weighted centre and covariance from the image moments (one C
    # call; pixel centres are at index + 0.5), in units of the mask's height.
    mo = cv2.moments(np.where(region, p, np.float32(0.0)), binaryImage=False)
    m00 = mo["m00"]
    cxx, cyy, cxy = mo["mu20"] / m00, mo["mu02"] / m00, mo["mu11"] / m00
    largest = (cxx + cyy) / 2.0 + np.sqrt(((cxx - cyy) / 2.0) ** 2 + cxy**2)  # of the 2x2 covariance
    extent = 4.0 * float(np.sqrt(max(largest, 0.0))) / h + 1.0 / h
    centre = ((mo["m10"] / m00 + 0.5) / width, (mo["m01"] / m00 + 0.5) / h)
    if not with_outline:
        return LesionMeasurement(extent, (), centre)
    # Outline on a 4x finer grid so that a region of a few cells is not a
    # square; only around the region (one empty cell of margin: bilinear
    # upsampling reaches one cell), which gives the same contour as the whole mask.
    x0, y0 = max(0, stats[k, cv2.CC_STAT_LEFT] - 1), max(0, stats[k, cv2.CC_STAT_TOP] - 1)
    x1 = min(p.shape[1], stats[k, cv2.CC_STAT_LEFT] + stats[k, cv2.CC_STAT_WIDTH] + 1)
    y1 = min(p.shape[0], stats[k, cv2.CC_STAT_TOP] + stats[k, cv2.CC_STAT_HEIGHT] + 1)
    fine = cv2.resize(region[y0:y1, x0:x1].astype(np.uint8) * 255, None, fx=4, fy=4, interpolation=cv2.INTER_LINEAR)
    contours, _ = cv2.findContours((fine >= 128).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                   offset=(4 * int(x0), 4 * int(y0)))
    outline: tuple[tuple[float, float], ...] = ()
    if contours:
        c = max(contours, key=cv2.contourArea)
        eps = 0.5
        while len(c) > OUTLINE_POINTS:
            c = cv2.approxPolyDP(c, eps, True)
            eps *= 1.5
        outline = tuple((round(float((x + 0.5) / (4 * width)), 4), round(float((y + 0.5) / (4 * h)), 4)) for x, y in c.reshape(-1, 2))
    return LesionMeasurement(extent, outline, centre)


def lesion_extent(mask: np.ndarray, threshold: float = MASK_THRESHOLD, min_cells: int = MIN_CELLS) -> float | None:
    """Long-axis length of the largest region as a fraction of the mask's height, or None."""
    m = measure_on_mask(mask, threshold, min_cells)
    return None if m is None else m.extent


def lesion_size_frac(regressed: float, mask: np.ndarray | None = None) -> tuple[float, LesionMeasurement | None]:
    """(the lesion's size as a fraction of the image height, the measurement
    or None): measured on the mask when the model has one and it shows a
    region, else the regressed value (an estimate)."""
    if mask is not None:
        m = measure_on_mask(mask)
        if m is not None:
            return m.extent, m
    return float(regressed), None


MAX_OUTLINE_AGE = 2  # frames: an older finding's outline may no longer lie on the lesion while the probe moves


def fresh_outline_fractions(result) -> list | None:
    """The measured lesion's outline of a pipeline result, in fractions of its
    scan-region crop, when the finding is at most MAX_OUTLINE_AGE frames old."""
    interp = result.hints.interpreter if getattr(result, "hints", None) is not None else None
    f = interp.findings if interp is not None and not interp.abstained else None
    if f is None or not f.lesion_outline or result.frame.index - interp.frame_index > MAX_OUTLINE_AGE:
        return None
    return f.lesion_outline


def fresh_outline(result) -> np.ndarray | None:
    """The same in the result's frame pixels (needs the preprocessed region)."""
    outline = fresh_outline_fractions(result)
    prepared = getattr(result, "prepared", None)
    if outline is None or prepared is None:
        return None
    # fractions of the interpreter's input = of the scan-region crop (x0, y0, x1, y1)
    x0, y0, x1, y1 = prepared.region.box
    pts = np.asarray(outline, dtype=np.float64).reshape(-1, 2)
    return np.stack([x0 + pts[:, 0] * (x1 - x0), y0 + pts[:, 1] * (y1 - y0)], axis=1)
