"""An image sequence in a folder: folder:DIR[?fps=N].

Files (PNG/JPEG/BMP/TIFF, case-insensitive) are taken in natural order
(frame2 before frame10). Pacing works as for video files (see video.py):
frames are released in order at fps (default 30); every_frame=True turns
pacing off. Frame.index is the image's position in the sorted list, so an
unreadable image leaves a gap in the indices (like a dropped frame); it is
skipped, counted in `frames_skipped` and named in `skipped_paths`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import parse_qsl

import cv2
import numpy as np

from edge_assist.errors import EndOfStream, SourceError
from edge_assist.frames import Frame
from edge_assist.sources.base import FrameSource, Pacer
from edge_assist.sources.video import DEFAULT_FPS, IMAGE_EXTS, parse_fps, path_from_rest, to_rgb_or_grey


def natural_key(name: str) -> list:
    # re.split with a group alternates text, number, text...: element types
    # line up between names, so ints never get compared with strs.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    return sorted(files, key=lambda p: natural_key(p.name))


def load_image(path: Path) -> np.ndarray | None:
    """HxW or HxWx3 RGB uint8, or None when the file cannot be decoded."""
    try:
        # imdecode(fromfile) instead of imread: works with any path encoding.
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    try:
        return to_rgb_or_grey(img, bgr=True)
    except ValueError:
        return None


class FolderSource(FrameSource):
    is_live = False

    def __init__(self, folder: Path, *, uri: str, fps: float, every_frame: bool = False):
        self.uri = uri
        self.folder = folder
        self.nominal_fps = fps
        self.every_frame = every_frame
        self.paths = list_images(folder)
        if not self.paths:
            raise SourceError(
                f"no images in {folder} (looked for {', '.join(e[1:] for e in IMAGE_EXTS)}); "
                "check the folder, or use file:VIDEO for a video"
            )
        self.frames_read = 0
        self.frames_skipped = 0
        self.skipped_paths: list[Path] = []
        self._next = 0  # position in self.paths of the next file to load
        self._pending: Frame | None = None
        self._pacer = None if every_frame else Pacer(fps)
        self._closed = False

    @property
    def frame_count(self) -> int:
        return len(self.paths)

    def _load_next(self) -> Frame | None:
        while self._next < len(self.paths):
            i, path = self._next, self.paths[self._next]
            self._next += 1
            pixels = load_image(path)
            if pixels is None:
                self.frames_skipped += 1
                self.skipped_paths.append(path)
                continue
            return Frame(pixels=pixels, index=i, t_capture_ns=0, meta={"source": "folder", "path": str(path)})
        return None

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self._closed:
            raise EndOfStream(f"{self.uri} is closed")
        if self._pending is None:
            self._pending = self._load_next()
            if self._pending is None:
                raise EndOfStream(
                    f"{self.uri}: end after {self.frames_read} images ({self.frames_skipped} unreadable)"
                )
        # Paced by position in the folder: a skipped image costs its time slot.
        if self._pacer is not None and not self._pacer.wait_for(self._pending.index, timeout_s):
            return None
        frame, self._pending = self._pending, None
        frame.t_capture_ns = time.monotonic_ns()
        self.frames_read += 1
        return frame

    def close(self) -> None:
        self._closed = True
        self._pending = None


def open_folder(rest: str, *, uri: str, every_frame: bool = False, fps: float | None = None, **options) -> FolderSource:
    """folder:DIR[?fps=N]; the fps keyword wins over the query."""
    path_part, _, query = rest.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(params) - {"fps"} | set(options))
    if unknown:
        raise SourceError(f"unknown option(s) {', '.join(unknown)} in {uri}; folder: accepts ?fps=N")
    fps_value = parse_fps(fps if fps is not None else params.get("fps"), uri)
    folder = path_from_rest(path_part)
    if not folder.exists():
        raise SourceError(f"image folder not found: {folder} (from {Path.cwd()}); check the path")
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder; use file:{folder} for a video or dicom:{folder} for DICOM")
    return FolderSource(folder, uri=uri, fps=fps_value or DEFAULT_FPS, every_frame=every_frame)
