"""Measuring a lesion on the interpreter's lesion mask, as a sonographer
places calipers: along the long axis of the lesion.

The interpreter outputs a probability mask of the reported lesion at a
fraction of the input resolution. The largest connected region above the
threshold is taken as the lesion (a stray pixel elsewhere does not widen
it); its long axis is 4 standard deviations of the probability-weighted
pixels along the principal direction (exact for a filled ellipse), plus one
cell for the pixel footprint. The result is a fraction of the image height,
like the interpreter's regressed size, so the caller turns it into mm with
the frame's row spacing — never without one.
"""

from __future__ import annotations

import cv2
import numpy as np

MASK_THRESHOLD = 0.5
MIN_CELLS = 2  # fewer cells than this: no measurement (the regressed size is used)


def lesion_extent(mask: np.ndarray, threshold: float = MASK_THRESHOLD, min_cells: int = MIN_CELLS) -> float | None:
    """Long-axis length of the largest region of `mask` (probabilities, any
    leading singleton axes, square cells) as a fraction of its height, or
    None when no region of at least min_cells cells reaches the threshold."""
    p = np.asarray(mask, dtype=np.float32)
    p = p.reshape(p.shape[-2], p.shape[-1])
    n, labels, stats, _ = cv2.connectedComponentsWithStats((p >= threshold).astype(np.uint8), connectivity=8)
    if n <= 1:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[k, cv2.CC_STAT_AREA] < min_cells:
        return None
    ys, xs = np.nonzero(labels == k)
    w = p[ys, xs].astype(np.float64)
    h = float(p.shape[0])
    pts = np.stack([(xs + 0.5) / h, (ys + 0.5) / h])
    cov = np.cov(pts, aweights=w, bias=True)
    major = float(np.linalg.eigvalsh(cov)[-1])
    return 4.0 * float(np.sqrt(max(major, 0.0))) + 1.0 / h


def lesion_size_frac(regressed: float, mask: np.ndarray | None = None) -> tuple[float, bool]:
    """(the lesion's size as a fraction of the image height, measured?):
    measured on the mask when the model has one and it shows a region, else
    the regressed value (an estimate)."""
    if mask is not None:
        measured = lesion_extent(mask)
        if measured is not None:
            return measured, True
    return float(regressed), False
