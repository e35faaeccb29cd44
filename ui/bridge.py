"""The bridge between the pipeline's threads and the Qt UI thread.

`PipelineBridge` owns one session thread at a time. The session thread loads
the heads (once), opens the source, runs the Pipeline in itself (so a slow
device open or a model load never freezes the window) and, for finite
sources, starts them again when they end (loop). Every FrameResult is
re-emitted through a queued signal; the UI thread never calls into the
pipeline except to read its counters and to stop it.

Without models (no engines/manifest.json yet, or a broken one) the session
runs in preview mode: frames are shown as they come, with no hints, and the
reason is reported once, so the window stays useful.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from PyQt6.QtCore import QObject, pyqtSignal

from edge_assist.errors import EdgeAssistError, EndOfStream
from edge_assist.frames import Frame
from edge_assist.sources.base import FrameSource

from .recording import Recorder

@dataclass
class PreviewResult:
    """What the UI gets for a frame when no models are loaded."""

    frame: Frame
    hints: Any = None
    prepared: Any = None
    raw_quality: Any = None
    e2e_ms: float | None = None
    missed_budget: bool = False
    stages_ms: dict = field(default_factory=dict)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class PipelineBridge(QObject):
    # (session id, FrameResult | PreviewResult). Results of an older session
    # that are still queued when the source changes carry its id and are ignored.
    result = pyqtSignal(int, object)
    # (session id, kind, message); kind is one of
    #   opening, running, failed, ended, looped, models
    state = pyqtSignal(int, str, str)

    def __init__(
        self,
        *,
        engines: str | Path | None = None,
        backend: str = "ort",
        precision: str = "fp32",
        threads: int = 1,
        loop: bool = True,
        heads_factory: Callable[[], Any] | None = None,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.engines = engines
        self.backend = backend
        self.precision = precision
        self.threads = threads
        self.loop = loop
        self._heads_factory = heads_factory
        self.recorder = Recorder()
        self._lock = threading.Lock()
        self._heads_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pipeline = None
        self._source: FrameSource | None = None
        self._heads = None
        self._heads_tried = False
        self.models_error: str | None = None
        self.session = 0
        self.uri = ""
        self.loops = 0
        self._opening = False  # the session thread is loading models / opening the source
        self._abandoned: list[threading.Thread] = []  # sessions stuck opening, left to finish alone

    # ------------------------------------------------------------ control (UI)
    def open(self, source: "str | Callable[[], FrameSource]") -> int:
        """Stop the current session and start one on `source` (a URI, or a
        callable that returns an open FrameSource). Returns the session id."""
        # A session still opening its source (a device or stream that takes
        # seconds to answer) is not waited for: it sees its stop flag once the
        # open returns, closes what it opened and ends. Waiting would freeze
        # the window.
        self.stop(wait=not self._opening)
        if callable(source):
            opener, uri = source, getattr(source, "uri", None) or getattr(source, "__name__", "custom source")
        else:
            from edge_assist.sources import open_source

            uri = str(source)
            opener = partial(open_source, uri)
        with self._lock:
            self._pipeline = None
        self.session += 1
        self.uri = uri
        self.loops = 0
        self._opening = True
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run_session, args=(self.session, opener, uri, self._stop), name="edge-assist-ui-session", daemon=True
        )
        self._thread.start()
        return self.session

    def stop(self, timeout_s: float = 5.0, *, wait: bool = True) -> None:
        """Stop the session and (wait=True) wait for all its threads
        (pipeline, capture, interpreter, the source's own) to end."""
        self._stop.set()
        with self._lock:
            pipe = self._pipeline
        if pipe is not None:
            pipe.stop()
        if self._thread is not None:
            if wait:
                self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._abandoned.append(self._thread)
            self._thread = None

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop everything; wait for every thread this bridge started."""
        self.stop()
        deadline = time.monotonic() + timeout_s
        for t in self._abandoned:
            t.join(max(0.0, deadline - time.monotonic()))
        self._abandoned = [t for t in self._abandoned if t.is_alive()]
        self.recorder.close()
        with self._heads_lock:
            if self._heads is not None:
                self._heads.close()
                self._heads = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pipeline(self):
        with self._lock:
            return self._pipeline

    @property
    def source(self) -> FrameSource | None:
        with self._lock:
            return self._source

    def can_drive(self) -> bool:
        src = self.source
        return src is not None and callable(getattr(src, "move", None))

    def move(self, action: str) -> bool:
        """Move the simulated probe (sim sources); False for other sources."""
        src = self.source
        move = getattr(src, "move", None) if src is not None else None
        if not callable(move):
            return False
        move(action)
        return True

    def stats(self) -> dict:
        """A snapshot for the HUD, read from the UI thread."""
        pipe, src = self.pipeline, self.source
        out = {
            "uri": self.uri,
            "source_status": "",
            "pipeline_status": "",
            "p50": 0.0,
            "p99": 0.0,
            "fps": 0.0,
            "misses": 0,
            "drops": 0,
            "budget_ms": None,
            "backend": self.backend,
            "precision": self.precision,
            "live": bool(src.is_live) if src is not None else False,
            "nominal_fps": (src.nominal_fps if src is not None else None),
            "has_pipeline": pipe is not None,
        }
        if src is not None:
            try:
                out["source_status"] = str(src.status)
            except Exception as exc:  # a status property must not break the HUD
                out["source_status"] = _one_line(exc)
        if pipe is not None:
            out.update(pipe.log.recent())
            out["misses"] = pipe.misses
            out["drops"] = pipe.frames_dropped
            out["budget_ms"] = pipe.budget_ms
            out["pipeline_status"] = pipe.status
            out["backend"] = pipe.heads.backend_name
            out["precision"] = pipe.heads.precision
        elif self.models_error:
            out["backend"] = "no models"
        return out

    def summary(self) -> dict:
        pipe = self.pipeline
        return pipe.summary() if pipe is not None else {"source": self.uri}

    # ------------------------------------------------------- session (thread)
    def _load_heads(self, sid: int):
        with self._heads_lock:
            if not self._heads_tried:
                self._heads_tried = True
                try:
                    if self._heads_factory is not None:
                        self._heads = self._heads_factory()
                    else:
                        from edge_assist.heads import HeadSet
                        from edge_assist.manifest import load_manifest

                        self._heads = HeadSet(load_manifest(self.engines), backend=self.backend, precision=self.precision, threads=self.threads)
                except EdgeAssistError as exc:
                    self.models_error = _one_line(exc)
                except Exception as exc:  # e.g. an ONNX file ORT cannot load
                    self.models_error = f"cannot load the models: {_one_line(exc)}"
            if self._heads is None and self.models_error:
                self.state.emit(sid, "models", self.models_error)
            return self._heads

    def _emit(self, sid: int, result) -> None:
        # Pipeline thread: emit only. The queued connection hands the result
        # (and the frame it holds) to the UI thread.
        self.result.emit(sid, result)

    def _preview(self, source: FrameSource, sid: int, stop: threading.Event) -> tuple[bool, int]:
        n = 0
        while not stop.is_set():
            try:
                frame = source.read(timeout_s=0.1)
            except EndOfStream:
                return True, n
            if frame is not None:
                n += 1
                self.result.emit(sid, PreviewResult(frame))
        return False, n

    def _run_session(self, sid: int, opener, uri: str, stop: threading.Event) -> None:
        self._opening = True
        try:
            self.state.emit(sid, "opening", uri)
            heads = self._load_heads(sid)
            if stop.is_set():
                return
            try:
                source = opener()
            except EdgeAssistError as exc:
                self.state.emit(sid, "failed", _one_line(exc))
                return
            except Exception as exc:
                self.state.emit(sid, "failed", f"cannot open {uri}: {_one_line(exc)}")
                return
        finally:
            if sid == self.session:
                self._opening = False
        with self._lock:
            if stop.is_set():  # abandoned while opening: a newer session owns the bridge
                source.close()
                return
            self._source = source
        try:
            from edge_assist.pipeline import Pipeline

            self.state.emit(sid, "running", uri)
            while not stop.is_set():
                if heads is not None:
                    pipe = Pipeline(source, heads, [self.recorder], on_result=partial(self._emit, sid))
                    with self._lock:
                        if stop.is_set():
                            break
                        self._pipeline = pipe
                    pipe.run()
                    ended, processed = pipe.ended, pipe.frames_processed
                else:
                    ended, processed = self._preview(source, sid, stop)
                if stop.is_set() or not ended:
                    break
                if not self.loop or processed == 0 or source.is_live:
                    self.state.emit(sid, "ended", f"end of {uri}")
                    break
                # A finite source (file, cine, folder) plays again from the start.
                source.close()
                source = opener()
                with self._lock:
                    if stop.is_set():
                        break
                    self._source = source
                self.loops += 1
                self.state.emit(sid, "looped", uri)
        except EdgeAssistError as exc:
            self.state.emit(sid, "failed", _one_line(exc))
        except Exception as exc:
            self.state.emit(sid, "failed", f"{uri} failed: {_one_line(exc)}")
        finally:
            with self._lock:
                if self._source is source:
                    self._source = None
                # The last pipeline stays for its summary until the next session.
            source.close()
