"""The draft report view shown at the end of an exam."""

from __future__ import annotations

from pathlib import Path

from PyQt6.QtCore import QBuffer, QByteArray, QIODevice, QSize, Qt, pyqtSignal
from PyQt6.QtGui import QIcon, QPixmap
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import theme
from .capture import Capture
from .overlay import qimage_view

THUMB = 112


def thumbnail(pixels, size: int = THUMB) -> QPixmap:
    img, _keep = qimage_view(pixels)
    # fromImage copies, so `_keep` may go once the pixmap exists.
    return QPixmap.fromImage(img).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)


class ReportView(QDialog):
    new_exam_requested = pyqtSignal()

    def __init__(self, report: dict, captures: list[Capture], parent: QWidget | None = None):
        super().__init__(parent)
        self.report = report
        self.setWindowTitle("Draft report – edge-assist")
        self.setModal(False)
        self.resize(900, 680)
        self.setStyleSheet(theme.STYLE + "QDialog { background: #141820; }")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(20, 18, 20, 16)
        lay.setSpacing(10)

        title = QLabel("Draft report")
        title.setStyleSheet("font-size: 22px; font-weight: bold; color: #f2f5f8;")
        lay.addWidget(title)
        warn = QLabel(f"{report['status'].capitalize()}. {report['disclaimer']}")
        warn.setWordWrap(True)
        warn.setStyleSheet("color: #f5a524;")
        lay.addWidget(warn)
        meta = QLabel(f"Source: {report['source']}   ·   {report['created']}")
        meta.setStyleSheet("color: #8a96a8;")
        lay.addWidget(meta)

        s = report["summary"]
        impression = QLabel(s["impression"])
        impression.setWordWrap(True)
        impression.setStyleSheet("font-size: 16px; color: #f2f5f8; padding: 10px; background: #0e1117; border: 1px solid #232a36; border-radius: 6px;")
        lay.addWidget(QLabel("<b style='color:#8a96a8'>IMPRESSION (DRAFT)</b>"))
        lay.addWidget(impression)
        counts = QLabel(
            f"{s['images']} image{'s' if s['images'] != 1 else ''} captured · {s['images_with_findings']} with findings · "
            f"{s['images_abstained']} abstained · structures: {', '.join(s['structures_seen']) or 'none named'}"
        )
        counts.setStyleSheet("color: #a9b4c2;")
        counts.setWordWrap(True)
        lay.addWidget(counts)
        if s["lesions"]:
            les = QLabel("Lesions:\n" + "\n".join(f"  • {x}" for x in s["lesions"]))
            les.setStyleSheet("color: #e8edf3;")
            les.setWordWrap(True)
            lay.addWidget(les)

        self.table = QTableWidget(len(captures), 3)
        self.table.setHorizontalHeaderLabels(["Image", "Quality", "Draft finding"])
        self.table.verticalHeader().setVisible(False)
        self.table.setIconSize(QSize(THUMB, THUMB))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setWordWrap(True)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Fixed)
        hh.setSectionResizeMode(1, QHeaderView.ResizeMode.Fixed)
        hh.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(0, THUMB + 90)
        self.table.setColumnWidth(1, 120)
        for row, (c, im) in enumerate(zip(captures, report["images"])):
            it = QTableWidgetItem(QIcon(thumbnail(c.pixels)), f"#{c.number}\nframe {c.frame_index}")
            self.table.setItem(row, 0, it)
            q = QTableWidgetItem(f"{im['quality']['score'] * 100:.0f}  ({'auto' if c.auto else 'manual'})")
            q.setForeground(theme.BAND_COLOURS[theme.band(c.quality)])
            self.table.setItem(row, 1, q)
            age = c.finding_age
            extra = "" if not age else f"\n(findings from {age} frame{'s' if age != 1 else ''} earlier)"
            f = QTableWidgetItem(c.finding_text + extra)
            if not c.has_finding:
                f.setForeground(theme.TEXT_DIM)
            self.table.setItem(row, 2, f)
            self.table.setRowHeight(row, THUMB + 12)
        lay.addWidget(self.table, 1)

        bottom = QHBoxLayout()
        self.saved_label = QLabel("")
        self.saved_label.setStyleSheet("color: #8a96a8;")
        self.saved_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        bottom.addWidget(self.saved_label, 1)
        new_exam = QPushButton("New exam")
        new_exam.clicked.connect(self._new_exam)
        close = QPushButton("Close")
        close.setObjectName("primary")
        close.clicked.connect(self.close)
        bottom.addWidget(new_exam)
        bottom.addWidget(close)
        lay.addLayout(bottom)

    def findings(self) -> list[str]:
        """The finding texts listed, in order (for tests)."""
        return [self.table.item(r, 2).text().split("\n")[0] for r in range(self.table.rowCount())]

    def set_saved(self, folder: Path) -> None:
        self.saved_label.setText(f"Saved: {folder}/report.json, report.txt, report.png, image_NN.png")

    def sheet_png(self) -> bytes:
        """The view rendered as a PNG (the report's picture)."""
        pix = self.grab()
        data = QByteArray()
        buf = QBuffer(data)
        buf.open(QIODevice.OpenModeFlag.WriteOnly)
        pix.save(buf, "PNG")
        buf.close()
        return bytes(data)

    def _new_exam(self) -> None:
        self.new_exam_requested.emit()
        self.close()
