"""Headless outputs: hints.jsonl, annotated.mp4, summary.json.

Lines are flushed as they are written and summary.json is replaced
atomically, so a crash or a kill loses at most the frame in flight.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_assist.errors import EdgeAssistError
from edge_assist.lesion_measure import fresh_outline
from edge_assist.pipeline import FrameResult


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; outputs and manifests are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def result_record(r: FrameResult) -> dict[str, Any]:
    """One hints.jsonl line."""
    h = r.hints
    interp = h.interpreter.to_dict() if h.interpreter is not None else None
    return {
        "frame": r.frame.index,
        "t_capture_ns": r.frame.t_capture_ns,
        "e2e_ms": round(r.e2e_ms, 3),
        "stages_ms": {k: round(v, 3) for k, v in r.stages_ms.items()},
        "quality": {"score": round(h.quality.score, 4), "reasons": h.quality.reasons, "text": h.quality_text},
        "guidance": {"action": h.guidance.action, "confidence": round(h.guidance.confidence, 4), "text": h.guidance_text},
        "raw": {
            "quality": round(r.raw_quality.score, 4),
            "reasons": r.raw_quality.reasons,
            "action": r.raw_guidance.action,
            "confidence": round(r.raw_guidance.confidence, 4),
        },
        "interpreter": interp,
        "missed_budget": r.missed_budget,
        # how the frame was run: quality and guidance at the same time; the caches primed before it came
        "heads_parallel": r.heads_parallel,
        "primed": r.primed,
    }


class JsonlSink:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = open(path, "w", encoding="utf-8", buffering=1)  # line-buffered
        self.lines = 0

    def write(self, r: FrameResult) -> None:
        self._f.write(json.dumps(result_record(r), ensure_ascii=False) + "\n")
        self.lines += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _quality_colour(score: float) -> tuple[int, int, int]:
    # BGR: red < 0.4 <= amber < 0.7 <= green
    return (0, 0, 220) if score < 0.4 else (0, 190, 255) if score < 0.7 else (0, 200, 0)


def draw_hints(image_rgb: np.ndarray, r: FrameResult) -> np.ndarray:
    """The frame with quality bar, guidance text and findings drawn (BGR out)."""
    img = image_rgb if image_rgb.ndim == 3 else cv2.cvtColor(image_rgb, cv2.COLOR_GRAY2RGB)
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    h, w = bgr.shape[:2]
    scale = max(0.35, min(w, h) / 700)
    th = max(1, int(round(scale * 2)))
    hints = r.hints
    q = hints.quality.score
    bar_w = int((w - 20) * q)
    cv2.rectangle(bgr, (10, 8), (w - 10, 20), (60, 60, 60), -1)
    cv2.rectangle(bgr, (10, 8), (10 + bar_w, 20), _quality_colour(q), -1)
    lines = [
        f"Quality {q * 100:3.0f}  {hints.quality_text}",
        f"{hints.guidance_text} ({hints.guidance.confidence:.0%})",
    ]
    if hints.interpreter is not None:
        age = r.frame.index - hints.interpreter.frame_index
        lines.append(hints.interpreter.text + (f" [{age} fr old]" if age else ""))
    lines.append(f"{r.e2e_ms:5.1f} ms" + ("  MISS" if r.missed_budget else ""))
    outline = fresh_outline(r)
    if outline is not None:  # what the size was measured on
        cv2.polylines(bgr, [np.round(outline).astype(np.int32)], True, (0, 230, 255), th, cv2.LINE_AA)
    y = 20 + int(22 * scale * 1.6)
    for text in lines:
        cv2.putText(bgr, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), th + 2, cv2.LINE_AA)
        cv2.putText(bgr, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), th, cv2.LINE_AA)
        y += int(22 * scale * 1.6)
    return bgr


class AnnotatedVideoSink:
    """annotated.mp4 (mp4v: OpenCV's pip wheels cannot write H.264)."""

    def __init__(self, path: Path, fps: float):
        self.path = path
        self.fps = fps if fps and fps > 0 else 30.0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, r: FrameResult) -> None:
        bgr = draw_hints(r.frame.pixels, r)
        h, w = bgr.shape[:2]
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._size = (w - w % 2, h - h % 2)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise EdgeAssistError(f"cannot write video {self.path}; check the folder is writable")
        if (w, h) != self._size:
            bgr = cv2.resize(bgr, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(bgr)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
