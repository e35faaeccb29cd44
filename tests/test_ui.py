"""The PyQt6 bedside overlay, offscreen (QT_QPA_PLATFORM=offscreen, conftest).

Real pipeline threads and real (tiny) ONNX models: results reach the window
through the queued signal exactly as in use.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("PyQt6.QtWidgets")
pytest.importorskip("pytestqt")

import cv2  # noqa: E402
from PyQt6.QtCore import QPointF, QRectF, Qt  # noqa: E402
from PyQt6.QtGui import QColor, QFontMetricsF, QImage, QPainter  # noqa: E402

from edge_assist.frames import Finding, Frame, GuidanceResult, Hints, InterpreterResult, QualityResult, ScanRegion  # noqa: E402
from edge_assist.pipeline import FrameResult  # noqa: E402
from edge_assist.sources.base import FrameSource  # noqa: E402
from edge_assist.vocab import ABSTAIN_TEXT, ACTION_TEXT, ACTIONS, REASON_TEXT  # noqa: E402
from edge_assist.ui import theme  # noqa: E402
from edge_assist.ui.app import MainWindow  # noqa: E402
from edge_assist.ui.capture import AutoCapture, AutoCaptureConfig, build_report, report_text  # noqa: E402
from edge_assist.ui.controls import SIM_KEY_ACTIONS, TouchBar, build_uri  # noqa: E402
from edge_assist.ui.glyphs import draw_glyph, glyph_path  # noqa: E402
from edge_assist.ui.overlay import OverlayWidget, qimage_view  # noqa: E402

from edge_assist.hints import guidance_text, quality_text  # noqa: E402

try:
    import edge_assist.sources.sim  # noqa: F401

    HAVE_SIM = True
except ImportError:
    HAVE_SIM = False

KEY_FOR = {}
for _k, _a in SIM_KEY_ACTIONS.items():
    KEY_FOR.setdefault(_a, _k)


# -- helpers -------------------------------------------------------------------------


class FakeLiveSource(FrameSource):
    """A live, endless speckle stream with a scan region and mm spacing, paced
    at `fps`; records move() calls like the simulator does."""

    is_live = True

    def __init__(self, fps: float = 60.0, shape=(128, 160), uri: str = "fake:live"):
        self.uri, self.nominal_fps, self.shape = uri, fps, shape
        self.rng = np.random.default_rng(0)
        self.i = 0
        self.t_next = time.monotonic()
        self.moves: list[str] = []
        self._lock = threading.Lock()
        self.status_text = "ok"

    @property
    def status(self):
        return self.status_text

    def move(self, action):
        with self._lock:
            self.moves.append(action)

    def read(self, timeout_s=1.0):
        wait = self.t_next - time.monotonic()
        if wait > timeout_s:
            time.sleep(timeout_s)
            return None
        if wait > 0:
            time.sleep(wait)
        self.t_next = max(self.t_next + 1.0 / self.nominal_fps, time.monotonic() - 0.5)
        px = self.rng.integers(20, 200, size=self.shape, dtype=np.uint8)
        px[:, :8] = 0  # a dark border outside the region
        region = ScanRegion((8, 0, self.shape[1], self.shape[0]), "linear", (0.25, 0.25))
        f = Frame(px, self.i, time.monotonic_ns(), region=region, meta={"truth": {"quality": 0.9, "frame": self.i}})
        self.i += 1
        return f

    def close(self):
        pass


def make_result(
    index=10,
    score=0.72,
    action="slide_head",
    reasons=("partial_contact",),
    interp: InterpreterResult | None = None,
    shape=(200, 240),
    rgb=False,
):
    rng = np.random.default_rng(index)
    px = rng.integers(0, 255, size=shape + ((3,) if rgb else ()), dtype=np.uint8)
    frame = Frame(px, index, time.monotonic_ns(), region=ScanRegion((0, 0, shape[1], shape[0]), "curvilinear", (0.3, 0.3)))
    q = QualityResult(score, list(reasons), {r: 0.9 for r in reasons})
    g = GuidanceResult(action, 0.83, {action: 0.83})
    hints = Hints(index, frame.t_capture_ns, q, g, interp, quality_text(q), guidance_text(g))
    return FrameResult(frame, None, hints, q, g, {"quality": 1.0}, 4.2, False)


def finding(index, text="Liver and kidney in view. No focal lesion seen.", conf=0.8):
    f = Finding(["liver", "kidney"], False, 0.1, None, None, None, None, conf)
    return InterpreterResult(index, False, text, f)


def colour_pixels(img: QImage, rect: QRectF, colour: QColor, tol: int = 12) -> int:
    """How many pixels inside rect are within tol of colour."""
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes())
    a = np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine())[:, : img.width() * 3].reshape(img.height(), img.width(), 3)
    r = rect.toAlignedRect().intersected(img.rect())
    sub = a[r.top() : r.bottom() + 1, r.left() : r.right() + 1].astype(int)
    want = np.array([colour.red(), colour.green(), colour.blue()])
    return int((np.abs(sub - want).max(axis=2) <= tol).sum())


@pytest.fixture
def make_window(qtbot, tmp_path, tiny_engines, no_thread_leak):
    """MainWindow factory; every window is closed (pipeline joined) before
    no_thread_leak checks for threads."""
    windows = []

    def make(source, **kw):
        kw.setdefault("engines", tiny_engines)
        kw.setdefault("out", tmp_path / "out")
        w = MainWindow(source, **kw)
        qtbot.addWidget(w)
        w.show()
        windows.append(w)
        return w

    yield make
    for w in windows:
        w.close()


def wait_frames(qtbot, w, n, timeout=8000):
    qtbot.waitUntil(lambda: w.overlay.frames_painted >= n, timeout=timeout)


# -- rendering pieces ------------------------------------------------------------------


def test_qimage_wraps_numpy_without_copy():
    base = np.zeros((60, 80, 3), np.uint8)
    base[10:50, 20:70] = (10, 200, 30)
    crop = base[10:50, 20:70]  # rows strided: a view
    img, arr = qimage_view(crop)
    assert arr is crop  # no copy was made
    assert img.bytesPerLine() == base.strides[0]
    assert (img.width(), img.height()) == (50, 40)
    assert img.constBits().__int__() == crop.ctypes.data
    assert img.pixelColor(0, 0) == QColor(10, 200, 30)
    grey = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    gimg, garr = qimage_view(grey)
    assert garr is grey and gimg.format() == QImage.Format.Format_Grayscale8
    assert gimg.pixelColor(5, 0).red() == grey[0, 5]


def test_every_action_has_its_own_glyph(qapp):
    pictures = set()
    for action in ACTIONS:
        path = glyph_path(action)
        r = path.boundingRect()
        assert not path.isEmpty() and r.width() > 0.5 and r.height() > 0.5, action
        assert -1.2 <= r.left() and r.right() <= 1.2 and -1.2 <= r.top() and r.bottom() <= 1.2, action
        img = QImage(48, 48, QImage.Format.Format_Grayscale8)
        img.fill(0)
        p = QPainter(img)
        draw_glyph(p, action, QPointF(24, 24), 44, QColor(255, 255, 255))
        p.end()
        pictures.add(bytes(img.constBits().asstring(img.sizeInBytes())))
    assert len(pictures) == len(ACTIONS)

    def wide_at(action, along):
        """Is the glyph wider than its shaft at this point along the arrow's axis?"""
        path = glyph_path(action)
        horizontal = action in ("slide_left", "slide_right")
        pts = [(along, 0.3), (along, -0.3)] if horizontal else [(0.3, along), (-0.3, along)]
        return all(path.contains(QPointF(x, y)) for x, y in pts)

    # The arrowhead (the wide part) is on the side the arrow points to.
    assert wide_at("slide_left", -0.3) and not wide_at("slide_left", 0.3)
    assert wide_at("slide_right", 0.3) and not wide_at("slide_right", -0.3)
    assert wide_at("slide_head", -0.3) and not wide_at("slide_head", 0.3)  # head = up on screen
    assert wide_at("slide_feet", 0.3) and not wide_at("slide_feet", -0.3)


@pytest.mark.parametrize(
    "score,action,reasons,band",
    [
        (0.72, "slide_head", ("partial_contact",), "good"),
        (0.55, "rotate_cw", ("gain_high",), "fair"),
        (0.21, "depth_up", ("depth", "off_target"), "poor"),
        (0.93, "hold", (), "good"),
    ],
)
def test_overlay_shows_meter_glyph_and_text(qtbot, score, action, reasons, band):
    ov = OverlayWidget()
    qtbot.addWidget(ov)
    ov.resize(1000, 720)
    ov.set_hud({"p50": 3.1, "p99": 7.9, "fps": 30.0, "misses": 2, "drops": 5, "backend": "ort", "precision": "fp32", "budget_ms": 33.3})
    ov.set_status(source="sim:liver", source_status="ok")
    ov.set_result(make_result(score=score, action=action, reasons=reasons, interp=finding(7)))
    img = ov.grab().toImage()
    v = ov.view
    assert v.meter == round(score * 100) and v.band == band
    assert v.glyph == action and v.guidance_text == ACTION_TEXT[action]
    texts = ov.painted["texts"]
    assert str(v.meter) in texts
    assert ACTION_TEXT[action] in texts
    if reasons:
        assert REASON_TEXT[reasons[0]] in texts  # the main reason in words
    assert ov.painted["glyph"][0] == action
    assert theme.DISCLAIMER_SHORT in texts
    # The findings panel: the draft sentence and its age (frame 10 vs 7).
    assert "Liver and kidney in view. No focal lesion seen." in texts
    assert any("3 frames old" in t for t in texts)
    # The HUD: latency percentiles, fps, misses, drops, backend.
    hud = " ".join(texts)
    assert "3.1 / 7.9 ms" in hud and "30.0 fps" in hud and "misses 2" in hud and "drops 5" in hud and "ort fp32" in hud
    # The meter's arc is drawn in its band colour where the meter is.
    meter_rect = ov.painted["meter"][1]
    assert colour_pixels(img, meter_rect, theme.BAND_COLOURS[band]) > 150
    for other in set(theme.BAND_COLOURS) - {band}:
        assert colour_pixels(img, meter_rect, theme.BAND_COLOURS[other]) < 20
    if action == "hold":
        assert ACTION_TEXT["hold"] == "Hold still – good view"
        assert colour_pixels(img, ov.painted["glyph"][1], theme.HOLD) > 100  # the check mark is green


def _measured_lesion_result(age: int):
    """A result on a 200x240 frame whose scan region is x 40..240, y 0..200,
    with a fresh (or `age` frames old) finding whose lesion outline is the
    square 0.4..0.6 of that crop."""
    from edge_assist.preprocess import Prepared

    square = [[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6]]
    lesion = Finding(["liver"], True, 0.9, 12.0, "hypoechoic", "circumscribed", "mid_field", 0.8, size_measured=True,
                     lesion_outline=square)
    r = make_result(index=10, interp=InterpreterResult(10 - age, False, "A 12 mm hypoechoic lesion.", lesion))
    region = ScanRegion((40, 0, 240, 200), "curvilinear", (0.3, 0.3))
    prepared = Prepared(np.zeros((1, 1, 128, 128), np.float32), np.zeros((128, 128), np.uint8), region, (0.5, 0.5))
    return FrameResult(r.frame, prepared, r.hints, r.raw_quality, r.raw_guidance, r.stages_ms, r.e2e_ms, r.missed_budget)


def test_measured_lesion_outline_is_drawn_where_the_lesion_is(qtbot):
    from edge_assist.lesion_measure import fresh_outline
    from edge_assist.record import draw_hints

    r = _measured_lesion_result(age=1)
    pts = fresh_outline(r)
    assert np.allclose(pts, [[120, 80], [160, 80], [160, 120], [120, 120]])  # crop fractions -> frame pixels
    bgr = draw_hints(np.zeros((200, 240), np.uint8), r)
    yellow = (np.abs(bgr.astype(int) - [0, 230, 255]).max(axis=2) <= 40)
    assert yellow[78:83, 118:162].any() and yellow[118:123, 118:162].any()  # top and bottom edges
    assert not yellow[:, :100].any() and not yellow[140:, :].any()
    ov = OverlayWidget()
    qtbot.addWidget(ov)
    ov.resize(1000, 720)
    ov.set_result(r)
    img = ov.grab().toImage()
    assert ov.painted["lesion_outline"] == 4
    target = ov.image_rect()
    box = QRectF(target.left() + 0.38 * target.width(), target.top() + 0.38 * target.height(),
                 0.24 * target.width(), 0.24 * target.height())
    assert colour_pixels(img, box, theme.LESION, tol=30) > 40
    # an old finding's outline is not drawn: the probe may have moved
    old = _measured_lesion_result(age=5)
    assert fresh_outline(old) is None
    ov.set_result(old)
    ov.grab()
    assert "lesion_outline" not in ov.painted


def test_meter_colour_does_not_flicker_on_a_band_edge(qtbot):
    ov = OverlayWidget()
    qtbot.addWidget(ov)
    bands = []
    for i, score in enumerate([0.72, 0.69, 0.71, 0.695, 0.705, 0.66, 0.69, 0.71, 0.73]):
        ov.set_result(make_result(index=i, score=score))
        bands.append(ov.view.band)
    assert bands == ["good"] * 5 + ["fair"] * 3 + ["good"]


def test_overlay_shows_abstention_status_and_rgb(qtbot):
    ov = OverlayWidget()
    qtbot.addWidget(ov)
    ov.resize(1000, 720)
    abst = InterpreterResult(12, True, ABSTAIN_TEXT, None)
    ov.set_status(source="igtl://127.0.0.1:18944", source_status="no signal", no_signal=True, frozen=True, recording=True, rec_seconds=75)
    ov.set_result(make_result(index=12, score=0.3, interp=abst, rgb=True))
    ov.grab()
    texts = ov.painted["texts"]
    assert ABSTAIN_TEXT in texts
    assert any("abstained" in t for t in texts)
    assert "NO SIGNAL" in texts
    assert any("FROZEN" in t for t in ov.painted["badges"]) and any("REC  01:15" in t for t in ov.painted["badges"])


def test_compact_overlay_has_image_meter_and_glyph_only(qtbot):
    ov = OverlayWidget(compact=True)
    qtbot.addWidget(ov)
    ov.resize(800, 520)
    ov.set_hud({"p50": 3.1, "p99": 7.9, "fps": 30.0})
    ov.set_result(make_result(score=0.8, action="slide_left", interp=finding(9)))
    img = ov.grab().toImage()
    texts = ov.painted["texts"]
    assert ov.painted["glyph"][0] == "slide_left" and "80" in texts
    assert colour_pixels(img, ov.painted["meter"][1], theme.BAND_COLOURS["good"]) > 150
    assert ACTION_TEXT["slide_left"] not in texts and not any("Liver" in t for t in texts) and not any("p50" in t for t in texts)
    assert theme.DISCLAIMER_SHORT in texts
    bar = TouchBar()
    qtbot.addWidget(bar)
    bar.show()
    for b in (bar.source_button, bar.freeze_button, bar.capture_button, bar.record_button, bar.end_button):
        assert b.minimumHeight() >= 64 and b.minimumWidth() >= 96


def test_auto_capture_rules():
    cfg = AutoCaptureConfig(threshold=0.7, stable_frames=5, max_spread=0.15, cooldown_frames=1000)
    ac = AutoCapture(cfg)
    scores = [0.5, 0.8, 0.8, 0.9, 0.8]  # only 4 good in a row
    assert all(ac.feed(make_result(index=i, score=s, interp=finding(i))) is None for i, s in enumerate(scores))
    got = [ac.feed(make_result(index=5 + i, score=0.8 + 0.01 * i, interp=finding(5 + i))) for i in range(3)]
    assert got[0] is not None and got[0].frame.index == 3  # the best (0.9) of the 5 good frames 1..5
    assert got[1] is None and got[2] is None  # one capture per stable view
    ac.feed(make_result(index=20, score=0.3))  # quality lost: re-armed
    caps = [ac.feed(make_result(index=21 + i, score=0.85, interp=finding(21 + i))) for i in range(5)]
    assert caps[-1] is not None and caps[:-1] == [None] * 4
    # Unstable (spread > 0.15) good frames are not captured.
    ac.reset()
    wobbly = [0.72, 0.99, 0.72, 0.99, 0.72, 0.99]
    assert all(ac.feed(make_result(index=40 + i, score=s)) is None for i, s in enumerate(wobbly))
    # A frame with findings is preferred over a slightly better one without.
    ac.reset()
    run = [make_result(index=60 + i, score=0.8, interp=None) for i in range(4)] + [make_result(index=64, score=0.8, interp=finding(64))]
    picked = [ac.feed(r) for r in run][-1]
    assert picked is not None and picked.frame.index == 64


def test_report_is_built_from_findings_only(tmp_path):
    from edge_assist.ui.capture import Exam

    exam = Exam(tmp_path / "exam")
    lesion = Finding(["liver"], True, 0.9, 12.0, "hypoechoic", "circumscribed", "mid_field", 0.77, size_measured=True)
    exam.add(make_result(index=5, interp=InterpreterResult(3, False, "Liver in view. A 12 mm hypoechoic lesion with circumscribed margins in the mid field.", lesion)), source="sim:liver", auto=True)
    exam.add(make_result(index=9, score=0.3, interp=InterpreterResult(9, True, ABSTAIN_TEXT, None)), source="sim:liver", auto=False)
    rep = build_report(exam.captures, source="sim:liver")
    s = rep["summary"]
    assert s["images"] == 2 and s["images_with_findings"] == 1 and s["images_abstained"] == 1
    assert s["structures_seen"] == ["liver"]
    assert s["lesions"] and "12 mm hypoechoic lesion" in s["lesions"][0]
    assert "12 mm hypoechoic lesion" in s["impression"]
    txt = report_text(rep)
    assert ABSTAIN_TEXT in txt and "not a medical device" in txt
    assert rep["images"][0]["finding_age_frames"] == 2
    assert (tmp_path / "exam/captures/cap_001.png").is_file() and (tmp_path / "exam/captures/cap_002.json").is_file()
    # a size regressed from the whole frame (no lesion mask) is reported as an estimate
    other = Exam(tmp_path / "exam2")
    guess = Finding(["liver"], True, 0.9, 12.0, "hypoechoic", None, None, 0.7)
    other.add(make_result(index=5, interp=InterpreterResult(5, False, "", guess)), source="sim:liver", auto=True)
    assert "12 mm (estimated) hypoechoic lesion" in build_report(other.captures, source="sim:liver")["summary"]["lesions"][0]


# -- the window, with real pipeline threads ----------------------------------------------


def test_keys_move_the_simulated_probe(make_window, qtbot):
    src = FakeLiveSource(fps=60)
    w = make_window(lambda: src)
    qtbot.waitUntil(w.bridge.can_drive, timeout=5000)
    keys = [Qt.Key.Key_Left, Qt.Key.Key_Right, Qt.Key.Key_Up, Qt.Key.Key_Down, Qt.Key.Key_Q, Qt.Key.Key_E, Qt.Key.Key_W,
            Qt.Key.Key_S, Qt.Key.Key_A, Qt.Key.Key_D, Qt.Key.Key_Plus, Qt.Key.Key_Minus, Qt.Key.Key_BracketLeft, Qt.Key.Key_BracketRight]
    for k in keys:
        qtbot.keyClick(w.overlay, k)  # focus is on the image; keys reach the window
    assert src.moves == [
        "slide_left", "slide_right", "slide_head", "slide_feet", "rotate_ccw", "rotate_cw", "fan_toward",
        "fan_away", "rock_left", "rock_right", "depth_up", "depth_down", "gain_down", "gain_up",
    ]
    assert set(SIM_KEY_ACTIONS.values()) == set(ACTIONS) - {"hold"}


@pytest.mark.skipif(not HAVE_SIM, reason="the simulator (edge_assist.sources.sim) is not installed")
def test_following_the_sims_guidance_with_keys_improves_the_view(make_window, qtbot):
    w = make_window("sim:liver?seed=3&fps=60")
    qtbot.waitUntil(lambda: w.bridge.can_drive() and w._latest is not None, timeout=8000)
    truth0 = w._latest.frame.meta["truth"]
    err0 = truth0["pose_error"]["total"]
    for _ in range(40):
        truth = w._latest.frame.meta["truth"]
        if truth["at_target"] or truth["action"] == "hold":
            break
        idx = w._latest.frame.index
        qtbot.keyClick(w, KEY_FOR[truth["action"]])
        qtbot.waitUntil(lambda: w._latest.frame.index > idx + 1, timeout=3000)
    src = w.bridge.source
    assert [a for _, a in src.moves] == w.moves and len(w.moves) > 3
    assert w._latest.frame.meta["truth"]["pose_error"]["total"] < err0


def test_results_cross_threads_by_queued_signal_and_a_busy_ui_never_stalls_the_pipeline(make_window, qtbot):
    w = make_window(lambda: FakeLiveSource(fps=60))
    emit_threads, slot_threads = set(), set()
    original = w.bridge._emit

    def spy(sid, r):
        emit_threads.add(threading.current_thread().name)
        original(sid, r)

    w.bridge._emit = spy  # the pipeline's on_result is bound at session start: reopen
    w.open_source(lambda: FakeLiveSource(fps=60))
    w.bridge.result.connect(lambda *_: slot_threads.add(threading.current_thread().name), Qt.ConnectionType.QueuedConnection)
    wait_frames(qtbot, w, 3)
    assert emit_threads == {"edge-assist-ui-session"}
    assert slot_threads == {threading.main_thread().name}
    pipe = w.bridge.pipeline
    before = pipe.frames_processed
    time.sleep(0.5)  # the UI thread is busy (not processing events) for half a second
    assert pipe.frames_processed - before >= 15  # ~30 at 60 fps: the pipeline ran on
    shown = w.overlay.frames_painted
    wait_frames(qtbot, w, shown + 2)  # and the display catches up with the newest frame


def test_freeze_holds_the_image_and_capture_stores_it(make_window, qtbot):
    w = make_window(lambda: FakeLiveSource(fps=60))
    wait_frames(qtbot, w, 3)
    qtbot.keyClick(w, Qt.Key.Key_Space)
    assert w.frozen and w.controls.freeze_button.isChecked() and w.overlay.status.frozen
    held = w.overlay.view.frame_index
    held_pixels = w.overlay.image_array().copy()
    n = w.results_received
    qtbot.waitUntil(lambda: w.results_received >= n + 10, timeout=5000)  # the pipeline runs on
    qtbot.wait(40)
    assert w.overlay.view.frame_index == held and np.array_equal(w.overlay.image_array(), held_pixels)
    qtbot.keyClick(w, Qt.Key.Key_C)
    cap = w.exam.captures[-1]
    assert cap.frame_index == held and not cap.auto
    png = cv2.imread(str(cap.image_path), cv2.IMREAD_UNCHANGED)
    assert png is not None and np.array_equal(png, held_pixels)  # the scan region as shown
    rec = json.loads(cap.json_path.read_text())
    assert rec["frame"] == held and rec["truth"]["frame"] == held
    assert w.strip.count() == 1
    qtbot.mouseClick(w.controls.freeze_button, Qt.MouseButton.LeftButton)
    assert not w.frozen
    qtbot.waitUntil(lambda: w.overlay.view.frame_index > held, timeout=3000)


def test_record_writes_what_run_writes(make_window, qtbot):
    w = make_window(lambda: FakeLiveSource(fps=60))
    wait_frames(qtbot, w, 2)
    qtbot.keyClick(w, Qt.Key.Key_R)
    assert w.bridge.recorder.active and w.controls.record_button.isChecked()
    rec = w.bridge.recorder
    # 15 s, not 5: on a fresh clone's cold disk the first annotated.mp4 took longer than 5 s once (CI, 2026-11-30)
    qtbot.waitUntil(lambda: rec.frames >= 12 or rec.error is not None, timeout=15000)
    assert rec.error is None and rec.frames >= 12, (rec.error, rec.frames, rec.dropped)
    qtbot.mouseClick(w.controls.record_button, Qt.MouseButton.LeftButton)
    assert not w.bridge.recorder.active
    folder = w.exam.folder / "recording-01"
    lines = [json.loads(x) for x in (folder / "hints.jsonl").read_text().splitlines()]
    assert len(lines) >= 12
    for key in ("frame", "t_capture_ns", "e2e_ms", "stages_ms", "quality", "guidance", "interpreter", "missed_budget"):
        assert key in lines[0]
    assert [x["frame"] for x in lines] == sorted(x["frame"] for x in lines)
    cap = cv2.VideoCapture(str(folder / "annotated.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == len(lines)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["recording"]["frames"] == len(lines) and summary["backend"] == "ort"
    assert summary["recording"]["first_frame"] == lines[0]["frame"]


def test_auto_capture_fills_the_strip_and_report_lists_findings(make_window, qtbot):
    w = make_window(lambda: FakeLiveSource(fps=60), autocapture=AutoCaptureConfig(threshold=0.5, stable_frames=5, cooldown_frames=10, view_change=0.0))
    qtbot.waitUntil(lambda: len(w.exam.captures) >= 2, timeout=8000)
    caps = list(w.exam.captures)
    assert w.strip.count() >= 2
    for c in caps:
        assert c.auto and c.quality >= 0.5
        assert c.image_path.is_file() and c.json_path.is_file()
    view = w.end_exam()
    qtbot.waitUntil(view.isVisible, timeout=2000)
    caps = w.exam.captures
    assert view.findings() == [c.finding_text for c in caps]
    assert any(c.has_finding for c in caps)  # tiny models: good quality -> the interpreter speaks
    folder = w.last_report_dir
    rep = json.loads((folder / "report.json").read_text())
    assert [im["finding"] for im in rep["images"]] == [c.finding_text for c in caps]
    txt = (folder / "report.txt").read_text()
    for c in caps:
        assert c.finding_text in txt
        assert (folder / f"image_{c.number:02d}.png").is_file()
    sheet = cv2.imread(str(folder / "report.png"))
    assert sheet is not None and sheet.shape[0] > 200


def test_a_source_that_fails_shows_a_message_and_the_app_recovers(make_window, qtbot, tmp_path):
    w = make_window(f"dicom:{tmp_path}/missing.dcm")
    qtbot.waitUntil(lambda: w.overlay.status.message is not None, timeout=5000)
    assert "not found" in w.overlay.status.message
    w.overlay.grab()
    assert "Cannot open the source" in w.overlay.painted["texts"]
    assert w.isVisible() and not w.bridge.running
    w.open_source("bogus:thing")
    qtbot.waitUntil(lambda: w.overlay.status.message is not None and "unknown source scheme" in w.overlay.status.message, timeout=5000)
    w.open_source(lambda: FakeLiveSource(fps=60))
    wait_frames(qtbot, w, 3)
    assert w.overlay.status.message is None


def test_a_slow_source_never_freezes_the_window(make_window, qtbot):
    release = threading.Event()

    def slow_open():  # a device or stream that takes its time to answer
        release.wait(3.0)
        return FakeLiveSource(fps=60, uri="fake:slow")

    w = make_window(slow_open)
    qtbot.waitUntil(lambda: w.bridge._opening, timeout=2000)
    t0 = time.monotonic()
    w.open_source(lambda: FakeLiveSource(fps=60, uri="fake:quick"))
    assert time.monotonic() - t0 < 0.5  # not blocked by the open in progress
    wait_frames(qtbot, w, 3)
    release.set()  # the old open returns: that session closes its source and ends
    qtbot.waitUntil(lambda: not any(t.is_alive() for t in w.bridge._abandoned), timeout=3000)
    assert w.bridge.source.uri == "fake:quick"


def test_without_models_the_image_still_shows(make_window, qtbot, tmp_path):
    w = make_window(lambda: FakeLiveSource(fps=60), engines=tmp_path / "no-engines")
    wait_frames(qtbot, w, 3)
    assert w.overlay.status.note and "No models" in w.overlay.status.note
    assert not w.controls.record_button.isEnabled() and not w.controls.capture_button.isEnabled()
    assert w.overlay.view.meter is None


def test_no_signal_is_shown_for_a_stalled_live_source(make_window, qtbot):
    class Stalled(FakeLiveSource):
        def read(self, timeout_s=1.0):
            time.sleep(min(timeout_s, 0.05))
            return None

    src = Stalled()
    src.status_text = "no signal"
    w = make_window(lambda: src)
    qtbot.waitUntil(lambda: w.overlay.status.no_signal, timeout=3000)
    w.overlay.grab()
    assert "NO SIGNAL" in w.overlay.painted["texts"]


def test_closing_the_window_stops_the_pipeline_and_leaves_no_thread(make_window, qtbot):
    w = make_window(lambda: FakeLiveSource(fps=60))
    wait_frames(qtbot, w, 3)
    qtbot.keyClick(w, Qt.Key.Key_R)
    pipe = w.bridge.pipeline
    assert pipe is not None and pipe.status == "running"
    w.close()
    assert not w.bridge.running and pipe.status == "stopped"
    assert (w.exam.folder / "recording-01" / "summary.json").is_file()  # a recording is finished on close
    # no_thread_leak (via make_window) fails the test if any thread is left


@pytest.mark.skipif(not HAVE_SIM, reason="the simulator (edge_assist.sources.sim) is not installed")
def test_displays_at_least_30_fps_with_the_simulator(make_window, qtbot):
    w = make_window("sim:liver?seed=1")  # the sim's own 30 fps
    wait_frames(qtbot, w, 5)
    n0, t0 = w.overlay.frames_painted, time.monotonic()
    qtbot.wait(2000)
    fps = (w.overlay.frames_painted - n0) / (time.monotonic() - t0)
    # 30 fps is the source's rate; allow for a shared, noisy 2-core machine.
    assert fps >= 27, f"displayed {fps:.1f} fps"


def test_cli_ui_screenshot(tmp_path, tiny_engines, no_thread_leak, qapp, monkeypatch):
    from edge_assist import cli

    monkeypatch.chdir(tmp_path)  # exams go to ./out/ui
    out = tmp_path / "shot.png"
    src = "sim:liver?seed=2" if HAVE_SIM else "dicom:" + __import__("pydicom.data", fromlist=["x"]).get_testdata_file("examples_ybr_color.dcm")
    rc = cli.main(["ui", "--source", src, "--engines", str(tiny_engines), "--screenshot", str(out), "--frames", "8"])
    assert rc == 0
    img = QImage(str(out))
    assert img.width() >= 1000 and img.height() >= 600
    # Quality meter colours appear at the top left where the meter is drawn.
    meter_area = QRectF(0, 0, 200, 200)
    assert sum(colour_pixels(img, meter_area, c) for c in theme.BAND_COLOURS.values()) > 150


def test_build_uri():
    assert build_uri("sim", "thyroid") == "sim:thyroid"
    assert build_uri("igtl", "10.0.0.2:18944") == "igtl://10.0.0.2:18944"
    assert build_uri("igtl", "") == "igtl://127.0.0.1:18944"
    assert build_uri("device", "2") == "device:2"
    assert build_uri("dicom", " /a/b.dcm ") == "dicom:/a/b.dcm"


def test_a_long_hint_shrinks_to_fit_a_narrow_window(qtbot):
    ov = OverlayWidget()
    qtbot.addWidget(ov)
    ov.resize(760, 560)
    r = make_result(score=0.0, action="slide_feet", reasons=("shadowing",))
    g, q = r.hints.guidance, r.hints.quality
    long_text = guidance_text(g, q, sweeping=True)  # what the hints say while sweeping back on a blank image
    r.hints = Hints(r.hints.frame_index, r.hints.t_capture_ns, q, g, None, r.hints.quality_text, long_text)
    ov.set_result(r)
    ov.grab()
    text, rect, font = ov.painted["guidance"]
    assert text == long_text and text.endswith("toward the feet side")
    assert QFontMetricsF(font).horizontalAdvance(text) <= rect.width()  # all of it shows
    assert font.pixelSize() < 27  # smaller than the normal hint font at this size
