"""The live image with the operator's overlay painted on it.

`set_result()` takes a FrameResult (or a PreviewResult without hints) in the
UI thread: it wraps the frame's pixels in a QImage without copying them (the
numpy array is kept alive beside it, bytesPerLine = the row stride, so a
scan-region crop is a view too) and derives what to show (`view`). Painting
draws image and hints of the same result together: a hint never lags or
leads its image. The main window decides when to paint (a ~60 Hz timer that
coalesces results), so this widget does no timing of its own.

Bedside layout: quality meter (arc gauge, colour bands, number, band word and
main reason) top left; source, status and latency HUD top right with the
findings panel under it; the guidance glyph and its text bottom centre;
REC / FROZEN badges top centre; the disclaimer bottom left.
Compact layout: the image, the meter and the glyph only (plus the badges and
messages that must never be hidden).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from PyQt6.QtCore import QPointF, QRectF, QSize, Qt
from PyQt6.QtGui import QColor, QFontMetricsF, QImage, QPainter, QPen, QPolygonF
from PyQt6.QtWidgets import QSizePolicy, QWidget

from edge_assist.lesion_measure import fresh_outline_fractions

from . import theme
from .capture import display_crop
from .glyphs import draw_glyph

_FORMATS = {1: QImage.Format.Format_Grayscale8, 3: QImage.Format.Format_RGB888, 4: QImage.Format.Format_RGBA8888}


def qimage_view(pixels: np.ndarray) -> tuple[QImage, np.ndarray]:
    """A QImage over a uint8 HxW / HxWx{1,3,4} array, sharing its memory.

    Rows may be strided (a crop of a larger frame): bytesPerLine is the row
    stride. Only when the pixels within a row are not packed (a column-step
    view) is a copy made. Returns the image and the array it points into;
    keep that array alive as long as the image.
    """
    a = pixels
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    ch = 1 if a.ndim == 2 else a.shape[2]
    if a.ndim == 3 and ch == 1:
        a = a[:, :, 0]
    if ch not in _FORMATS:
        raise ValueError(f"cannot show pixels of shape {pixels.shape}")
    if a.strides[-1] != 1 or (a.ndim == 3 and a.strides[1] != ch) or a.strides[0] < 0:
        a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    img = QImage(a.ctypes.data, w, h, a.strides[0], _FORMATS[ch])
    return img, a


@dataclass
class OverlayView:
    """What the overlay shows for one result (kept for tests and screenshots)."""

    frame_index: int | None = None
    has_hints: bool = False
    meter: int | None = None  # 0..100
    band: str = ""
    quality_text: str = ""
    reasons: list[str] = field(default_factory=list)
    glyph: str | None = None
    guidance_text: str = ""
    confidence: float = 0.0
    hold: bool = False
    finding_text: str | None = None
    finding_age: int | None = None
    abstained: bool = True
    e2e_ms: float | None = None
    missed_budget: bool = False
    spacing_mm: tuple[float, float] | None = None
    lesion_outline: list | None = None  # the measured lesion, fractions of the displayed crop


def view_of(result) -> OverlayView:
    v = OverlayView(frame_index=int(result.frame.index))
    h = getattr(result, "hints", None)
    region = None
    prepared = getattr(result, "prepared", None)
    if prepared is not None:
        region = prepared.region
    elif result.frame.region is not None:
        region = result.frame.region
    if region is not None and region.spacing_mm is not None:
        v.spacing_mm = (float(region.spacing_mm[0]), float(region.spacing_mm[1]))
    if h is None:
        return v
    v.has_hints = True
    score = float(np.clip(h.quality.score, 0.0, 1.0))
    v.meter = int(round(score * 100))
    v.band = theme.band(score)
    v.quality_text = h.quality_text
    v.reasons = list(h.quality.reasons)
    v.glyph = h.guidance.action
    v.guidance_text = h.guidance_text
    v.confidence = float(h.guidance.confidence)
    v.hold = h.guidance.action == "hold"
    interp = h.interpreter
    if interp is not None:
        v.finding_text = interp.text
        v.abstained = bool(interp.abstained)
        v.finding_age = max(0, int(result.frame.index) - int(interp.frame_index))
        v.lesion_outline = fresh_outline_fractions(result)
    v.e2e_ms = getattr(result, "e2e_ms", None)
    v.missed_budget = bool(getattr(result, "missed_budget", False))
    return v


@dataclass
class StatusView:
    """Window state the overlay shows beside the hints."""

    source: str = ""
    source_status: str = ""
    frozen: bool = False
    recording: bool = False
    rec_seconds: float = 0.0
    no_signal: bool = False
    waiting: bool = False  # opening / no frame yet
    message_title: str | None = None  # e.g. "Cannot open the source"
    message: str | None = None
    note: str | None = None  # one line under the HUD, e.g. "no models: preview only"
    toast: str | None = None  # a short-lived line (e.g. the last probe move)


def _elide(fm: QFontMetricsF, text: str, width: float) -> str:
    return fm.elidedText(text, Qt.TextElideMode.ElideMiddle, max(10.0, width))


class OverlayWidget(QWidget):
    def __init__(self, compact: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.compact = compact
        self.view = OverlayView()
        self.status = StatusView()
        self.hud: dict = {}
        self.display_fps = 0.0
        self.frames_painted = 0  # paints that showed a new frame
        self.painted: dict = {}  # what the last paint drew (meter, glyph, texts): for tests
        self._qimage: QImage | None = None
        self._array: np.ndarray | None = None  # keeps the QImage's memory alive
        self._painted_index: int | None = None
        self._new_frame = False
        self._paint_times: deque[float] = deque(maxlen=240)
        self._t_capture_ns = 0
        self.screen_lag_ms: deque[float] = deque(maxlen=120)  # capture -> painted, per shown frame
        self._hud_bottom = 0.0  # where the HUD panel ends (the findings go below)
        self._band: str | None = None
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(320, 240)

    def sizeHint(self) -> QSize:
        return QSize(960, 720) if not self.compact else QSize(800, 520)

    # ----------------------------------------------------------------- inputs
    def set_result(self, result) -> None:
        """Show this result (image + hints) at the next paint."""
        crop = display_crop(result)
        self._qimage, self._array = qimage_view(crop)
        view = view_of(result)
        if view.has_hints:
            view.band = theme.band_steady(float(result.hints.quality.score), self._band)
        self._band = view.band or None
        self.view = view
        self._t_capture_ns = int(result.frame.t_capture_ns)
        self._new_frame = True
        self.update()

    def screen_lag_p50(self) -> float:
        """Median time from capture to the frame's paint (ms), recent frames."""
        return float(np.median(self.screen_lag_ms)) if self.screen_lag_ms else 0.0

    def clear_image(self) -> None:
        self._qimage, self._array = None, None
        self._band = None
        self.view = OverlayView()
        self.update()

    def set_status(self, **changes) -> None:
        for k, v in changes.items():
            if not hasattr(self.status, k):
                raise AttributeError(f"StatusView has no field {k!r}")
            setattr(self.status, k, v)
        self.update()

    def set_hud(self, hud: dict) -> None:
        self.hud = dict(hud)
        self.update()

    def image_array(self) -> np.ndarray | None:
        return self._array

    # ----------------------------------------------------------------- layout
    def _scale(self) -> float:
        w, h = self.width(), self.height()
        if self.compact:
            return float(np.clip(min(w / 800.0, h / 520.0), 0.6, 2.5))
        return float(np.clip(min(w / 1000.0, h / 720.0), 0.6, 2.0))

    def image_rect(self) -> QRectF:
        if self._qimage is None:
            return QRectF()
        iw, ih = self._qimage.width(), self._qimage.height()
        W, H = float(self.width()), float(self.height())
        k = min(W / iw, H / ih)
        w, h = iw * k, ih * k
        return QRectF((W - w) / 2, (H - h) / 2, w, h)

    # ----------------------------------------------------------------- painting
    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setRenderHint(QPainter.RenderHint.TextAntialiasing, True)
        p.fillRect(self.rect(), theme.BG)
        painted: dict = {"texts": []}
        s = self._scale()
        if self._qimage is not None:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            target = self.image_rect()
            p.drawImage(target, self._qimage)
            self._depth_ruler(p, target, s)
            self._lesion_outline(p, target, s, painted)
        v = self.view
        if v.has_hints:
            self._quality_panel(p, s, painted)
            self._guidance_panel(p, s, painted)
            if not self.compact:
                self._findings_panel(p, s, painted)
        if not self.compact:
            self._hud_panel(p, s, painted)
        self._badges(p, s, painted)
        self._centre_messages(p, s, painted)
        self._disclaimer(p, s, painted)
        p.end()
        if self._new_frame:
            self._new_frame = False
            if v.frame_index != self._painted_index:
                self._painted_index = v.frame_index
                self.frames_painted += 1
                if self._t_capture_ns:
                    self.screen_lag_ms.append((time.monotonic_ns() - self._t_capture_ns) / 1e6)
                now = time.monotonic()
                self._paint_times.append(now)
                while self._paint_times and now - self._paint_times[0] > 2.0:
                    self._paint_times.popleft()
        if len(self._paint_times) > 1:
            span = self._paint_times[-1] - self._paint_times[0]
            self.display_fps = (len(self._paint_times) - 1) / span if span > 0 else 0.0
        painted["frame_index"] = v.frame_index
        self.painted = painted

    # -- pieces
    def _panel(self, p: QPainter, rect: QRectF, radius: float, edge: QColor | None = None) -> None:
        p.save()
        p.setPen(QPen(edge or theme.PANEL_EDGE, 1.0))
        p.setBrush(theme.PANEL)
        p.drawRoundedRect(rect, radius, radius)
        p.restore()

    def _text(self, p: QPainter, rect: QRectF, text: str, f, colour: QColor, flags, painted: dict) -> None:
        p.setFont(f)
        p.setPen(colour)
        p.drawText(rect, int(flags), text)
        painted["texts"].append(text)

    def _gauge(self, p: QPainter, c: QPointF, r: float, width: float, score: float, band: str) -> None:
        """A 270-degree arc gauge: dim colour bands as the track, the value
        arc in its band's colour, threshold ticks."""
        rect = QRectF(c.x() - r, c.y() - r, 2 * r, 2 * r)
        start, sweep = 225.0, -270.0  # from bottom-left, clockwise to bottom-right
        bands = (("poor", 0.0, theme.POOR_BELOW), ("fair", theme.POOR_BELOW, theme.GOOD_ABOVE), ("good", theme.GOOD_ABOVE, 1.0))
        pen = QPen()
        pen.setWidthF(width)
        pen.setCapStyle(Qt.PenCapStyle.FlatCap)
        for name, lo, hi in bands:
            col = QColor(theme.BAND_COLOURS[name])
            col.setAlpha(60)
            pen.setColor(col)
            p.setPen(pen)
            p.drawArc(rect, int((start + sweep * lo) * 16), int(sweep * (hi - lo) * 16))
        if score > 0:
            pen.setColor(theme.BAND_COLOURS[band])
            pen.setCapStyle(Qt.PenCapStyle.RoundCap)
            p.setPen(pen)
            p.drawArc(rect, int(start * 16), int(sweep * min(score, 1.0) * 16))
        # Ticks at the band edges.
        tick = QPen(QColor(255, 255, 255, 150), max(1.0, width * 0.14))
        p.setPen(tick)
        for edge in (theme.POOR_BELOW, theme.GOOD_ABOVE):
            a = math.radians(start + sweep * edge)
            r0, r1 = r - width * 0.75, r + width * 0.75
            p.drawLine(QPointF(c.x() + r0 * math.cos(a), c.y() - r0 * math.sin(a)), QPointF(c.x() + r1 * math.cos(a), c.y() - r1 * math.sin(a)))

    def _quality_panel(self, p: QPainter, s: float, painted: dict) -> None:
        v = self.view
        m = 14 * s
        colour = theme.BAND_COLOURS[v.band]
        if self.compact:
            r = 58 * s
            rect = QRectF(m, m, 2 * r + 36 * s, 2 * r + 36 * s)
            self._panel(p, rect, 14 * s)
            c = QPointF(rect.center().x(), rect.center().y() + 4 * s)
            self._gauge(p, c, r, 15 * s, v.meter / 100.0, v.band)
            self._text(p, QRectF(c.x() - r, c.y() - 30 * s, 2 * r, 50 * s), str(v.meter), theme.font(44 * s, bold=True), theme.TEXT, Qt.AlignmentFlag.AlignCenter, painted)
            self._text(p, QRectF(c.x() - r, c.y() + 18 * s, 2 * r, 22 * s), "QUALITY", theme.font(12 * s, bold=True), theme.TEXT_DIM, Qt.AlignmentFlag.AlignCenter, painted)
            painted["meter"] = (v.meter, QRectF(c.x() - r, c.y() - r, 2 * r, 2 * r))
            return
        rect = QRectF(m, m, 390 * s, 132 * s)
        self._panel(p, rect, 12 * s)
        r = 46 * s
        c = QPointF(rect.left() + 16 * s + r, rect.top() + 16 * s + r + 4 * s)
        self._gauge(p, c, r, 12 * s, v.meter / 100.0, v.band)
        self._text(p, QRectF(c.x() - r, c.y() - 24 * s, 2 * r, 40 * s), str(v.meter), theme.font(34 * s, bold=True), theme.TEXT, Qt.AlignmentFlag.AlignCenter, painted)
        self._text(p, QRectF(c.x() - r, c.y() + 14 * s, 2 * r, 18 * s), "QUALITY", theme.font(10 * s, bold=True), theme.TEXT_DIM, Qt.AlignmentFlag.AlignCenter, painted)
        painted["meter"] = (v.meter, QRectF(c.x() - r, c.y() - r, 2 * r, 2 * r))
        tx = c.x() + r + 22 * s
        tw = rect.right() - tx - 14 * s
        self._text(p, QRectF(tx, rect.top() + 16 * s, tw, 26 * s), theme.BAND_LABEL[v.band].upper() + " IMAGE", theme.font(16 * s, bold=True), colour, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, painted)
        detail = v.quality_text
        if not v.reasons and detail.lower() == theme.BAND_LABEL[v.band].lower() + " image":
            detail = "No problem detected in this view"  # not "GOOD IMAGE / Good image"
        self._text(
            p, QRectF(tx, rect.top() + 46 * s, tw, rect.height() - 56 * s), detail, theme.font(15.5 * s), theme.TEXT,
            Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap, painted,
        )

    def _guidance_panel(self, p: QPainter, s: float, painted: dict) -> None:
        v = self.view
        if not v.glyph:
            return
        colour = theme.HOLD if v.hold else theme.TEXT
        W, H = float(self.width()), float(self.height())
        bottom = H - 30 * s
        if self.compact:
            d = 150 * s
            rect = QRectF((W - d) / 2, bottom - d, d, d)
            self._panel(p, rect, d / 2, edge=theme.HOLD if v.hold else None)
            draw_glyph(p, v.glyph, rect.center(), d * 0.62, colour, QColor(0, 0, 0, 200))
            painted["glyph"] = (v.glyph, rect)
            return
        d = 92 * s
        f = theme.font(27 * s, bold=True)
        text_w = QFontMetricsF(f).horizontalAdvance(v.guidance_text)
        room = W - 2 * (d + 80 * s)
        if text_w > room > 0:  # a long hint (e.g. a sweep back) in a narrow window: smaller, not cut off
            f = theme.font(max(14 * s, math.floor(27 * s * room / text_w)), bold=True)  # floor: rounding up could overflow
            text_w = QFontMetricsF(f).horizontalAdvance(v.guidance_text)
        inner_w = min(text_w, room)
        w = 18 * s + d + 22 * s + inner_w + 30 * s
        h = d + 28 * s
        rect = QRectF((W - w) / 2, bottom - h, w, h)
        self._panel(p, rect, h / 2, edge=theme.HOLD if v.hold else None)
        gc = QPointF(rect.left() + 14 * s + d / 2, rect.center().y())
        p.save()
        p.setPen(Qt.PenStyle.NoPen)
        ring = QColor(theme.HOLD if v.hold else QColor(255, 255, 255))
        ring.setAlpha(45 if not v.hold else 70)
        p.setBrush(ring)
        p.drawEllipse(gc, d / 2, d / 2)
        p.restore()
        draw_glyph(p, v.glyph, gc, d * 0.66, colour, QColor(0, 0, 0, 190))
        painted["glyph"] = (v.glyph, QRectF(gc.x() - d / 2, gc.y() - d / 2, d, d))
        tx = gc.x() + d / 2 + 20 * s
        text_rect = QRectF(tx, rect.top() + 14 * s, inner_w + 4 * s, h * 0.5)
        self._text(p, text_rect, v.guidance_text, f, colour, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, painted)
        painted["guidance"] = (v.guidance_text, text_rect, f)
        sub = "view reached" if v.hold else f"guidance · {v.confidence:.0%} sure"
        self._text(p, QRectF(tx, rect.top() + 14 * s + h * 0.5, inner_w + 4 * s, h * 0.3), sub, theme.font(13 * s), theme.TEXT_DIM, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop, painted)

    def _right_column(self, s: float) -> QRectF:
        W = float(self.width())
        w = min(360 * s, W * 0.42)
        return QRectF(W - w - 14 * s, 14 * s, w, 0)

    def _hud_rows(self) -> list[tuple[str, str]]:
        h = self.hud
        if not h:
            return []
        if not h.get("has_pipeline", True):
            return [("engine", str(h.get("backend")))] if h.get("backend") == "no models" else []
        rows = [
            ("e2e", f"{h.get('p50', 0):.1f} / {h.get('p99', 0):.1f} ms  p50/p99"),
            ("screen", f"{self.screen_lag_p50():.1f} ms capture → shown"),
            ("rate", f"{h.get('fps', 0):.1f} fps · shown {self.display_fps:.1f}"),
            ("lost", f"misses {h.get('misses', 0)} · drops {h.get('drops', 0)}"),
        ]
        backend = str(h.get("backend", ""))
        prec = h.get("precision")
        budget = h.get("budget_ms")
        value = backend + (f" {prec}" if prec and backend != "no models" else "") + (f" · budget {budget:.0f} ms" if budget else "")
        rows.append(("engine", value))
        return rows

    def _hud_panel(self, p: QPainter, s: float, painted: dict) -> None:
        col = self._right_column(s)
        st = self.status
        rows = self._hud_rows()
        row_h = 18 * s
        h = 10 * s + 24 * s + 4 * s + len(rows) * row_h + (row_h if st.note else 0) + 10 * s
        rect = QRectF(col.left(), col.top(), col.width(), h)
        self._panel(p, rect, 10 * s)
        x, y, w = rect.left() + 14 * s, rect.top() + 10 * s, rect.width() - 28 * s
        status = st.source_status or ("opening…" if st.waiting else "")
        ok = status.startswith("ok") or status == "running"
        dot = theme.BAND_COLOURS["good"] if ok else (theme.BAND_COLOURS["poor"] if st.no_signal or st.message else theme.BAND_COLOURS["fair"])
        p.save()
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(dot)
        p.drawEllipse(QPointF(x + 5 * s, y + 12 * s), 5 * s, 5 * s)
        p.restore()
        f = theme.font(14 * s, bold=True)
        fm = QFontMetricsF(f)
        status_f = theme.font(12.5 * s)
        sw = QFontMetricsF(status_f).horizontalAdvance(status) + 6 * s
        self._text(p, QRectF(x + 16 * s, y, w - 16 * s - sw, 24 * s), _elide(fm, st.source or "no source", w - 16 * s - sw), f, theme.TEXT, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, painted)
        self._text(p, QRectF(x + w - sw, y, sw, 24 * s), status, status_f, dot if not ok else theme.TEXT_DIM, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, painted)
        y += 28 * s
        label_f, value_f = theme.font(11 * s, bold=True), theme.font(12.5 * s, mono=True)
        label_w = 58 * s
        vfm = QFontMetricsF(value_f)
        for label, value in rows:
            self._text(p, QRectF(x, y, label_w, row_h), label.upper(), label_f, theme.TEXT_DIM, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, painted)
            self._text(p, QRectF(x + label_w, y, w - label_w, row_h), _elide(vfm, value, w - label_w), value_f, QColor(205, 212, 222), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, painted)
            y += row_h
        if st.note:
            nf = theme.font(12 * s)
            self._text(p, QRectF(x, y + 2 * s, w, row_h), _elide(QFontMetricsF(nf), st.note, w), nf, theme.BAND_COLOURS["fair"], Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, painted)
        self._hud_bottom = rect.bottom()

    def _findings_panel(self, p: QPainter, s: float, painted: dict) -> None:
        v = self.view
        col = self._right_column(s)
        top = max(self._hud_bottom, col.top()) + 10 * s
        x, w = col.left(), col.width()
        body_f = theme.font(15 * s)
        text = v.finding_text or "Waiting for the interpreter…"
        inner = w - 28 * s
        fm = QFontMetricsF(body_f)
        br = fm.boundingRect(QRectF(0, 0, inner, 1000), int(Qt.TextFlag.TextWordWrap), text)
        body_h = min(br.height(), 5 * fm.lineSpacing())
        h = 12 * s + 20 * s + 8 * s + body_h + 8 * s + 18 * s + 12 * s
        rect = QRectF(x, top, w, h)
        self._panel(p, rect, 10 * s)
        tx, ty = rect.left() + 14 * s, rect.top() + 12 * s
        self._text(p, QRectF(tx, ty, inner, 20 * s), "FINDINGS · DRAFT", theme.font(11 * s, bold=True), theme.TEXT_DIM, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, painted)
        ty += 28 * s
        colour = theme.TEXT_DIM if (v.abstained or v.finding_text is None) else theme.TEXT
        f = theme.font(15 * s)
        f.setItalic(v.abstained)
        self._text(p, QRectF(tx, ty, inner, body_h + 2), text, f, colour, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap, painted)
        ty += body_h + 8 * s
        if v.finding_text is None:
            age = ""
        elif v.abstained:
            age = "abstained – image quality too low"
        elif v.finding_age:
            age = f"from frame {v.frame_index - v.finding_age} · {v.finding_age} frame{'s' if v.finding_age != 1 else ''} old"
        else:
            age = "from this frame"
        self._text(p, QRectF(tx, ty, inner, 18 * s), age, theme.font(12 * s), theme.TEXT_DIM, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, painted)
        painted["finding"] = (text, age)

    def _badges(self, p: QPainter, s: float, painted: dict) -> None:
        st = self.status
        badges = []
        if st.recording:
            secs = int(st.rec_seconds)
            badges.append((f"●  REC  {secs // 60:02d}:{secs % 60:02d}", theme.REC))
        if st.frozen:
            badges.append(("❚❚  FROZEN", theme.ACCENT))
        if self.compact and (st.no_signal or st.message):
            badges.append(("NO SIGNAL" if st.no_signal else "SOURCE ERROR", theme.BAND_COLOURS["poor"]))
        if not badges:
            return
        f = theme.font((17 if self.compact else 14) * s, bold=True)
        fm = QFontMetricsF(f)
        h = (36 if self.compact else 30) * s
        widths = [fm.horizontalAdvance(t) + 28 * s for t, _ in badges]
        gap = 10 * s
        total = sum(widths) + gap * (len(widths) - 1)
        if self.compact:
            x = self.width() - total - 14 * s
        else:
            x = (self.width() - total) / 2
        y = 14 * s
        for (text, colour), w in zip(badges, widths):
            rect = QRectF(x, y, w, h)
            p.save()
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(colour)
            p.drawRoundedRect(rect, h / 2, h / 2)
            p.restore()
            self._text(p, rect, text, f, QColor(255, 255, 255), Qt.AlignmentFlag.AlignCenter, painted)
            x += w + gap
        painted["badges"] = [t for t, _ in badges]

    def _centre_messages(self, p: QPainter, s: float, painted: dict) -> None:
        st = self.status
        W, H = float(self.width()), float(self.height())
        if st.message:
            w = min(600 * s, W - 40 * s)
            title_f, body_f = theme.font(20 * s, bold=True), theme.font(15 * s)
            fm = QFontMetricsF(body_f)
            br = fm.boundingRect(QRectF(0, 0, w - 48 * s, 1000), int(Qt.TextFlag.TextWordWrap), st.message)
            hint = "Choose another source with the controls." if not self.compact else "Tap Source to choose another."
            h = 24 * s + 30 * s + 10 * s + br.height() + 14 * s + 22 * s + 24 * s
            rect = QRectF((W - w) / 2, (H - h) / 2, w, h)
            self._panel(p, rect, 14 * s, edge=theme.BAND_COLOURS["poor"])
            x, y = rect.left() + 24 * s, rect.top() + 24 * s
            self._text(p, QRectF(x, y, w - 48 * s, 30 * s), st.message_title or "Source error", title_f, theme.BAND_COLOURS["poor"], Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, painted)
            y += 40 * s
            self._text(p, QRectF(x, y, w - 48 * s, br.height() + 4), st.message, body_f, theme.TEXT, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap, painted)
            y += br.height() + 14 * s
            self._text(p, QRectF(x, y, w - 48 * s, 22 * s), hint, theme.font(13 * s), theme.TEXT_DIM, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, painted)
            return
        if st.no_signal or (st.waiting and self._qimage is None):
            title = "NO SIGNAL" if st.no_signal else "Opening source…"
            sub = st.source
            w = min(460 * s, W - 40 * s)
            rect = QRectF((W - w) / 2, (H - 110 * s) / 2, w, 110 * s)
            self._panel(p, rect, 14 * s, edge=theme.BAND_COLOURS["poor"] if st.no_signal else None)
            self._text(p, QRectF(rect.left(), rect.top() + 18 * s, w, 40 * s), title, theme.font(28 * s, bold=True), theme.BAND_COLOURS["poor"] if st.no_signal else theme.TEXT, Qt.AlignmentFlag.AlignCenter, painted)
            fm = QFontMetricsF(theme.font(14 * s))
            self._text(p, QRectF(rect.left() + 16 * s, rect.top() + 64 * s, w - 32 * s, 24 * s), _elide(fm, sub, w - 32 * s), theme.font(14 * s), theme.TEXT_DIM, Qt.AlignmentFlag.AlignCenter, painted)
        if st.toast and not self.compact:
            f = theme.font(14 * s, bold=True)
            tw = QFontMetricsF(f).horizontalAdvance(st.toast) + 32 * s
            rect = QRectF((W - tw) / 2, 54 * s, tw, 30 * s)
            self._panel(p, rect, 15 * s)
            self._text(p, rect, st.toast, f, theme.TEXT, Qt.AlignmentFlag.AlignCenter, painted)

    def _disclaimer(self, p: QPainter, s: float, painted: dict) -> None:
        f = theme.font((11 if not self.compact else 12) * s)
        text = theme.DISCLAIMER_SHORT
        w = QFontMetricsF(f).horizontalAdvance(text) + 20 * s
        h = 20 * s
        rect = QRectF(8 * s, self.height() - h - 6 * s, w, h)
        p.save()
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(0, 0, 0, 150))
        p.drawRoundedRect(rect, h / 2, h / 2)
        p.restore()
        self._text(p, rect, text, f, QColor(190, 198, 210), Qt.AlignmentFlag.AlignCenter, painted)

    def _lesion_outline(self, p: QPainter, target: QRectF, s: float, painted: dict) -> None:
        """The region the interpreter measured the lesion on (fresh findings only)."""
        outline = self.view.lesion_outline
        if not outline:
            return
        poly = QPolygonF([QPointF(target.left() + x * target.width(), target.top() + y * target.height()) for x, y in outline])
        p.save()
        p.setPen(QPen(theme.LESION, max(1.0, 1.6 * s)))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawPolygon(poly)
        p.restore()
        painted["lesion_outline"] = len(outline)

    def _depth_ruler(self, p: QPainter, target: QRectF, s: float) -> None:
        """Centimetre ticks along the image's right edge when the spacing is known."""
        v = self.view
        if v.spacing_mm is None or self._qimage is None or v.spacing_mm[0] <= 0:
            return
        px_per_mm = target.height() / (self._qimage.height() * v.spacing_mm[0])
        if px_per_mm * 10 < 12:
            return
        depth_cm = int(self._qimage.height() * v.spacing_mm[0] / 10)
        x = target.right() - 6 * s
        p.save()
        p.setPen(QPen(QColor(220, 225, 235, 170), max(1.0, 1.2 * s)))
        p.setFont(theme.font(11 * s))
        for cm in range(1, depth_cm + 1):
            y = target.top() + cm * 10 * px_per_mm
            if y > target.bottom() - 2:
                break
            major = cm % 5 == 0
            p.drawLine(QPointF(x - (10 if major else 6) * s, y), QPointF(x, y))
            if (major or depth_cm <= 8) and y + 8 * s <= target.bottom():
                p.drawText(QRectF(x - 44 * s, y - 8 * s, 30 * s, 16 * s), int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter), str(cm))
        p.restore()


def band_colour(name: str) -> QColor:
    return QColor(theme.BAND_COLOURS[name])


__all__ = ["OverlayWidget", "OverlayView", "StatusView", "qimage_view", "view_of", "band_colour"]
