"""Video files and image folders, written here with OpenCV and read back."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edge_assist.errors import EndOfStream, SourceError
from edge_assist.sources import open_source

W, H = 160, 120
BITS = 8  # frame index as 8 black/white blocks: survives lossy codecs
COLOUR_RGB = (200, 100, 40)  # a strip that tells RGB from BGR


def make_frame(i: int, *, seed: int | None = None) -> np.ndarray:
    """BGR frame whose index can be decoded after compression."""
    f = np.zeros((H, W, 3), np.uint8)
    bw = W // BITS
    for b in range(BITS):
        if i >> b & 1:
            f[:32, b * bw:(b + 1) * bw] = 255
    f[32:48] = COLOUR_RGB[::-1]
    # Noise below makes frames big, so a truncation lands mid-stream.
    f[48:] = np.random.default_rng(i if seed is None else seed).integers(0, 256, (H - 48, W, 3))
    return f


def decode_index(rgb: np.ndarray) -> int:
    bw = W // BITS
    return sum(1 << b for b in range(BITS) if rgb[6:26, b * bw + 4:(b + 1) * bw - 4].mean() > 128)


def assert_rgb_strip(rgb: np.ndarray) -> None:
    got = rgb[36:44, 8:-8].reshape(-1, 3).mean(0)
    assert np.all(np.abs(got - COLOUR_RGB) < 25), got


def write_video(path, fourcc: str, n: int, fps: float = 30.0) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert w.isOpened()
    for i in range(n):
        w.write(make_frame(i))
    w.release()


def read_all(src, deadline_s: float = 20.0) -> list:
    frames, deadline = [], time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            f = src.read(timeout_s=1.0)
        except EndOfStream:
            return frames
        if f is not None:
            frames.append(f)
    raise AssertionError("stream did not end in time")


def one_line_error(uri: str, **kw) -> str:
    with pytest.raises(SourceError) as ei:
        open_source(uri, **kw)
    msg = str(ei.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("ext, fourcc", [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_every_frame_exact_count_and_content(tmp_path, ext, fourcc):
    path = tmp_path / f"clip{ext}"
    write_video(path, fourcc, 30)
    with open_source(f"file:{path}", every_frame=True) as src:
        assert not src.is_live and src.frame_count == 30 and src.nominal_fps == pytest.approx(30.0)
        frames = read_all(src)
        with pytest.raises(EndOfStream):  # stays ended
            src.read(0.1)
    assert [f.index for f in frames] == list(range(30))
    assert [decode_index(f.pixels) for f in frames] == list(range(30))
    for f in frames:
        assert f.pixels.shape == (H, W, 3) and f.pixels.dtype == np.uint8
        assert_rgb_strip(f.pixels)
    t = [f.t_capture_ns for f in frames]
    assert t == sorted(t)


def test_paced_releases_at_file_rate(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, "MJPG", 8, fps=10.0)
    with open_source(f"file:{path}") as src:
        assert src.nominal_fps == pytest.approx(10.0)
        first = src.read(1.0)
        assert first is not None and first.index == 0
        # Frame 1 is due 100 ms later: a short read times out (None, not the
        # end) and the decoded frame is kept for the next read.
        assert src.read(timeout_s=0.01) is None
        rest = read_all(src)
    frames = [first] + rest
    assert [decode_index(f.pixels) for f in frames] == list(range(8))
    # Never early: 7 periods of 100 ms (sleep only overshoots on a busy machine).
    assert (frames[-1].t_capture_ns - frames[0].t_capture_ns) / 1e9 >= 0.7 - 0.005


def test_fps_option_overrides_file_rate(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, "MJPG", 3, fps=30.0)
    with open_source(f"file:{path}", fps=5) as src:
        assert src.nominal_fps == 5.0


def test_truncated_avi_delivers_frames_up_to_the_damage(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, "MJPG", 30)
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with open_source(f"file:{cut}", every_frame=True) as src:
        frames = read_all(src)
    assert 5 <= len(frames) < 30
    assert [decode_index(f.pixels) for f in frames] == list(range(len(frames)))


def test_truncated_mp4_is_a_clear_error(tmp_path):
    # OpenCV writes the mp4 index (moov atom) last: a cut mp4 cannot be opened.
    path = tmp_path / "clip.mp4"
    write_video(path, "mp4v", 30)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "cannot open video" in one_line_error(f"file:{cut}")


def test_bad_video_files(tmp_path):
    assert "not found" in one_line_error(f"file:{tmp_path / 'missing.mp4'}")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    assert "cannot open video" in one_line_error(f"file:{garbage}")
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    assert "empty" in one_line_error(f"file:{empty}")
    other = tmp_path / "clip.xyz"
    other.write_bytes(b"x" * 100)
    assert "unsupported video type" in one_line_error(f"file:{other}")
    assert "folder:" in one_line_error(f"file:{tmp_path}")
    dcm = tmp_path / "cine.dcm"
    dcm.write_bytes(b"x" * 200)
    assert "dicom:" in one_line_error(f"file:{dcm}")


def write_png(path, marker: int, *, grey: bool = False) -> None:
    img = make_frame(marker, seed=0)
    if grey:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert cv2.imwrite(str(path), img)


def test_folder_natural_order_skips_unreadable(tmp_path):
    for n in (1, 2, 9, 10, 11, 100):
        write_png(tmp_path / f"frame{n}.png", n)
    cv2.imwrite(str(tmp_path / "frame20.JPG"), make_frame(20, seed=0), [cv2.IMWRITE_JPEG_QUALITY, 95])
    (tmp_path / "frame50.png").write_bytes(b"not a png at all")
    (tmp_path / "notes.txt").write_text("ignored")
    with open_source(f"folder:{tmp_path}", every_frame=True) as src:
        assert src.frame_count == 8
        frames = read_all(src)
        assert src.frames_skipped == 1 and src.skipped_paths[0].name == "frame50.png"
    assert [decode_index(f.pixels) for f in frames] == [1, 2, 9, 10, 11, 20, 100]
    # Index = position in the sorted folder: the unreadable image leaves a gap.
    assert [f.index for f in frames] == [0, 1, 2, 3, 4, 5, 7]
    for f in frames:
        assert f.pixels.shape == (H, W, 3)
        assert_rgb_strip(f.pixels)


def test_folder_grey_and_paced_fps_query(tmp_path):
    for n in range(4):
        write_png(tmp_path / f"img_{n:03d}.png", n, grey=True)
    with open_source(f"folder:{tmp_path}?fps=20") as src:
        assert src.nominal_fps == 20.0
        frames = read_all(src)
    assert [decode_index(f.pixels) for f in frames] == [0, 1, 2, 3]
    assert all(f.pixels.ndim == 2 and f.pixels.dtype == np.uint8 for f in frames)
    assert (frames[-1].t_capture_ns - frames[0].t_capture_ns) / 1e9 >= 3 / 20 - 0.005


def test_folder_errors(tmp_path):
    assert "no images" in one_line_error(f"folder:{tmp_path}")
    assert "not found" in one_line_error(f"folder:{tmp_path / 'nope'}")
    assert "fps" in one_line_error(f"folder:{tmp_path}?fps=0")
    assert "unknown option" in one_line_error(f"folder:{tmp_path}?speed=2")
