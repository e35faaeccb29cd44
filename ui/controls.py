"""Controls: the bedside side panel and the compact layout's touch bar.

Both only emit signals; the main window does the work. Buttons never take
keyboard focus, so the arrow keys keep driving the simulated probe.
"""

from __future__ import annotations

from PyQt6.QtCore import QSize, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QPainter
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QMenu,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

SIM_PRESETS = ("liver", "thyroid", "cardiac")

# (label, scheme) in the order the source menu lists them.
SOURCE_CHOICES = (
    ("Simulator", "sim"),
    ("Video file", "file"),
    ("DICOM file", "dicom"),
    ("Image folder", "folder"),
    ("Capture device", "device"),
    ("OpenIGTLink", "igtl"),
)

DEFAULT_IGTL = "127.0.0.1:18944"

# Keys that drive the simulated probe -> vocab action.
SIM_KEY_ACTIONS = {
    Qt.Key.Key_Left: "slide_left",
    Qt.Key.Key_Right: "slide_right",
    Qt.Key.Key_Up: "slide_head",
    Qt.Key.Key_Down: "slide_feet",
    Qt.Key.Key_Q: "rotate_ccw",
    Qt.Key.Key_E: "rotate_cw",
    Qt.Key.Key_W: "fan_toward",
    Qt.Key.Key_S: "fan_away",
    Qt.Key.Key_A: "rock_left",
    Qt.Key.Key_D: "rock_right",
    Qt.Key.Key_Plus: "depth_up",
    Qt.Key.Key_Equal: "depth_up",  # the + key without Shift
    Qt.Key.Key_Minus: "depth_down",
    Qt.Key.Key_Underscore: "depth_down",
    Qt.Key.Key_BracketRight: "gain_up",
    Qt.Key.Key_BracketLeft: "gain_down",
}

KEY_HELP = (
    ("← → ↑ ↓", "slide along the image (← →) or across it (↑ head side)"),
    ("Q / E", "rotate ccw / cw"),
    ("W / S", "fan toward head / feet"),
    ("A / D", "rock left / right"),
    ("+ / −", "depth more / less"),
    ("[ / ]", "gain less / more"),
    ("Space", "freeze"),
    ("C · R", "capture · record"),
)


def build_uri(scheme: str, value: str) -> str:
    """A source URI from a scheme and what the user typed or picked."""
    value = value.strip()
    if scheme == "sim":
        return f"sim:{value or SIM_PRESETS[0]}"
    if scheme == "igtl":
        value = value or DEFAULT_IGTL
        return value if value.startswith("igtl://") else f"igtl://{value}"
    if scheme == "device":
        return f"device:{value or 0}"
    return f"{scheme}:{value}"


def split_for_controls(uri: str) -> tuple[str, str]:
    """The inverse of build_uri, for showing the current source."""
    scheme, _, rest = uri.partition(":")
    scheme = scheme.lower()
    if scheme == "igtl":
        return "igtl", rest.lstrip("/")
    if scheme == "sim":
        return "sim", rest.split("?")[0]
    return scheme, rest


def _section(text: str) -> QLabel:
    label = QLabel(text.upper())
    label.setProperty("section", True)
    return label


def _button(text: str, *, checkable: bool = False, name: str | None = None, tip: str | None = None) -> QPushButton:
    b = QPushButton(text)
    b.setCheckable(checkable)
    b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    if name:
        b.setObjectName(name)
    if tip:
        b.setToolTip(tip)
    return b


class ControlsPanel(QWidget):
    """The bedside side panel: source, exam buttons, auto-capture, key help."""

    open_requested = pyqtSignal(str)
    freeze_toggled = pyqtSignal(bool)
    record_toggled = pyqtSignal(bool)
    capture_requested = pyqtSignal()
    end_exam_requested = pyqtSignal()
    autocapture_changed = pyqtSignal(bool, float, int)  # enabled, threshold 0..1, stable frames

    def __init__(self, *, threshold: float = 0.7, stable_frames: int = 15, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("controls")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.setFixedWidth(300)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(16, 14, 16, 14)
        lay.setSpacing(8)

        title = QLabel("edge-assist")
        title.setStyleSheet("font-size: 20px; font-weight: bold; color: #f2f5f8;")
        sub = QLabel("Bedside scanning assistant")
        sub.setStyleSheet("color: #8a96a8;")
        lay.addWidget(title)
        lay.addWidget(sub)

        # -- source
        lay.addWidget(_section("Source"))
        self.kind = QComboBox()
        for label, scheme in SOURCE_CHOICES:
            self.kind.addItem(label, scheme)
        self.kind.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        lay.addWidget(self.kind)
        self.arg_stack = QStackedWidget()
        self.preset = QComboBox()
        for name in SIM_PRESETS:
            self.preset.addItem(f"{name.capitalize()} phantom", name)
        self.preset.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.path = QLineEdit()
        self.path.setPlaceholderText("path…")
        browse = _button("Browse…")
        browse.clicked.connect(self._browse)
        path_row = QWidget()
        pr = QHBoxLayout(path_row)
        pr.setContentsMargins(0, 0, 0, 0)
        pr.addWidget(self.path, 1)
        pr.addWidget(browse)
        self.device = QSpinBox()
        self.device.setRange(0, 63)
        self.device.setPrefix("device ")
        self.device.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.address = QLineEdit(DEFAULT_IGTL)
        self.address.setPlaceholderText("host:port (PLUS, 3D Slicer)")
        for w in (self.preset, path_row, self.device, self.address):
            self.arg_stack.addWidget(w)
        lay.addWidget(self.arg_stack)
        self.open_button = _button("Open source", name="primary")
        self.open_button.clicked.connect(self._emit_open)
        self.path.returnPressed.connect(self._emit_open)
        self.address.returnPressed.connect(self._emit_open)
        lay.addWidget(self.open_button)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self._kind_changed()

        # -- exam
        lay.addWidget(_section("Exam"))
        grid = QGridLayout()
        grid.setSpacing(8)
        self.freeze_button = _button("Freeze", checkable=True, name="freeze", tip="Hold the image (Space)")
        self.capture_button = _button("Capture", tip="Add the shown frame to the strip (C)")
        self.record_button = _button("Record", checkable=True, name="record", tip="Annotated video + hints.jsonl, as `edge-assist run` writes them (R)")
        self.end_button = _button("End exam…", tip="Draft report from the captured frames")
        grid.addWidget(self.freeze_button, 0, 0)
        grid.addWidget(self.capture_button, 0, 1)
        grid.addWidget(self.record_button, 1, 0)
        grid.addWidget(self.end_button, 1, 1)
        lay.addLayout(grid)
        self.freeze_button.toggled.connect(self.freeze_toggled)
        self.record_button.toggled.connect(self.record_toggled)
        self.capture_button.clicked.connect(self.capture_requested)
        self.end_button.clicked.connect(self.end_exam_requested)

        # -- auto-capture
        lay.addWidget(_section("Auto-capture"))
        self.auto = QCheckBox("Capture the best frames")
        self.auto.setChecked(True)
        self.auto.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        lay.addWidget(self.auto)
        row = QGridLayout()
        row.setHorizontalSpacing(8)
        self.threshold = QSpinBox()
        self.threshold.setRange(10, 99)
        self.threshold.setValue(int(round(threshold * 100)))
        self.stable = QSpinBox()
        self.stable.setRange(2, 300)
        self.stable.setValue(stable_frames)
        self.stable.setSuffix(" frames")
        for i, (text, w) in enumerate((("Quality at least", self.threshold), ("Stable for", self.stable))):
            w.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
            label = QLabel(text)
            label.setStyleSheet("color: #a9b4c2;")
            row.addWidget(label, i, 0)
            row.addWidget(w, i, 1)
        lay.addLayout(row)
        self.auto.toggled.connect(self._emit_auto)
        self.threshold.valueChanged.connect(self._emit_auto)
        self.stable.valueChanged.connect(self._emit_auto)

        # -- keys
        lay.addWidget(_section("Simulator keys"))
        keys = QGridLayout()
        keys.setHorizontalSpacing(10)
        keys.setVerticalSpacing(3)
        for i, (k, what) in enumerate(KEY_HELP):
            kl = QLabel(k)
            kl.setStyleSheet("color: #e8edf3; font-family: 'DejaVu Sans Mono'; font-weight: bold;")
            wl = QLabel(what)
            wl.setStyleSheet("color: #a9b4c2;")
            keys.addWidget(kl, i, 0)
            keys.addWidget(wl, i, 1)
        lay.addLayout(keys)
        lay.addStretch(1)
        note = QLabel("Research and training tool –\nnot for diagnosis.")
        note.setStyleSheet("color: #f5a524; font-size: 12px;")
        lay.addWidget(note)

    # -- helpers
    def scheme(self) -> str:
        return self.kind.currentData()

    def _kind_changed(self) -> None:
        scheme = self.scheme()
        self.arg_stack.setCurrentIndex({"sim": 0, "file": 1, "dicom": 1, "folder": 1, "device": 2, "igtl": 3}[scheme])
        self.path.setPlaceholderText({"file": "video file (mp4, avi, mov)…", "dicom": "ultrasound DICOM file…", "folder": "folder of PNG/JPEG frames…"}.get(scheme, "path…"))

    def _browse(self) -> None:
        scheme = self.scheme()
        if scheme == "folder":
            path = QFileDialog.getExistingDirectory(self, "Image folder")
        else:
            flt = "DICOM (*.dcm *.DCM);;All files (*)" if scheme == "dicom" else "Video (*.mp4 *.avi *.mov *.mkv *.m4v);;All files (*)"
            path, _ = QFileDialog.getOpenFileName(self, "Open", "", flt)
        if path:
            self.path.setText(path)
            self._emit_open()

    def current_uri(self) -> str:
        scheme = self.scheme()
        value = {
            "sim": self.preset.currentData() or "",
            "device": str(self.device.value()),
            "igtl": self.address.text(),
        }.get(scheme, self.path.text())
        return build_uri(scheme, value)

    def _emit_open(self) -> None:
        self.open_requested.emit(self.current_uri())

    def _emit_auto(self, *_) -> None:
        self.autocapture_changed.emit(self.auto.isChecked(), self.threshold.value() / 100.0, self.stable.value())

    def show_source(self, uri: str) -> None:
        """Reflect the source in use without emitting anything."""
        scheme, value = split_for_controls(uri)
        idx = self.kind.findData(scheme)
        if idx < 0:
            return
        self.kind.blockSignals(True)
        self.kind.setCurrentIndex(idx)
        self.kind.blockSignals(False)
        self._kind_changed()
        if scheme == "sim":
            i = self.preset.findData(value)
            if i >= 0:
                self.preset.setCurrentIndex(i)
        elif scheme == "device":
            try:
                self.device.setValue(int(value))
            except ValueError:
                pass
        elif scheme == "igtl":
            self.address.setText(value)
        else:
            self.path.setText(value)

    def set_models_available(self, ok: bool) -> None:
        self.record_button.setEnabled(ok)
        self.capture_button.setEnabled(ok)
        self.end_button.setEnabled(ok)


class TouchBar(QWidget):
    """The compact layout's row of large touch targets."""

    open_requested = pyqtSignal(str)
    freeze_toggled = pyqtSignal(bool)
    record_toggled = pyqtSignal(bool)
    capture_requested = pyqtSignal()
    end_exam_requested = pyqtSignal()

    MIN_HEIGHT = 64

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("touchbar")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.setStyleSheet("#touchbar { background: #141820; border-top: 1px solid #232a36; }")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(10, 8, 10, 8)
        lay.setSpacing(10)
        self.source_button = _button("Source", name="source")
        self.freeze_button = _button("Freeze", checkable=True, name="freeze")
        self.capture_button = _button("Capture")
        self.record_button = _button("Record", checkable=True, name="record")
        self.end_button = _button("Report")
        for b in (self.source_button, self.freeze_button, self.capture_button, self.record_button, self.end_button):
            b.setProperty("touch", True)
            b.setMinimumSize(QSize(96, self.MIN_HEIGHT))
            lay.addWidget(b, 1)
        menu = QMenu(self)
        for name in SIM_PRESETS:
            menu.addAction(f"Simulator – {name}", lambda n=name: self.open_requested.emit(build_uri("sim", n)))
        menu.addSeparator()
        menu.addAction("Video file…", lambda: self._pick("file"))
        menu.addAction("DICOM file…", lambda: self._pick("dicom"))
        menu.addAction("Image folder…", lambda: self._pick("folder"))
        menu.addAction("Capture device 0", lambda: self.open_requested.emit(build_uri("device", "0")))
        menu.addAction("OpenIGTLink…", self._pick_igtl)
        self.source_menu = menu
        self.source_button.setMenu(menu)
        self.freeze_button.toggled.connect(self.freeze_toggled)
        self.record_button.toggled.connect(self.record_toggled)
        self.capture_button.clicked.connect(self.capture_requested)
        self.end_button.clicked.connect(self.end_exam_requested)

    def _pick(self, scheme: str) -> None:
        if scheme == "folder":
            path = QFileDialog.getExistingDirectory(self, "Image folder")
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Open")
        if path:
            self.open_requested.emit(build_uri(scheme, path))

    def _pick_igtl(self) -> None:
        text, ok = QInputDialog.getText(self, "OpenIGTLink", "Server (host:port)", text=DEFAULT_IGTL)
        if ok:
            self.open_requested.emit(build_uri("igtl", text))

    def show_source(self, uri: str) -> None:
        self.source_button.setToolTip(uri)

    def set_captures(self, n: int) -> None:
        self.capture_button.setText(f"Capture ({n})" if n else "Capture")

    def set_models_available(self, ok: bool) -> None:
        self.record_button.setEnabled(ok)
        self.capture_button.setEnabled(ok)
        self.end_button.setEnabled(ok)


class CaptureStrip(QListWidget):
    """The horizontal strip of captured frames (thumbnails), with a hint while empty."""

    EMPTY_TEXT = "The best frames are captured here automatically – or press C to capture the shown frame"

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("strip")
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setFlow(QListWidget.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListWidget.Movement.Static)
        self.setIconSize(QSize(88, 88))
        self.setSpacing(4)
        self.setFixedHeight(122)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)

    def paintEvent(self, event) -> None:  # noqa: N802
        super().paintEvent(event)
        if self.count() == 0:
            p = QPainter(self.viewport())
            p.setPen(QColor(110, 120, 135))
            p.drawText(self.viewport().rect(), int(Qt.AlignmentFlag.AlignCenter), self.EMPTY_TEXT)
            p.end()

