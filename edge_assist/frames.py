"""Plain data that flows through the pipeline: frames, head results, hints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Probe geometries a source may know about.
PROBE_KINDS = ("linear", "curvilinear", "phased")


@dataclass(frozen=True)
class ScanRegion:
    """Where the ultrasound image lies inside a (screen-captured) frame.

    `box` is (x0, y0, x1, y1) in pixels, x1/y1 exclusive. `kind` is the probe
    geometry when known ("linear", "curvilinear", "phased") else None.
    `spacing_mm` is (row, col) millimetres per pixel when known.
    `mask` optionally marks the fan inside the box (uint8, box-sized, 0/255).
    """

    box: tuple[int, int, int, int]
    kind: str | None = None
    spacing_mm: tuple[float, float] | None = None
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


@dataclass
class Frame:
    """One image from a source.

    pixels: HxW uint8 (grey) or HxWx3 uint8 (RGB order).
    t_capture_ns: time.monotonic_ns() when the frame was captured/received.
    region: the scan region if the source knows it (DICOM regions, simulator).
    meta: source-specific extras (simulator ground truth, DICOM tags, ...).
    """

    pixels: np.ndarray
    index: int
    t_capture_ns: int
    region: ScanRegion | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        return self.region.spacing_mm if self.region is not None else None


@dataclass
class QualityResult:
    score: float  # 0..1, higher is more diagnostic
    reasons: list[str]  # active reason flags, most probable first
    reason_probs: dict[str, float] = field(default_factory=dict)


@dataclass
class GuidanceResult:
    action: str  # one of sim.actions.ACTIONS
    confidence: float  # softmax probability of `action`
    probs: dict[str, float] = field(default_factory=dict)


@dataclass
class Finding:
    """Structured findings for one frame, from the interpreter."""

    structures: list[str]
    lesion_present: bool
    lesion_prob: float
    size_mm: float | None
    echogenicity: str | None
    margins: str | None
    location: str | None
    confidence: float  # calibrated probability that the findings are right
    # size_mm measured on the lesion mask (True) or regressed from the whole frame (an estimate)
    size_measured: bool = False
    # What was measured: a closed polygon of [x, y] fractions of the interpreter's input image
    # (the scan-region crop of the frame the finding is from); None when not measured.
    lesion_outline: list[list[float]] | None = None
    # Echogenicity and margins (and the size, when measured there) come from the lesion
    # head's second look at the source's own resolution (edge_assist.lesion_crop).
    second_look: bool = False


@dataclass
class InterpreterResult:
    frame_index: int  # the frame it was computed from (may lag the current one)
    abstained: bool
    text: str  # draft sentence, or the abstention message
    findings: Finding | None
    text_zh: str | None = None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class Hints:
    """What the operator sees for one frame, after temporal smoothing."""

    frame_index: int
    t_capture_ns: int
    quality: QualityResult
    guidance: GuidanceResult
    interpreter: InterpreterResult | None
    quality_text: str = ""
    guidance_text: str = ""
