"""Colours, quality bands and the dark style shared by the window's parts."""

from __future__ import annotations

from PyQt6.QtGui import QColor, QFont, QPalette

from edge_assist.hints import GOOD_QUALITY

DISCLAIMER_SHORT = "Research and training tool – not for diagnosis"

POOR_BELOW = 0.4  # same bands as the recorder's annotated video (record.py)
GOOD_ABOVE = GOOD_QUALITY  # 0.7: hints call the image good from here

# Quality bands: name, lower bound (0..1), colour.
BAND_COLOURS = {
    "poor": QColor(229, 72, 77),  # red
    "fair": QColor(245, 165, 36),  # amber
    "good": QColor(48, 196, 141),  # green
}
BAND_LABEL = {"poor": "Poor", "fair": "Fair", "good": "Good"}

BG = QColor(11, 14, 19)
PANEL = QColor(14, 18, 25, 200)
PANEL_EDGE = QColor(255, 255, 255, 34)
TEXT = QColor(236, 240, 245)
TEXT_DIM = QColor(150, 160, 175)
ACCENT = QColor(92, 170, 255)  # frozen, links
REC = QColor(235, 64, 64)
LESION = QColor(255, 214, 0)  # the measured lesion outline (yellow: not a quality colour)
HOLD = BAND_COLOURS["good"]


def band(score: float) -> str:
    """'poor' < 0.4 <= 'fair' < GOOD_QUALITY (0.7) <= 'good'."""
    if score < POOR_BELOW:
        return "poor"
    if score < GOOD_QUALITY:
        return "fair"
    return "good"


def band_steady(score: float, previous: str | None, margin: float = 0.02) -> str:
    """band() with hysteresis: a score wobbling on a band edge keeps the
    colour it had until it is `margin` past the edge (no flicker)."""
    new = band(score)
    if previous is None or new == previous or band(score + margin) == band(score - margin):
        return new
    return previous


def font(px: float, *, bold: bool = False, mono: bool = False) -> QFont:
    f = QFont("DejaVu Sans Mono" if mono else "DejaVu Sans")
    if mono:
        f.setStyleHint(QFont.StyleHint.Monospace)
    f.setPixelSize(max(8, int(round(px))))
    f.setBold(bold)
    return f


def dark_palette() -> QPalette:
    p = QPalette()
    role = QPalette.ColorRole
    p.setColor(role.Window, QColor(20, 24, 31))
    p.setColor(role.WindowText, TEXT)
    p.setColor(role.Base, QColor(14, 17, 23))
    p.setColor(role.AlternateBase, QColor(26, 31, 40))
    p.setColor(role.Text, TEXT)
    p.setColor(role.Button, QColor(34, 40, 51))
    p.setColor(role.ButtonText, TEXT)
    p.setColor(role.Highlight, QColor(46, 110, 190))
    p.setColor(role.HighlightedText, QColor(255, 255, 255))
    p.setColor(role.ToolTipBase, QColor(34, 40, 51))
    p.setColor(role.ToolTipText, TEXT)
    p.setColor(role.PlaceholderText, TEXT_DIM)
    for grp in (QPalette.ColorGroup.Disabled,):
        p.setColor(grp, role.ButtonText, QColor(110, 118, 130))
        p.setColor(grp, role.WindowText, QColor(110, 118, 130))
        p.setColor(grp, role.Text, QColor(110, 118, 130))
    return p


STYLE = """
QWidget { font-family: "DejaVu Sans"; font-size: 13px; }
QMainWindow, #central { background: #0b0e13; }
#controls { background: #141820; border-left: 1px solid #232a36; }
#controls QLabel.section, QLabel[section="true"] {
    color: #8a96a8; font-size: 11px; font-weight: bold; letter-spacing: 1px; margin-top: 6px;
}
QPushButton {
    background: #222834; color: #e8edf3; border: 1px solid #2f3846; border-radius: 6px; padding: 7px 12px;
}
QPushButton:hover { background: #2a3240; }
QPushButton:pressed { background: #1c222c; }
QPushButton:disabled { color: #6b7480; background: #1a1f27; }
QPushButton:checked { background: #2e6ebe; border-color: #4a8ad8; }
QPushButton#record:checked { background: #c93a3a; border-color: #e05555; }
QPushButton#freeze:checked { background: #2e6ebe; border-color: #4a8ad8; }
QPushButton#primary { background: #2e6ebe; border-color: #4a8ad8; }
QPushButton[touch="true"] { font-size: 18px; font-weight: bold; padding: 10px 16px; border-radius: 10px; }
QComboBox, QLineEdit {
    background: #0e1117; color: #e8edf3; border: 1px solid #2f3846; border-radius: 5px; padding: 4px 6px;
}
QSpinBox { padding: 3px 4px; }
QComboBox QAbstractItemView { background: #141820; color: #e8edf3; selection-background-color: #2e6ebe; }
QCheckBox { color: #d5dbe3; spacing: 8px; }
QCheckBox::indicator { width: 15px; height: 15px; border: 1px solid #3a4452; border-radius: 4px; background: #0e1117; }
QCheckBox::indicator:checked { background: #2e6ebe; border-color: #4a8ad8; }
#stripHeader { background: #0e1117; padding: 6px 12px 0px 12px; font-size: 11px; border-top: 1px solid #232a36; }
QListWidget#strip { background: #0e1117; border: none; padding: 0px 6px; }
QListWidget#strip::item { color: #c9d1db; border-radius: 6px; padding: 2px; }
QListWidget#strip::item:selected { background: #1f3a5f; }
QStatusBar { background: #141820; color: #a9b4c2; border-top: 1px solid #232a36; }
QTextBrowser { background: #0e1117; color: #e8edf3; border: 1px solid #232a36; }
QTableWidget { background: #0e1117; color: #e8edf3; gridline-color: #232a36; border: 1px solid #232a36; }
QHeaderView::section { background: #1a1f28; color: #a9b4c2; border: none; padding: 4px; }
QScrollBar:horizontal, QScrollBar:vertical { background: #0e1117; }
"""
