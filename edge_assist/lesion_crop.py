"""A second look at a lesion, at the source's own resolution.

The interpreter reads the scan region shrunk to 128x128: on a liver view a
pixel is then about 1.6 mm, and lesions under 10 pixels across have margins
at chance and echogenicity barely above it (docs/TRAINING.md). The lesion
head looks again: a square box around the lesion the interpreter's mask
found (CONTEXT times its long axis, centred on it) is cut from the scan
region at the frame's own resolution and resized to CROP_SIZE. Its
echogenicity, margins and lesion mask take the place of the interpreter's:
the lesion is measured on that mask, and its location (the depth third) is
where the mask's centre lies on the image's depth scale.

Boxes are in pixels of the scan-region crop of the source frame (the
region's box, before the preprocessing's resize); pixels outside the region
read as black, as outside the fan.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_assist.preprocess import to_grey
from edge_assist.vocab import LOCATIONS

CROP_SIZE = 64  # the lesion head's input, pixels a side
CONTEXT = 2.5  # box side / the lesion's long axis: the lesion and the tissue around its margins
MIN_SIDE_PX = 24  # smallest box, in source pixels: magnifying further adds no detail


@dataclass(frozen=True)
class CropBox:
    """A square in scan-region pixels: centre (cx, cy) and side length."""

    cx: float
    cy: float
    side: float

    def grid(self) -> tuple[int, int, int]:
        """(x0, y0, side) in whole pixels: what cut() takes."""
        side = max(2, int(round(self.side)))
        return int(round(self.cx - side / 2.0)), int(round(self.cy - side / 2.0)), side


def box_around(cx: float, cy: float, long_axis_px: float, context: float = CONTEXT, min_side: float = MIN_SIDE_PX) -> CropBox:
    return CropBox(float(cx), float(cy), float(max(context * long_axis_px, min_side)))


def box_from_measurement(centre: tuple[float, float], extent: float, region_hw: tuple[int, int], context: float = CONTEXT,
                         min_side: float = MIN_SIDE_PX) -> CropBox:
    """The box around a lesion measured on the interpreter's mask: centre as
    fractions of the mask's width and height, extent (the long axis) as a
    fraction of its height; the mask covers the whole scan region."""
    h, w = region_hw
    return box_around(centre[0] * w, centre[1] * h, extent * h, context, min_side)


def depth_fraction(y_px: float, region_hw: tuple[int, int], fan_mask: np.ndarray | None = None) -> float:
    """How deep a point of the scan region lies: 0 at the skin line, 1 at the
    set depth, measured down the middle of the image as a scanner's depth
    scale is (the fan's first and last rows in its middle column when the fan
    is known, else the region's top and bottom). y_px: region pixels, 0 at
    the top edge of the first row."""
    h, w = region_hw
    top, bottom = 0.0, float(h)
    if fan_mask is not None and fan_mask.shape[:2] == (h, w):
        rows = np.flatnonzero(fan_mask[:, w // 2] > 0)
        if rows.size:
            top, bottom = float(rows[0]), float(rows[-1] + 1)
    return (float(y_px) - top) / max(bottom - top, 1e-6)


def depth_third(fraction: float) -> str:
    """vocab.LOCATIONS: the third of the depth a lesion's centre lies in."""
    return LOCATIONS[0] if fraction < 1 / 3 else (LOCATIONS[1] if fraction < 2 / 3 else LOCATIONS[2])


def cut(region: np.ndarray, box: CropBox, size: int = CROP_SIZE) -> np.ndarray:
    """The box's pixels of the scan region (grey or RGB; zero outside it) as
    grey, resized to size x size uint8."""
    img = np.asarray(region)
    H, W = img.shape[:2]
    x0, y0, side = box.grid()
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(W, x0 + side), min(H, y0 + side)
    canvas = np.zeros((side, side), dtype=np.uint8)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = to_grey(img[sy0:sy1, sx0:sx1])
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(canvas, (size, size), interpolation=interp)
