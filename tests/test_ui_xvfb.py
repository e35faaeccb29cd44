"""A real X11 window under Xvfb: the app runs in its own process on the xcb
platform, the X server's pixels are grabbed (QScreen.grabWindow) and the
overlay is checked in the picture. Skips with a reason where Xvfb or Qt's
xcb plugin (its libxcb-* libraries) is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("PyQt6.QtGui")

from PyQt6.QtGui import QImage  # noqa: E402

try:
    import edge_assist.sources.sim  # noqa: F401

    SOURCE = "sim:liver?seed=2"
except ImportError:  # the simulator is optional here: a DICOM cine works too
    from pydicom.data import get_testdata_file

    SOURCE = "dicom:" + get_testdata_file("examples_ybr_color.dcm")

# Band colours (theme.BAND_COLOURS) as RGB.
BANDS = {"poor": (229, 72, 77), "fair": (245, 165, 36), "good": (48, 196, 141)}


@pytest.fixture(scope="module")
def xvfb():
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (Debian: apt-get install xvfb)")
    r, w = os.pipe()
    # -displayfd: Xvfb picks a free display number itself and writes it to w.
    proc = subprocess.Popen(
        [exe, "-displayfd", str(w), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(w)
    try:
        with os.fdopen(r) as f:
            number = f.readline().strip()
        if not number:
            pytest.skip("Xvfb did not start")
        yield f":{number}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _rgb(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes())
    a = np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine())
    return a[:, : img.width() * 3].reshape(img.height(), img.width(), 3).copy()


def _count(a: np.ndarray, rgb, tol=12) -> int:
    return int((np.abs(a.astype(int) - np.array(rgb)).max(axis=2) <= tol).sum())


@pytest.mark.parametrize("compact", [False, True], ids=["bedside", "compact"])
def test_real_window_screenshot_shows_the_overlay(xvfb, tiny_engines, tmp_path, compact):
    out = tmp_path / "window.png"
    env = dict(os.environ, DISPLAY=xvfb, QT_QPA_PLATFORM="xcb")
    cmd = [sys.executable, "-m", "edge_assist.ui.app", "--source", SOURCE, "--engines", str(tiny_engines),
           "--screenshot", str(out), "--frames", "15", "--out", str(tmp_path / "exams"), "--timeout", "30"]
    if compact:
        cmd.append("--compact")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
    if 'platform plugin "xcb"' in p.stderr:
        pytest.skip("Qt's xcb platform plugin cannot load here (libxcb-icccm4, libxcb-keysyms1, libxcb-cursor0 ... missing)")
    assert p.returncode == 0, p.stderr[-2000:]
    img = QImage(str(out))
    assert not img.isNull()
    w, h = (900, 600) if compact else (1280, 800)
    assert (img.width(), img.height()) == (w, h)
    a = _rgb(img)
    # The quality meter, top left: its arc in one band colour, and the dim
    # band track; the rest of the picture is not all one colour.
    meter = a[: int(h * 0.35), : int(w * 0.3)]
    bright = max(_count(meter, c) for c in BANDS.values())
    assert bright > 150, f"no meter colour pixels in the meter area ({bright})"
    # The guidance glyph, bottom centre: near-white filled shape.
    glyph = a[int(h * 0.55):, int(w * 0.2): int(w * 0.8)]
    assert _count(glyph, (236, 240, 245), tol=10) + _count(glyph, (48, 196, 141), tol=10) > 200
    assert a.std() > 20
