"""Video files (mp4/avi/mov/mkv/...) through OpenCV's FFmpeg backend.

Pacing: a paced file releases frame i no earlier than t0 + i/fps and returns
frames strictly in order. A reader that comes late gets the next frame at
once (catching up); nothing is skipped here, because the pipeline's capture
thread reads continuously and its latest-frame slot is where drops happen and
are counted. `every_frame=True` turns pacing off for offline work.

The end of the stream is where decoding stops, not CAP_PROP_FRAME_COUNT
(which is read from the container and may be wrong, e.g. for a truncated
AVI). A truncated AVI delivers the frames before the damage and then ends; a
truncated MP4/MOV usually cannot be opened at all (its index, the moov atom,
is written last) and is reported as damaged.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

# FFmpeg prints its own multi-line complaints about damaged files to stderr;
# we report one clear line instead. Set OPENCV_FFMPEG_LOGLEVEL=24 to see them.
# (Read by OpenCV when it first uses FFmpeg, so setting it here is in time.)
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from edge_assist.errors import EndOfStream, SourceError  # noqa: E402
from edge_assist.frames import Frame  # noqa: E402
from edge_assist.sources.base import FrameSource, Pacer  # noqa: E402

VIDEO_EXTS = (".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEFAULT_FPS = 30.0


def path_from_rest(rest: str) -> Path:
    """'clip.mp4' or '///abs/clip.mp4' (from file:///abs/clip.mp4) -> Path."""
    if rest.startswith("//"):
        rest = rest[2:]
    return Path(rest).expanduser()


class VideoSource(FrameSource):
    is_live = False

    def __init__(self, path: Path, *, uri: str, every_frame: bool = False, fps: float | None = None):
        self.uri = uri
        self.path = path
        self.every_frame = every_frame
        self.frames_read = 0
        self._cap = _open_capture(path)
        file_fps = self._cap.get(cv2.CAP_PROP_FPS)
        if fps is None:
            # Some containers report 0, NaN or absurd rates (e.g. 90000 timebase).
            fps = file_fps if math.isfinite(file_fps) and 0 < file_fps <= 1000 else DEFAULT_FPS
        self.nominal_fps = float(fps)
        n = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self._frame_count = int(n) if math.isfinite(n) and n > 0 else None
        self._pacer = None if every_frame else Pacer(self.nominal_fps)
        # Decode the first frame now so a file that opens but cannot be decoded
        # fails at open with a clear message, not at the first read.
        self._pending = self._decode()
        if self._pending is None:
            self._cap.release()
            raise SourceError(
                f"video {path} opened but has no decodable frames (damaged or unsupported codec); "
                f"re-encode it, e.g. ffmpeg -i {path} -c:v libx264 fixed.mp4"
            )
        self._ended = False

    @property
    def frame_count(self) -> int | None:
        """Frame count from the container header: may be approximate."""
        return self._frame_count

    def _decode(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        if bgr.ndim == 2:
            return bgr
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self._cap is None:
            raise EndOfStream(f"{self.uri} is closed")
        if self._pending is None:
            self._pending = None if self._ended else self._decode()
            if self._pending is None:
                self._ended = True
                raise EndOfStream(f"{self.uri}: end after {self.frames_read} frames")
        index = self.frames_read
        if self._pacer is not None and not self._pacer.wait_for(index, timeout_s):
            return None  # not due yet; keep the decoded frame for the next call
        pixels, self._pending = self._pending, None
        self.frames_read += 1
        return Frame(
            pixels=pixels,
            index=index,
            t_capture_ns=time.monotonic_ns(),
            meta={"source": "file", "t_file_s": index / self.nominal_fps},
        )

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None


def _open_capture(path: Path) -> "cv2.VideoCapture":
    if not path.exists():
        raise SourceError(f"video file not found: {path} (from {Path.cwd()}); check the path")
    if path.is_dir():
        raise SourceError(f"{path} is a folder, not a video; use folder:{path} for an image sequence")
    ext = path.suffix.lower()
    if ext == ".dcm":
        raise SourceError(f"{path} is DICOM; open it with dicom:{path}")
    if ext in IMAGE_EXTS:
        raise SourceError(f"{path} is a single image; put images in a folder and use folder:DIR")
    if ext not in VIDEO_EXTS:
        raise SourceError(
            f"unsupported video type {ext or '(no extension)'!r} for {path}; use "
            + "/".join(e[1:] for e in VIDEO_EXTS)
            + f" (convert with ffmpeg -i {path} out.mp4)"
        )
    if path.stat().st_size == 0:
        raise SourceError(f"video file {path} is empty (0 bytes); copy or export it again")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise SourceError(
            f"cannot open video {path}: damaged, truncated (an mp4/mov cut short loses its index) "
            f"or not a video; check the file, or re-encode it with ffmpeg -i {path} -c:v libx264 fixed.mp4"
        )
    return cap


def open_video(rest: str, *, uri: str, every_frame: bool = False, fps: float | None = None, **options) -> VideoSource:
    """file:PATH. `fps` overrides the container's rate (pacing only)."""
    if options:
        raise SourceError(f"unknown option(s) {', '.join(sorted(options))} for {uri}; file: accepts fps")
    return VideoSource(path_from_rest(rest), uri=uri, every_frame=every_frame, fps=parse_fps(fps, uri))


def parse_fps(value, uri: str) -> float | None:
    """None stays None; anything else must be a positive number."""
    if value is None:
        return None
    try:
        fps = float(value)
    except (TypeError, ValueError):
        fps = -1.0
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        raise SourceError(f"bad fps {value!r} in {uri}; give a number of frames per second, e.g. fps=30")
    return fps


def as_uint8(a: np.ndarray) -> np.ndarray:
    """Pixels of any numeric type -> uint8, by a fixed rule per dtype (never
    per-frame min/max, which would make the brightness flicker):
    integers wider than 8 bits are scaled by their type's maximum (negatives
    clip to 0); floats are taken as 0..1 when they fit, else as 0..255."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float32, copy=False))
        if a.size and float(a.max()) <= 1.0:
            a = a * 255.0
        return np.clip(a + 0.5, 0, 255).astype(np.uint8)
    if a.dtype.kind in "iub":
        if a.dtype.itemsize == 1:  # int8/bool
            return np.clip(a, 0, 255).astype(np.uint8)
        top = float(np.iinfo(a.dtype).max)
        return (np.clip(a, 0, None).astype(np.float32) * (255.0 / top) + 0.5).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {a.dtype}")


def to_rgb_or_grey(pixels: np.ndarray, *, bgr: bool) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 of any numeric type -> HxW or HxWx3 uint8
    (RGB order). `bgr` says the colour channels come in OpenCV's order."""
    a = as_uint8(pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return np.ascontiguousarray(a)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"unsupported image shape {pixels.shape}")
    if a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(a, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(a)
