"""Auto-capture of the best frames, the exam's capture store and the draft
report built from the captured frames' findings.

No Qt here: this is plain Python + numpy + OpenCV so that it can be tested
without a display and moved into the core (edge_assist/report.py) later.

Auto-capture: a frame is a candidate while the (smoothed) quality score is at
or above `threshold`. Once `stable_frames` candidates have come in a row and
the score has stayed within `max_spread` over them, the best of those frames
is captured (a frame with findings beats one without; then the higher raw
quality). One capture per stable view: the trigger re-arms when the quality
drops below `threshold - rearm_drop`, or after `cooldown_frames` more good
frames if the view has changed since the last capture (the operator moved on
to another good view without losing quality).
"""

from __future__ import annotations

import datetime as _dt
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_assist import DISCLAIMER
from edge_assist.frames import InterpreterResult
from edge_assist.lexicon import LOCATION_EN, MARGIN_EN
from edge_assist.record import atomic_write_bytes, atomic_write_text, write_json

# -- helpers ------------------------------------------------------------------------


def display_crop(result) -> np.ndarray:
    """The scan-region part of a result's frame (a view, no copy).

    Uses the region the preprocessor worked on (the source's, or the one it
    detected in a screen capture), else the source's region, else the frame.
    """
    px = result.frame.pixels
    region = None
    prepared = getattr(result, "prepared", None)
    if prepared is not None:
        region = prepared.region
    if region is None:
        region = result.frame.region
    if region is None:
        return px
    h, w = px.shape[:2]
    x0, y0, x1, y1 = region.box
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(w, int(x1)), min(h, int(y1))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return px
    return px[y0:y1, x0:x1]


def _thumb(pixels: np.ndarray, size: int = 32) -> np.ndarray:
    grey = pixels
    if grey.ndim == 3:
        grey = cv2.cvtColor(np.ascontiguousarray(grey[:, :, :3]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)


def write_png(path: Path, pixels: np.ndarray) -> None:
    """Write an RGB or grey uint8 image as PNG, atomically."""
    img = pixels
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"cannot encode {path.name} as PNG")
    atomic_write_bytes(path, buf.tobytes())


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays and dataclass-ish values -> JSON-friendly values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 64 else f"<array {obj.shape} {obj.dtype}>"
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return jsonable(asdict(obj))
    return str(obj)


# -- auto-capture -------------------------------------------------------------------


@dataclass
class AutoCaptureConfig:
    threshold: float = 0.7  # smoothed quality (0..1) a frame must reach
    stable_frames: int = 15  # consecutive good frames before a capture
    max_spread: float = 0.15  # max - min quality over those frames
    rearm_drop: float = 0.05  # hysteresis below the threshold
    cooldown_frames: int = 90  # good frames after a capture before another view may be taken
    view_change: float = 12.0  # mean abs difference (grey levels, 32x32) that counts as a new view


class AutoCapture:
    """Feed every FrameResult; `feed` returns the result to capture, or None."""

    def __init__(self, config: AutoCaptureConfig | None = None):
        self.cfg = config or AutoCaptureConfig()
        self.enabled = True
        self.reset()

    def reset(self) -> None:
        self._run: deque = deque()
        self._armed = True
        self._since_capture = 0
        self._last_thumb: np.ndarray | None = None

    @staticmethod
    def _rank(r) -> tuple:
        interp = r.hints.interpreter
        has_finding = interp is not None and not interp.abstained
        return (has_finding, float(r.raw_quality.score), float(r.hints.quality.score))

    def feed(self, r) -> Any | None:
        if not self.enabled or getattr(r, "hints", None) is None:
            return None
        cfg = self.cfg
        score = float(r.hints.quality.score)
        if score < cfg.threshold:
            self._run.clear()
            if score < cfg.threshold - cfg.rearm_drop:
                self._armed = True
            return None
        self._run.append(r)
        while len(self._run) > cfg.stable_frames:
            self._run.popleft()
        self._since_capture += 1
        if not self._armed and self._since_capture >= cfg.cooldown_frames and self._last_thumb is not None:
            if float(np.mean(np.abs(_thumb(display_crop(r)) - self._last_thumb))) >= cfg.view_change:
                self._armed = True
        if not self._armed or len(self._run) < cfg.stable_frames:
            return None
        scores = [float(x.hints.quality.score) for x in self._run]
        if max(scores) - min(scores) > cfg.max_spread:
            return None
        best = max(self._run, key=self._rank)
        self._armed = False
        self._since_capture = 0
        self._last_thumb = _thumb(display_crop(best))
        self._run.clear()
        return best


# -- captures and the exam ------------------------------------------------------------


@dataclass
class Capture:
    number: int
    frame_index: int
    pixels: np.ndarray  # the scan-region crop, an owned copy
    quality: float  # smoothed score 0..1 (what the meter showed)
    raw_quality: float
    quality_text: str
    reasons: list[str]
    action: str
    guidance_text: str
    interpreter: InterpreterResult | None
    finding_age: int | None  # frames between the findings' frame and this one
    source: str
    auto: bool
    truth: Any = None  # simulator ground truth, when the source has it
    spacing_mm: tuple[float, float] | None = None
    image_path: Path | None = None
    json_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def has_finding(self) -> bool:
        return self.interpreter is not None and not self.interpreter.abstained

    @property
    def finding_text(self) -> str:
        if self.interpreter is None:
            return "No interpretation yet."
        return self.interpreter.text

    def record(self) -> dict:
        interp = self.interpreter
        return jsonable(
            {
                "number": self.number,
                "frame": self.frame_index,
                "auto": self.auto,
                "source": self.source,
                "image": self.image_path.name if self.image_path else None,
                "quality": {"score": round(self.quality, 4), "raw": round(self.raw_quality, 4), "text": self.quality_text, "reasons": self.reasons},
                "guidance": {"action": self.action, "text": self.guidance_text},
                "interpreter": interp.to_dict() if interp is not None else None,
                "finding_age_frames": self.finding_age,
                "spacing_mm": self.spacing_mm,
                "truth": self.truth,
                **self.extra,
            }
        )


def capture_from_result(r, number: int, *, source: str, auto: bool) -> Capture:
    h = r.hints
    interp = h.interpreter
    crop = np.ascontiguousarray(display_crop(r)).copy()
    spacing = None
    prepared = getattr(r, "prepared", None)
    region = prepared.region if prepared is not None else r.frame.region
    if region is not None and region.spacing_mm is not None:
        spacing = tuple(float(v) for v in region.spacing_mm)
    return Capture(
        number=number,
        frame_index=int(r.frame.index),
        pixels=crop,
        quality=float(h.quality.score),
        raw_quality=float(r.raw_quality.score),
        quality_text=h.quality_text,
        reasons=list(h.quality.reasons),
        action=h.guidance.action,
        guidance_text=h.guidance_text,
        interpreter=interp,
        finding_age=(int(r.frame.index) - int(interp.frame_index)) if interp is not None else None,
        source=source,
        auto=auto,
        truth=r.frame.meta.get("truth"),
        spacing_mm=spacing,
    )


def new_exam_dir(root: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"exam-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"exam-{stamp}-{n}"
    return path


class Exam:
    """The captures of one exam, written to disk as they are taken:
    captures/cap_NNN.png (the scan region as displayed) + cap_NNN.json."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.captures: list[Capture] = []
        self.started = _dt.datetime.now().astimezone()
        self.recordings = 0

    @property
    def captures_dir(self) -> Path:
        return self.folder / "captures"

    def next_recording_dir(self) -> Path:
        self.recordings += 1
        return self.folder / f"recording-{self.recordings:02d}"

    def add(self, r, *, source: str, auto: bool) -> Capture:
        cap = capture_from_result(r, len(self.captures) + 1, source=source, auto=auto)
        stem = f"cap_{cap.number:03d}"
        cap.image_path = self.captures_dir / f"{stem}.png"
        cap.json_path = self.captures_dir / f"{stem}.json"
        write_png(cap.image_path, cap.pixels)
        write_json(cap.json_path, cap.record())
        self.captures.append(cap)
        return cap


# -- the draft report ---------------------------------------------------------------


def _lesion_description(c: Capture) -> str | None:
    f = c.interpreter.findings if c.interpreter is not None else None
    if f is None or not f.lesion_present:
        return None
    parts = []
    if f.size_mm is not None:  # a size regressed from the whole frame is only an estimate: say so
        parts.append(f"{f.size_mm:.0f} mm" if f.size_measured else f"about {f.size_mm:.0f} mm (estimated)")
    if f.echogenicity:
        parts.append(f.echogenicity)
    text = " ".join(parts + ["lesion"])
    if f.margins:
        text += f" with {MARGIN_EN.get(f.margins, f.margins)}"
    if f.location:
        text += f" in the {LOCATION_EN.get(f.location, f.location)}"
    return text[0].upper() + text[1:]


def _lesion_lines(captures: list[Capture]) -> list[str]:
    """One line per distinct lesion description, with the images that show it
    (the same lesion is usually captured more than once)."""
    groups: dict[str, list[Capture]] = {}
    for c in captures:
        d = _lesion_description(c)
        if d is not None:
            groups.setdefault(d, []).append(c)
    lines = []
    for d, cs in sorted(groups.items(), key=lambda kv: -max(c.interpreter.findings.confidence for c in kv[1])):
        nums = ", ".join(str(c.number) for c in cs)
        best = max(c.interpreter.findings.confidence for c in cs)
        lines.append(f"{d} (image{'s' if len(cs) > 1 else ''} {nums}; confidence up to {best:.0%})")
    return lines


def build_report(captures: list[Capture], *, source: str, exam: dict | None = None) -> dict:
    """The draft report as a JSON-friendly dict, built ONLY from the captured
    frames' structured findings and their template sentences."""
    with_findings = [c for c in captures if c.has_finding]
    structures: list[str] = []
    for c in with_findings:
        for s in c.interpreter.findings.structures if c.interpreter.findings else []:
            if s not in structures:
                structures.append(s)
    lesions = _lesion_lines(with_findings)
    if not captures:
        impression = "No images were captured; no draft findings."
    elif not with_findings:
        impression = "No captured image was of sufficient quality for interpretation."
    else:
        seen = []
        for c in sorted(with_findings, key=lambda c: -(c.interpreter.findings.confidence if c.interpreter.findings else 0)):
            if c.interpreter.text not in seen:
                seen.append(c.interpreter.text)
        impression = " ".join(seen[:3])
    images = []
    for c in captures:
        rec = c.record()
        images.append(
            {
                "number": c.number,
                "frame": c.frame_index,
                "image": f"image_{c.number:02d}.png",
                "capture": c.image_path.name if c.image_path else None,
                "auto": c.auto,
                "quality": rec["quality"],
                "finding": c.finding_text,
                "abstained": c.interpreter.abstained if c.interpreter is not None else True,
                "finding_age_frames": c.finding_age,
                "confidence": round(c.interpreter.findings.confidence, 4) if c.has_finding and c.interpreter.findings else None,
                "findings": rec["interpreter"]["findings"] if rec["interpreter"] else None,
                "truth": rec["truth"],
            }
        )
    return {
        "title": "Draft ultrasound report (machine-generated)",
        "disclaimer": DISCLAIMER,
        "status": "draft – to be reviewed by a qualified clinician",
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "source": source,
        "exam": jsonable(exam or {}),
        "summary": {
            "images": len(captures),
            "images_with_findings": len(with_findings),
            "images_abstained": len(captures) - len(with_findings),
            "structures_seen": structures,
            "lesions": lesions,
            "impression": impression,
        },
        "images": images,
    }


def report_text(report: dict) -> str:
    s = report["summary"]
    lines = [
        report["title"].upper(),
        "=" * len(report["title"]),
        f"Status:  {report['status']}",
        f"Created: {report['created']}",
        f"Source:  {report['source']}",
        "",
        "IMPRESSION (draft)",
        f"  {s['impression']}",
        "",
        f"Images: {s['images']} captured, {s['images_with_findings']} with findings, {s['images_abstained']} abstained",
        "Structures seen: " + (", ".join(s["structures_seen"]) if s["structures_seen"] else "none named"),
        "Lesions: " + ("" if s["lesions"] else "none reported"),
    ]
    lines += [f"  - {line}" for line in s["lesions"]]
    lines += ["", "IMAGES"]
    for im in report["images"]:
        age = im["finding_age_frames"]
        age_txt = "" if not age else f", findings {age} frame{'s' if age != 1 else ''} older"
        lines.append(
            f"  {im['number']:2d}. {im['image']}  frame {im['frame']}, quality {im['quality']['score'] * 100:.0f}"
            f" ({'auto' if im['auto'] else 'manual'}{age_txt})"
        )
        lines.append(f"      {im['finding']}")
    lines += ["", report["disclaimer"], ""]
    return "\n".join(lines)


def save_report(report: dict, captures: list[Capture], folder: Path, *, sheet_png: bytes | None = None) -> dict[str, Path]:
    """report.json, report.txt, image_NN.png (and report.png, a rendered
    sheet, when given), written atomically into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for c in captures:
        p = folder / f"image_{c.number:02d}.png"
        write_png(p, c.pixels)
        paths[p.name] = p
    if sheet_png is not None:
        atomic_write_bytes(folder / "report.png", sheet_png)
        paths["report.png"] = folder / "report.png"
    write_json(folder / "report.json", report)
    atomic_write_text(folder / "report.txt", report_text(report))
    paths["report.json"] = folder / "report.json"
    paths["report.txt"] = folder / "report.txt"
    return paths
