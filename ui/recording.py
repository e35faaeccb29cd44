"""Recording from the UI: the same files `edge-assist run --out DIR` writes
(hints.jsonl, annotated.mp4, summary.json), by the same sinks.

`Recorder` is installed once as a pipeline sink and records only while a
recording is on, so starting and stopping never rebuilds the pipeline.
write() runs in the pipeline thread and only queues the result; a writer
thread draws and encodes, so the video encoder never delays the next frame
or the display. If the writer falls behind by more than QUEUE_MAX results,
results are left out of the recording and counted (`dropped`, in
summary.json) rather than stalling the pipeline. A write error (disk full,
folder removed) ends the recording and is kept in `error` for the UI to show;
it never stops the pipeline.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from edge_assist.record import AnnotatedVideoSink, JsonlSink, write_json

QUEUE_MAX = 60  # about two seconds at 30 fps

_STOP = object()


class Recorder:
    def __init__(self):
        self._lock = threading.Lock()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._sinks: list = []
        self._folder: Path | None = None
        self._t0_ns = 0
        self.frames = 0  # written
        self.dropped = 0  # left out because the writer fell behind
        self.first_frame: int | None = None
        self.last_frame: int | None = None
        self.error: str | None = None

    @property
    def active(self) -> bool:
        with self._lock:
            return self._queue is not None and self.error is None

    @property
    def folder(self) -> Path | None:
        """The folder of the recording in progress (or one a write error ended)."""
        return self._folder

    def elapsed_s(self) -> float:
        return (time.monotonic_ns() - self._t0_ns) / 1e9 if self.active else 0.0

    def start(self, folder: Path, fps: float | None, *, video: bool = True) -> None:
        self.stop()
        folder.mkdir(parents=True, exist_ok=True)
        sinks = [JsonlSink(folder / "hints.jsonl")]
        if video:
            sinks.append(AnnotatedVideoSink(folder / "annotated.mp4", fps or 30.0))
        q: queue.Queue = queue.Queue(maxsize=QUEUE_MAX)
        thread = threading.Thread(target=self._writer, args=(q, sinks), name="edge-assist-recorder", daemon=True)
        with self._lock:
            self._queue, self._thread, self._sinks = q, thread, sinks
            self._folder = folder
            self._t0_ns = time.monotonic_ns()
            self.frames = self.dropped = 0
            self.first_frame = self.last_frame = None
            self.error = None
        thread.start()

    def stop(self, summary: dict | None = None) -> Path | None:
        """End the recording: write what is queued, close the files, write
        summary.json (the pipeline's summary plus what this recording holds).
        Returns the folder, or None if no recording was on."""
        with self._lock:
            q, thread = self._queue, self._thread
            self._queue = self._thread = None
            folder, self._folder = self._folder, None
        if q is not None:
            q.put(_STOP)  # blocks only while the writer still has work queued
        if thread is not None:
            thread.join()
        if folder is None:
            return None
        info = {
            "frames": self.frames,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "dropped_from_recording": self.dropped,
            "error": self.error,
        }
        write_json(folder / "summary.json", {**(summary or {}), "recording": info})
        return folder

    def close(self) -> None:
        self.stop()

    # -- pipeline Sink protocol (pipeline thread) --------------------------------
    def write(self, result) -> None:
        with self._lock:
            q = self._queue if self.error is None else None
        if q is None:
            return
        try:
            q.put_nowait(result)
        except queue.Full:
            self.dropped += 1

    # -- writer thread -------------------------------------------------------------
    def _writer(self, q: queue.Queue, sinks: list) -> None:
        failed = False
        try:
            while True:
                r = q.get()
                if r is _STOP:
                    return
                if failed:
                    continue  # drain until stop()
                try:
                    for s in sinks:
                        s.write(r)
                except Exception as exc:  # keep the pipeline alive; the UI shows the error
                    self.error = f"recording stopped: {exc}"
                    failed = True
                    continue
                self.frames += 1
                if self.first_frame is None:
                    self.first_frame = r.frame.index
                self.last_frame = r.frame.index
        finally:
            for s in sinks:
                try:
                    s.close()
                except Exception as exc:
                    self.error = self.error or f"cannot finish the recording: {exc}"
