"""The edge-assist window and `main(argv)` (`edge-assist ui`).

    edge-assist ui [--source URI] [--compact] [--screenshot PNG --frames N]

Threads: the pipeline runs in the bridge's session thread; its results reach
this (UI) thread through a queued signal and are only stored there. A ~60 Hz
timer shows the newest stored result (image and hints together), so painting
runs at display rate, coalesces bursts, and never makes the pipeline wait.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from PyQt6.QtCore import QObject, Qt, QTimer
from PyQt6.QtGui import QIcon, QKeySequence, QShortcut
from PyQt6.QtWidgets import QApplication, QHBoxLayout, QLabel, QListWidgetItem, QMainWindow, QSizePolicy, QVBoxLayout, QWidget

from edge_assist.errors import EdgeAssistError
from edge_assist.vocab import ACTION_TEXT

from . import theme
from .bridge import PipelineBridge
from .capture import AutoCapture, AutoCaptureConfig, Exam, build_report, new_exam_dir, save_report
from .controls import SIM_KEY_ACTIONS, CaptureStrip, ControlsPanel, TouchBar
from .overlay import OverlayWidget
from .report_view import ReportView, thumbnail

PAINT_INTERVAL_MS = 16  # ~60 Hz
HUD_INTERVAL_MS = 250
NO_SIGNAL_S = 1.5  # a live source without frames for this long shows NO SIGNAL
TOAST_S = 1.2


class MainWindow(QMainWindow):
    def __init__(
        self,
        source=None,
        *,
        compact: bool = False,
        engines: str | Path | None = None,
        backend: str = "ort",
        precision: str = "fp32",
        threads: int = 1,
        out: str | Path = "out/ui",
        autocapture: AutoCaptureConfig | None = None,
        heads_factory=None,
        loop: bool = True,
    ):
        super().__init__()
        self.compact = compact
        self.setWindowTitle("edge-assist" + (" – compact" if compact else " – bedside"))
        self.setStyleSheet(theme.STYLE)
        self.out_root = Path(out)
        self.exam = Exam(new_exam_dir(self.out_root))
        self.autocap = AutoCapture(autocapture or AutoCaptureConfig())
        self.bridge = PipelineBridge(engines=engines, backend=backend, precision=precision, threads=threads, loop=loop, heads_factory=heads_factory, parent=self)
        self.bridge.result.connect(self._on_result, Qt.ConnectionType.QueuedConnection)
        self.bridge.state.connect(self._on_state, Qt.ConnectionType.QueuedConnection)

        self.frozen = False
        self.results_received = 0
        self.moves: list[str] = []
        self.report_view: ReportView | None = None
        self.last_report_dir: Path | None = None
        self._latest = None  # newest result from the pipeline
        self._shown = None  # result on screen
        self._last_result_t = 0.0
        self._opened_t = 0.0
        self._toast_until = 0.0
        self._closed = False

        self.overlay = OverlayWidget(compact=compact)
        central = QWidget()
        central.setObjectName("central")
        if compact:
            self.controls = None
            self.touchbar = TouchBar()
            v = QVBoxLayout(central)
            v.setContentsMargins(0, 0, 0, 0)
            v.setSpacing(0)
            v.addWidget(self.overlay, 1)
            v.addWidget(self.touchbar)
            self.strip = None
            panel = self.touchbar
            self.resize(900, 600)
        else:
            self.touchbar = None
            self.controls = ControlsPanel(threshold=self.autocap.cfg.threshold, stable_frames=self.autocap.cfg.stable_frames)
            self.strip = CaptureStrip()
            self.strip_header = QLabel()
            self.strip_header.setObjectName("stripHeader")
            # Long exam paths must never widen the window.
            self.strip_header.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
            self._update_strip_header()
            left = QVBoxLayout()
            left.setContentsMargins(0, 0, 0, 0)
            left.setSpacing(0)
            left.addWidget(self.overlay, 1)
            left.addWidget(self.strip_header)
            left.addWidget(self.strip)
            h = QHBoxLayout(central)
            h.setContentsMargins(0, 0, 0, 0)
            h.setSpacing(0)
            h.addLayout(left, 1)
            h.addWidget(self.controls)
            panel = self.controls
            self.controls.autocapture_changed.connect(self._autocapture_changed)
            self.statusBar().showMessage("Ready")
            self.resize(1280, 800)
        self.setCentralWidget(central)
        panel.open_requested.connect(self.open_source)
        panel.freeze_toggled.connect(self.set_frozen)
        panel.record_toggled.connect(self.set_recording)
        panel.capture_requested.connect(self.capture_now)
        panel.end_exam_requested.connect(self.end_exam)
        self.panel = panel
        QShortcut(QKeySequence("Ctrl+Q"), self, activated=self.close)

        self._paint_timer = QTimer(self)
        self._paint_timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._paint_timer.setInterval(PAINT_INTERVAL_MS)
        self._paint_timer.timeout.connect(self._paint_tick)
        self._paint_timer.start()
        self._hud_timer = QTimer(self)
        self._hud_timer.setInterval(HUD_INTERVAL_MS)
        self._hud_timer.timeout.connect(self._hud_tick)
        self._hud_timer.start()
        self.overlay.setFocus()
        if source is not None:
            self.open_source(source)

    # ------------------------------------------------------------------ source
    def open_source(self, source) -> None:
        """Open a source URI (or a callable returning a FrameSource); the old
        one is stopped first. Failures are shown in the window."""
        if self.bridge.recorder.active:
            self.set_recording(False)
        self.autocap.reset()
        self._latest = self._shown = None
        self.overlay.clear_image()
        uri = source if isinstance(source, str) else (getattr(source, "uri", None) or "custom source")
        self.overlay.set_status(source=uri, source_status="", waiting=True, no_signal=False, message=None, message_title=None)
        self._opened_t = time.monotonic()
        self._last_result_t = 0.0
        self.bridge.open(source)
        self.panel.show_source(uri)
        self.overlay.setFocus()
        self._status(f"Opening {uri}…")

    def _on_state(self, sid: int, kind: str, message: str) -> None:
        if sid != self.bridge.session or self._closed:
            return
        if kind == "failed":
            title = "Cannot open the source" if self._latest is None else "The source stopped"
            self.overlay.clear_image()
            self._latest = self._shown = None
            self.overlay.set_status(message_title=title, message=message, waiting=False, no_signal=False)
            if self.bridge.recorder.active:
                self.set_recording(False)
            self._status(f"{title}: {message}")
        elif kind == "models":
            self.overlay.set_status(note="No models loaded – image only")
            self.panel.set_models_available(False)
            self._status(f"No models, image only: {message}", 0)
        elif kind == "running":
            self.overlay.set_status(message=None, message_title=None)
            self._status(f"Running {message}")
        elif kind == "ended":
            self.overlay.set_status(source_status="ended")
            self._status(message.capitalize())

    # ------------------------------------------------------------------ results
    def _on_result(self, sid: int, result) -> None:
        """Queued from the pipeline thread: store, feed auto-capture; no painting here."""
        if sid != self.bridge.session or self._closed:
            return
        self._latest = result
        self.results_received += 1
        self._last_result_t = time.monotonic()
        if not self.frozen:
            best = self.autocap.feed(result)
            if best is not None:
                self._add_capture(best, auto=True)

    def _paint_tick(self) -> None:
        r = self._latest
        if r is None or self.frozen or r is self._shown:
            return
        self._shown = r
        if self.overlay.status.waiting or self.overlay.status.no_signal:
            self.overlay.set_status(waiting=False, no_signal=False)
        self.overlay.set_result(r)

    def _hud_tick(self) -> None:
        stats = self.bridge.stats()
        self.overlay.set_hud(stats)
        now = time.monotonic()
        st = self.overlay.status
        changes: dict = {"source_status": stats["source_status"] or st.source_status}
        if st.message is None and self.bridge.source is not None:
            last = self._last_result_t or self._opened_t
            fps = stats.get("nominal_fps") or 30.0
            stale = now - last > max(NO_SIGNAL_S, 3.0 / fps)  # a slow stream is not a lost one
            changes["no_signal"] = (stats["source_status"] == "no signal" or (stale and stats["live"])) and not self.frozen
        rec = self.bridge.recorder
        changes["recording"] = rec.active
        changes["rec_seconds"] = rec.elapsed_s()
        if rec.error and self.panel.record_button.isChecked():
            self._status(rec.error, 0)
            self.set_recording(False)
        if st.toast and now > self._toast_until:
            changes["toast"] = None
        self.overlay.set_status(**changes)

    # ------------------------------------------------------------------ actions
    def set_frozen(self, on: bool) -> None:
        on = bool(on)
        if on == self.frozen:
            return
        self.frozen = on
        self._sync_checked(self.panel.freeze_button, on)
        self.overlay.set_status(frozen=on)
        if not on:
            self.autocap.reset()  # a stable run must be seen live, not across a freeze
        self._status("Frozen – Capture stores the frozen frame" if on else "Live")

    def set_recording(self, on: bool) -> None:
        rec = self.bridge.recorder
        on = bool(on)
        if on and not rec.active:
            pipe = self.bridge.pipeline
            if pipe is None:
                self._sync_checked(self.panel.record_button, False)
                self._status("Nothing to record: no pipeline is running (models missing or no source)")
                return
            folder = self.exam.next_recording_dir()
            try:
                rec.start(folder, self.bridge.stats().get("nominal_fps") or 30.0)
            except OSError as exc:
                self._sync_checked(self.panel.record_button, False)
                self._status(f"Cannot record into {folder}: {exc.strerror or exc}", 0)
                return
            self._status(f"Recording to {folder}")
        elif not on and (rec.active or rec.folder is not None):
            folder = rec.stop(self.bridge.summary())
            if folder is not None:
                self._status(f"Recording saved: {folder}/hints.jsonl, annotated.mp4, summary.json")
        self._sync_checked(self.panel.record_button, rec.active)
        self.overlay.set_status(recording=rec.active, rec_seconds=0.0)

    def capture_now(self) -> None:
        """Capture the frame on screen (frozen or live)."""
        r = self._shown
        if r is None or getattr(r, "hints", None) is None:
            self._status("Nothing to capture yet" if r is None else "Capture needs the models (image only now)")
            return
        self._add_capture(r, auto=False)

    def _add_capture(self, result, *, auto: bool) -> None:
        try:
            cap = self.exam.add(result, source=self.bridge.uri, auto=auto)
        except OSError as exc:
            self._status(f"Cannot save the capture: {exc}", 0)
            return
        if self.strip is not None:
            item = QListWidgetItem(QIcon(thumbnail(cap.pixels, 88)), f"#{cap.number} · Q{cap.quality * 100:.0f}{'' if auto else ' · C'}")
            item.setToolTip(f"frame {cap.frame_index}\n{cap.finding_text}")
            self.strip.addItem(item)
            self.strip.scrollToItem(item)
            self._update_strip_header()
        if self.touchbar is not None:
            self.touchbar.set_captures(len(self.exam.captures))
        self._toast(f"Captured image {cap.number} (quality {cap.quality * 100:.0f})")
        self._status(f"{'Auto-captured' if auto else 'Captured'} image {cap.number}: {cap.image_path}")

    def end_exam(self) -> ReportView:
        """Build the draft report from the captures, save it, show it."""
        exam_info = {
            "folder": str(self.exam.folder),
            "started": self.exam.started.isoformat(timespec="seconds"),
            "pipeline": {k: v for k, v in self.bridge.summary().items() if k in ("backend", "precision", "models", "e2e_ms", "frames_processed", "misses", "frames_dropped")},
        }
        captures = list(self.exam.captures)
        report = build_report(captures, source=self.bridge.uri, exam=exam_info)
        if self.report_view is not None:
            self.report_view.close()
        view = ReportView(report, captures, parent=self)
        view.new_exam_requested.connect(self.new_exam)
        folder = self.exam.folder / "report"
        try:
            save_report(report, captures, folder, sheet_png=view.sheet_png())
            view.set_saved(folder)
            self._status(f"Draft report saved: {folder}")
        except OSError as exc:
            view.saved_label.setText(f"Could not save the report: {exc}")
            self._status(f"Could not save the report: {exc}", 0)
        self.last_report_dir = folder
        self.report_view = view
        view.show()
        return view

    def new_exam(self) -> None:
        self.exam = Exam(new_exam_dir(self.out_root))
        self.autocap.reset()
        if self.strip is not None:
            self.strip.clear()
            self._update_strip_header()
        if self.touchbar is not None:
            self.touchbar.set_captures(0)
        self._status(f"New exam: {self.exam.folder}")

    def drive(self, action: str) -> bool:
        """Move the simulated probe (keyboard)."""
        if self.bridge.move(action):
            self.moves.append(action)
            self._toast(f"Probe: {ACTION_TEXT.get(action, action)}")
            return True
        self._toast("Keyboard driving needs a simulator source (sim:liver)")
        return False

    def _autocapture_changed(self, enabled: bool, threshold: float, frames: int) -> None:
        self.autocap.enabled = enabled
        self.autocap.cfg.threshold = threshold
        self.autocap.cfg.stable_frames = frames
        self.autocap.reset()
        self._update_strip_header()

    def _update_strip_header(self) -> None:
        if self.strip is None:
            return
        n = len(self.exam.captures)
        cfg = self.autocap.cfg
        rule = f"auto-capture: quality ≥ {cfg.threshold * 100:.0f} for {cfg.stable_frames} frames" if self.autocap.enabled else "auto-capture off"
        self.strip_header.setText(
            f"<span style='color:#8a96a8;font-weight:bold;letter-spacing:1px'>CAPTURED FRAMES &nbsp;{n}</span>"
            f"<span style='color:#6b7686'> &nbsp;·&nbsp; {rule} &nbsp;·&nbsp; exam folder {self.exam.folder}</span>"
        )

    # ------------------------------------------------------------------ Qt events
    def keyPressEvent(self, event) -> None:  # noqa: N802
        key = event.key()
        if key in SIM_KEY_ACTIONS:
            self.drive(SIM_KEY_ACTIONS[key])
        elif key == Qt.Key.Key_Space and not event.isAutoRepeat():
            self.set_frozen(not self.frozen)
        elif key == Qt.Key.Key_C and not event.isAutoRepeat():
            self.capture_now()
        elif key == Qt.Key.Key_R and not event.isAutoRepeat():
            self.set_recording(not self.bridge.recorder.active)
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    def closeEvent(self, event) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop timers, finish a recording, stop the pipeline and join its threads."""
        if self._closed:
            return
        self._closed = True
        self._paint_timer.stop()
        self._hud_timer.stop()
        if self.bridge.recorder.active:
            self.bridge.recorder.stop(self.bridge.summary())
        self.bridge.close()
        if self.report_view is not None:
            self.report_view.close()

    # ------------------------------------------------------------------ helpers
    def _toast(self, text: str) -> None:
        self._toast_until = time.monotonic() + TOAST_S
        self.overlay.set_status(toast=text)

    def _status(self, text: str, timeout_ms: int = 6000) -> None:
        if not self.compact:
            self.statusBar().showMessage(text, timeout_ms)

    @staticmethod
    def _sync_checked(button, on: bool) -> None:
        if button.isChecked() != on:
            button.blockSignals(True)
            button.setChecked(on)
            button.blockSignals(False)


# ---------------------------------------------------------------------- main()


class _Screenshot(QObject):
    """Saves the window once N new frames have been shown, then quits."""

    def __init__(self, window: MainWindow, path: Path, frames: int, timeout_s: float):
        super().__init__(window)
        self.window, self.path, self.frames, self.timeout_s = window, path, frames, timeout_s
        self.t0 = time.monotonic()
        self.failed_at: float | None = None
        self.rc: int | None = None
        self.timer = QTimer(self)
        self.timer.setInterval(20)
        self.timer.timeout.connect(self._check)
        self.timer.start()

    def _check(self) -> None:
        shown = self.window.overlay.frames_painted
        now = time.monotonic()
        late = now - self.t0 > self.timeout_s
        if self.window.overlay.status.message and self.failed_at is None:
            self.failed_at = now  # the source failed: no frames will come
        failed = self.failed_at is not None and now - self.failed_at > 0.3
        if shown < self.frames and not late and not failed:
            return
        self.timer.stop()
        app = QApplication.instance()
        if app.platformName() in ("xcb", "wayland"):
            # A real window: take what the display server shows.
            pix = self.window.screen().grabWindow(self.window.winId())
        else:
            pix = self.window.grab()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ok = pix.save(str(self.path), "PNG")
        if not ok:
            print(f"edge-assist ui: error: cannot write {self.path}", file=sys.stderr)
            self.rc = 2
        elif shown < self.frames:
            msg = self.window.overlay.status.message or "no frames arrived"
            print(f"edge-assist ui: only {shown} of {self.frames} frames shown ({msg}); saved {self.path} anyway", file=sys.stderr)
            self.rc = 1
        else:
            print(f"saved {self.path} after {shown} frames (displayed {self.window.overlay.display_fps:.1f} fps)")
            self.rc = 0
        self.window.close()
        app.quit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-assist ui", description="The bedside overlay. " + theme.DISCLAIMER_SHORT + ".")
    p.add_argument("--source", help="source URI (default: the simulator, or a DICOM demo cine)")
    p.add_argument("--compact", action="store_true", help="small-screen layout: image, meter and glyph, large touch targets")
    p.add_argument("--screenshot", type=Path, help="save a PNG of the window after --frames frames and exit")
    p.add_argument("--frames", type=int, default=60, help="frames to show before the screenshot (default 60)")
    p.add_argument("--timeout", type=float, default=30.0, help="screenshot anyway after this many seconds (default 30)")
    p.add_argument("--backend", default="ort")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    p.add_argument("--engines", type=Path, help="folder with manifest.json and the models (default engines/)")
    p.add_argument("--out", type=Path, default=Path("out/ui"), help="folder for exams: captures, recordings, reports (default out/ui)")
    p.add_argument("--size", help="window size WxH, e.g. 1280x800")
    return p


def _ensure_platform(screenshot: bool) -> None:
    if os.environ.get("QT_QPA_PLATFORM") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    if screenshot:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # a screenshot needs no screen
        return
    raise EdgeAssistError("no display: set DISPLAY (or run under Xvfb), or use --screenshot PNG to render offscreen")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < 1:
        raise EdgeAssistError("--frames must be at least 1")
    _ensure_platform(args.screenshot is not None)
    source = args.source
    if source is None:
        from edge_assist.cli import default_demo_source

        source = default_demo_source()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("edge-assist")
    app.setStyle("Fusion")
    app.setPalette(theme.dark_palette())
    window = MainWindow(source, compact=args.compact, engines=args.engines, backend=args.backend, precision=args.precision, out=args.out)
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError as exc:
            raise EdgeAssistError(f"--size must look like 1280x800, not {args.size!r}") from exc
        window.resize(w, h)
    shot = _Screenshot(window, args.screenshot, args.frames, args.timeout) if args.screenshot else None
    window.show()
    # Ctrl-C in the terminal closes the window cleanly; the timer lets Python
    # run its signal handler while Qt's loop is busy.
    previous = signal.signal(signal.SIGINT, lambda *_: window.close())
    tick = QTimer()
    tick.start(200)
    tick.timeout.connect(lambda: None)
    try:
        rc = app.exec()
    finally:
        signal.signal(signal.SIGINT, previous)
        tick.stop()
        window.shutdown()
    if shot is not None and shot.rc is not None:
        return shot.rc
    return int(rc)


def _cli() -> int:
    try:
        return main()
    except EdgeAssistError as exc:
        print(f"edge-assist ui: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m edge_assist.ui.app
    raise SystemExit(_cli())
