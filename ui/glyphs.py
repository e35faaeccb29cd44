"""One glyph per probe action (vocab.ACTIONS), as filled QPainterPaths.

Every glyph lives in the unit box [-1, 1] x [-1, 1] with y pointing down (Qt
screen coordinates), so "toward the head" is up. Paths are built once,
merged into one non-overlapping outline (`simplified()`) and cached; drawing
a glyph is a translate, a scale and one fill.

  slide_*     straight block arrows (left, right, head = up, feet = down)
  rotate_*    curved arrows (clockwise / counter-clockwise)
  fan_*       a probe with a vertical curved arrow (tilt toward head / feet)
  rock_*      a probe with a curved arrow over its top (in-plane tilt)
  depth_*     a scan sector with a depth ruler and an arrow (deeper / shallower)
  gain_*      a brightness sun with a plus or minus
  hold        a check mark
"""

from __future__ import annotations

import math
from functools import lru_cache

from PyQt6.QtCore import QPointF, QRectF, Qt
from PyQt6.QtGui import QBrush, QColor, QPainter, QPainterPath, QPainterPathStroker, QPen, QPolygonF, QTransform

from edge_assist.vocab import ACTIONS

__all__ = ["glyph_path", "draw_glyph", "GLYPH_KIND"]

# What kind of symbol each action gets (used by tests and the legend).
GLYPH_KIND = {
    "slide_left": "arrow", "slide_right": "arrow", "slide_head": "arrow", "slide_feet": "arrow",
    "rotate_cw": "curved_arrow", "rotate_ccw": "curved_arrow",
    "fan_toward": "fan", "fan_away": "fan",
    "rock_left": "rock", "rock_right": "rock",
    "depth_up": "depth", "depth_down": "depth",
    "gain_up": "gain", "gain_down": "gain",
    "hold": "check",
}


_MERGE_SCALE = 200.0


def _stroke(path: QPainterPath, width: float, cap=Qt.PenCapStyle.FlatCap, join=Qt.PenJoinStyle.MiterJoin) -> QPainterPath:
    s = QPainterPathStroker()
    s.setWidth(width)
    s.setCapStyle(cap)
    s.setJoinStyle(join)
    return s.createStroke(path)


def _polygon(points) -> QPainterPath:
    p = QPainterPath()
    p.addPolygon(QPolygonF([QPointF(x, y) for x, y in points]))
    p.closeSubpath()
    return p


def _block_arrow(angle_deg: float) -> QPainterPath:
    """A fat arrow pointing along +x, rotated by angle_deg (screen, clockwise)."""
    shaft_w, head_w, head_len, x0, x1 = 0.42, 1.15, 0.78, -0.92, 0.92
    xs = x1 - head_len
    pts = [
        (x0, -shaft_w / 2), (xs, -shaft_w / 2), (xs, -head_w / 2), (x1, 0.0),
        (xs, head_w / 2), (xs, shaft_w / 2), (x0, shaft_w / 2),
    ]
    return QTransform().rotate(angle_deg).map(_polygon(pts))


def _arc_arrow(cx: float, cy: float, r: float, start_deg: float, span_deg: float, width: float, head: float) -> QPainterPath:
    """A curved arrow along a circle (Qt angles: counter-clockwise positive on
    screen), arrowhead at the end of the span."""
    end = start_deg + span_deg
    # Leave room for the head: the stroke stops short of the tip.
    trim = math.degrees(head / r) * (1 if span_deg > 0 else -1)
    arc = QPainterPath()
    rect = QRectF(cx - r, cy - r, 2 * r, 2 * r)
    arc.arcMoveTo(rect, start_deg)
    arc.arcTo(rect, start_deg, span_deg - trim)
    out = _stroke(arc, width)
    # The head sits on the circle: base centre where the stroke stops, tip at
    # the end angle, so that it follows the curve instead of its tangent.
    def on_circle(deg: float) -> tuple[float, float]:
        a = math.radians(deg)
        return cx + r * math.cos(a), cy - r * math.sin(a)

    px, py = on_circle(end - trim)
    tx, ty = on_circle(end)
    length = math.hypot(tx - px, ty - py) or 1.0
    dx, dy = (tx - px) / length, (ty - py) / length
    nx, ny = -dy, dx
    tip = (tx, ty)
    hw = head * 0.72
    out.addPath(_polygon([tip, (px + nx * hw, py + ny * hw), (px - nx * hw, py - ny * hw)]))
    return out


def _probe(cx: float, top: float, bottom: float, w: float) -> QPainterPath:
    """A probe seen from the operator: a body with a wider footprint and a cable stub."""
    p = QPainterPath()
    body = QRectF(cx - w / 2, top, w, bottom - top)
    p.addRoundedRect(body, w * 0.3, w * 0.3)
    foot_h = (bottom - top) * 0.22
    p.addRoundedRect(QRectF(cx - w * 0.75, bottom - foot_h, w * 1.5, foot_h), foot_h * 0.35, foot_h * 0.35)
    p.addRect(QRectF(cx - w * 0.12, top - 0.16, w * 0.24, 0.18))
    return p


def _sector() -> QPainterPath:
    """Outline of a curvilinear scan sector, apex at the top."""
    apex_y, r, half = -0.95, 1.75, 34.0
    rect = QRectF(-r, apex_y - r, 2 * r, 2 * r)
    p = QPainterPath(QPointF(0, apex_y))
    p.arcTo(rect, -90 - half, 2 * half)
    p.closeSubpath()
    return _stroke(p, 0.13, join=Qt.PenJoinStyle.RoundJoin)


def _sun(cx: float, cy: float, r: float, rays: int = 8) -> QPainterPath:
    p = QPainterPath()
    p.addEllipse(QPointF(cx, cy), r, r)
    spokes = QPainterPath()
    for i in range(rays):
        a = 2 * math.pi * i / rays
        spokes.moveTo(cx + math.cos(a) * r * 1.45, cy + math.sin(a) * r * 1.45)
        spokes.lineTo(cx + math.cos(a) * r * 2.05, cy + math.sin(a) * r * 2.05)
    p.addPath(_stroke(spokes, r * 0.42, cap=Qt.PenCapStyle.RoundCap))
    return p


def _sign(cx: float, cy: float, half: float, thick: float, plus: bool) -> QPainterPath:
    p = QPainterPath()
    p.addRect(QRectF(cx - half, cy - thick / 2, 2 * half, thick))
    if plus:
        p.addRect(QRectF(cx - thick / 2, cy - half, thick, 2 * half))
    return p


def _check() -> QPainterPath:
    p = QPainterPath(QPointF(-0.72, 0.02))
    p.lineTo(-0.22, 0.55)
    p.lineTo(0.78, -0.55)
    return _stroke(p, 0.34, cap=Qt.PenCapStyle.RoundCap, join=Qt.PenJoinStyle.RoundJoin)


def _build(action: str) -> QPainterPath:
    path = QPainterPath()
    path.setFillRule(Qt.FillRule.WindingFill)
    if action.startswith("slide_"):
        angle = {"slide_right": 0.0, "slide_feet": 90.0, "slide_left": 180.0, "slide_head": 270.0}[action]
        path.addPath(_block_arrow(angle))
    elif action in ("rotate_cw", "rotate_ccw"):
        # Starts at the top-left, sweeps 270 degrees around the centre.
        if action == "rotate_cw":
            path.addPath(_arc_arrow(0.0, 0.0, 0.6, 150.0, -250.0, 0.26, 0.55))
        else:
            path.addPath(_arc_arrow(0.0, 0.0, 0.6, 30.0, 250.0, 0.26, 0.55))
    elif action in ("fan_toward", "fan_away"):
        path.addPath(_probe(-0.3, -0.35, 0.85, 0.36))
        # A vertical arc beside the probe: the tail tips toward the head (up) or feet (down).
        if action == "fan_toward":
            path.addPath(_arc_arrow(-0.3, 0.3, 0.85, -40.0, 95.0, 0.2, 0.42))
        else:
            path.addPath(_arc_arrow(-0.3, 0.1, 0.85, 40.0, -95.0, 0.2, 0.42))
    elif action in ("rock_left", "rock_right"):
        path.addPath(_probe(0.0, -0.05, 0.85, 0.36))
        # An arc over the probe, pivoting on its footprint.
        if action == "rock_right":
            path.addPath(_arc_arrow(0.0, 0.85, 1.45, 122.0, -64.0, 0.2, 0.42))
        else:
            path.addPath(_arc_arrow(0.0, 0.85, 1.45, 58.0, 64.0, 0.2, 0.42))
    elif action in ("depth_up", "depth_down"):
        path.addPath(_sector())
        ruler = QPainterPath()
        for i in range(4):
            y = -0.45 + i * 0.36
            ruler.addRect(QRectF(-0.98, y - 0.045, 0.22 if i % 2 else 0.32, 0.09))
        path.addPath(ruler)
        # More depth: the arrow goes down into the body; less depth: up.
        arrow = _block_arrow(90.0 if action == "depth_up" else 270.0)
        path.addPath(QTransform().translate(0.12, 0.12).scale(0.5, 0.62).map(arrow))
    elif action in ("gain_up", "gain_down"):
        path.addPath(_sun(-0.22, -0.22, 0.3))
        path.addPath(_sign(0.5, 0.55, 0.36, 0.17, plus=action == "gain_up"))
    elif action == "hold":
        path.addPath(_check())
    else:
        raise KeyError(f"no glyph for action {action!r}; known: {', '.join(ACTIONS)}")
    # simplified() flattens curves with a tolerance in path units: merge at
    # a large scale so that arcs stay round, then come back to the unit box.
    big = QTransform.fromScale(_MERGE_SCALE, _MERGE_SCALE).map(path).simplified()
    return QTransform.fromScale(1 / _MERGE_SCALE, 1 / _MERGE_SCALE).map(big)


@lru_cache(maxsize=None)
def glyph_path(action: str) -> QPainterPath:
    """The cached unit-box path of an action's glyph (KeyError if unknown)."""
    return _build(action)


def draw_glyph(
    painter: QPainter,
    action: str,
    center: QPointF,
    size: float,
    fill: QColor,
    outline: QColor | None = None,
) -> None:
    """Fill the action's glyph centred at `center`, `size` pixels across."""
    path = glyph_path(action)
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    painter.translate(center)
    painter.scale(size / 2.0, size / 2.0)
    if outline is not None:
        pen = QPen(outline)
        pen.setCosmetic(True)
        pen.setWidthF(max(1.5, size / 40.0))
        painter.setPen(pen)
    else:
        painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QBrush(fill))
    painter.drawPath(path)
    painter.restore()
