"""DICOM source: the real ultrasound files pydicom ships, plus files written here."""

from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    MPEG4HP41,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from edge_assist.errors import EndOfStream, SourceError
from edge_assist.sources import open_source
from edge_assist.sources.dicom import DicomSource

YBR = get_testdata_file("examples_ybr_color.dcm")  # SonoSite cardiac cine, JPEG YBR_FULL_422
RGB = get_testdata_file("examples_rgb_color.dcm")  # GE LOGIQ power Doppler
PALETTE = get_testdata_file("examples_palette.dcm")  # Philips C5-1, PALETTE COLOR


def read_all(src) -> list:
    frames = []
    with pytest.raises(EndOfStream):
        while True:
            f = src.read(timeout_s=5.0)
            if f is not None:
                frames.append(f)
    return frames


def write_dcm(path, frames, photometric="MONOCHROME2", bits_stored=8, **tags):
    """An uncompressed single- or multi-frame US DICOM file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundMultiFrameImageStorage, generate_uid()
    ds.Modality = "US"
    arr = np.asarray(frames)
    ds.set_pixel_data(arr if len(arr) > 1 else arr[0], photometric, bits_stored)
    if len(arr) > 1:
        ds.NumberOfFrames = len(arr)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


# -- the real files -----------------------------------------------------------------


def test_ybr_cine_frames_colour_region_and_spacing():
    with open_source(f"dicom:{YBR}", every_frame=True) as src:
        assert isinstance(src, DicomSource) and not src.is_live
        assert src.frame_count == 30
        assert src.nominal_fps == pytest.approx(30.0, rel=1e-3)  # FrameTime 33.333 ms
        frames = read_all(src)
    assert [f.index for f in frames] == list(range(30))
    f = frames[12]
    assert f.pixels.shape == (240, 320, 3) and f.pixels.dtype == np.uint8
    assert f.meta["manufacturer"] == "SonoSite, Inc." and f.meta["photometric"] == "YBR_FULL_422"

    # pydicom 3 already returns RGB for this JPEG; a second YBR->RGB turns grey
    # tissue green (G ~ 2x R). Grey tissue must have R ~ G ~ B.
    px = f.pixels.reshape(-1, 3).astype(np.float32)
    tissue = px[px.mean(axis=1) > 40]
    assert len(tissue) > 2000
    means = tissue.mean(axis=0)
    assert means.max() - means.min() < 8, means

    # Region tags are in 640x480 coordinates for 320x240 pixels: scaled by 1/2.
    r = f.region
    assert r.box == (42, 15, 298, 208)
    assert r.spacing_mm == pytest.approx((1.021, 1.021), abs=1e-3)  # 0.0510 cm x 2 -> mm
    assert "scaled" in f.meta["region_note"]
    # The screen's depth scale reads 19 (cm): region height x spacing must agree.
    assert 185 < r.height * r.spacing_mm[0] < 205


def test_rgb_power_doppler_single_frame():
    with open_source(f"dicom:{RGB}", every_frame=True) as src:
        assert src.frame_count == 1
        frames = read_all(src)
    assert len(frames) == 1
    f = frames[0]
    assert f.pixels.shape == (240, 320, 3) and f.pixels.dtype == np.uint8
    assert f.region is None  # no ultrasound region tags in this file
    assert f.meta["model"] == "LOGIQ 700"
    r, g, b = (f.pixels[..., i].astype(int) for i in range(3))
    assert ((r > 200) & (b < 80)).sum() > 500  # orange/yellow power Doppler
    grey = (abs(r - g) < 4) & (abs(g - b) < 4) & (r > 40)
    assert grey.sum() > 10000  # grey tissue stays grey


def test_palette_colour_lut_and_curvilinear_region():
    with open_source(f"dicom:{PALETTE}", every_frame=True) as src:
        f = src.read()
        with pytest.raises(EndOfStream):
            src.read()
    px = f.pixels
    assert px.shape == (350, 800, 3) and px.dtype == np.uint8
    assert px.max() == 255  # 16-bit LUT brought to 8 bits, not wrapped or clipped
    banner = px[5:40, 200:500].reshape(-1, 3).mean(axis=0)
    assert banner[2] > banner[0] + 20  # Philips' blue banner
    near_field = px[70:110, 400:500].reshape(-1, 3).astype(np.float32)
    assert near_field.mean() > 60 and np.ptp(near_field.mean(axis=0)) < 3  # grey reverberation
    r = f.region
    assert r.kind == "curvilinear" and f.meta["transducer"] == "C5-1"
    assert r.box == (120, 60, 800, 350)  # tags reach below the 350 stored rows: clipped
    assert r.spacing_mm == pytest.approx((0.2623, 0.2623), abs=1e-4)


# -- files written here --------------------------------------------------------------


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_uncompressed_monochrome_multiframe(tmp_path, photometric):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, (5, 32, 48), dtype=np.uint8)
    path = write_dcm(tmp_path / "m.dcm", stored, photometric, FrameTime=50)
    with open_source(f"dicom:{path}", every_frame=True) as src:
        assert src.frame_count == 5 and src.nominal_fps == pytest.approx(20.0)
        frames = read_all(src)
    want = 255 - stored if photometric == "MONOCHROME1" else stored  # MONOCHROME1: 0 is white
    assert len(frames) == 5
    for f, w in zip(frames, want):
        assert f.pixels.dtype == np.uint8 and f.pixels.shape == (32, 48)
        np.testing.assert_array_equal(f.pixels, w)
    assert frames[0].region is None


def test_uncompressed_ybr_full_is_converted_once(tmp_path):
    ds = pydicom.dcmread(RGB)
    rgb = ds.pixel_array
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.save_as(tmp_path / "ybr.dcm")
    with open_source(f"dicom:{tmp_path / 'ybr.dcm'}", every_frame=True) as src:
        f = src.read()
    assert np.abs(f.pixels.astype(int) - rgb).max() <= 2


def test_16bit_window_tags(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))[None].repeat(2, axis=0)
    path = write_dcm(tmp_path / "w.dcm", ramp, "MONOCHROME2", 12, WindowCenter=2048, WindowWidth=1024)
    with open_source(f"dicom:{path}", every_frame=True) as src:
        px = src.read().pixels
    assert px.dtype == np.uint8
    row, raw = px[0].astype(int), ramp[0, 0].astype(int)
    assert (row[raw <= 1535] == 0).all() and (row[raw >= 2560] == 255).all()
    assert abs(row[raw == 2048][0] - 128) <= 2


def test_16bit_min_max_is_fixed_for_the_whole_cine(tmp_path):
    f0 = np.linspace(1000, 3000, 32 * 48).reshape(32, 48).astype(np.uint16)
    f1 = np.full((32, 48), 2000, np.uint16)  # mid-range: must stay mid-grey, not stretch
    path = write_dcm(tmp_path / "mm.dcm", np.stack([f0, f1]), "MONOCHROME2", 12)
    with open_source(f"dicom:{path}", every_frame=True) as src:
        a, b = src.read().pixels, src.read().pixels
    assert a.min() == 0 and a.max() == 255
    assert abs(int(b[0, 0]) - 128) <= 2


@pytest.mark.parametrize(
    "tags, fps",
    [
        ({"CineRate": 25}, 25.0),
        ({"RecommendedDisplayFrameRate": 15}, 15.0),
        ({}, 30.0),  # default
        ({"FrameTime": 40, "CineRate": 10}, 25.0),  # FrameTime wins
    ],
)
def test_frame_rate_tags(tmp_path, tags, fps):
    path = write_dcm(tmp_path / "t.dcm", np.zeros((3, 8, 8), np.uint8), **tags)
    with open_source(f"dicom:{path}") as src:
        assert src.nominal_fps == pytest.approx(fps)


def test_frame_time_vector_paces_variable_intervals(tmp_path):
    path = write_dcm(
        tmp_path / "v.dcm",
        np.zeros((4, 8, 8), np.uint8),
        FrameTimeVector=[0, 40, 120, 40],
        FrameIncrementPointer=pydicom.tag.Tag("FrameTimeVector"),
    )
    with open_source(f"dicom:{path}") as src:
        assert src.nominal_fps == pytest.approx(1000 * 3 / 200)
        t = [f.t_capture_ns for f in read_all(src)]
    gaps_ms = np.diff(t) / 1e6
    # Loose: sleeping may overshoot, never undershoot by more than scheduling noise.
    assert gaps_ms[1] > 100 and gaps_ms[0] > 30 and gaps_ms[2] > 30
    assert (t[-1] - t[0]) / 1e6 < 1000


def test_paced_mode_releases_at_nominal_rate():
    with open_source(f"dicom:{YBR}") as src:  # 30 fps
        t0 = time.monotonic_ns()
        frames = [src.read(timeout_s=5.0) for _ in range(10)]
        elapsed = (time.monotonic_ns() - t0) / 1e9
    assert [f.index for f in frames] == list(range(10))
    # 9 periods of 33.3 ms at least; generous upper bound for a busy machine.
    assert 0.28 < elapsed < 3.0
    assert np.median(np.diff([f.t_capture_ns for f in frames])) / 1e6 > 28


def test_paced_read_times_out_without_losing_the_frame():
    with open_source(f"dicom:{YBR}", fps=4) as src:  # 250 ms period
        assert src.read(timeout_s=1.0).index == 0
        assert src.read(timeout_s=0.01) is None  # frame 1 not due yet: a timeout, not the end
        assert src.read(timeout_s=2.0).index == 1


def test_paced_mode_decodes_shortly_before_the_frame_is_due():
    """Not right after a hand-over, when the consumer works on that frame."""
    with open_source(f"dicom:{YBR}", fps=4) as src:  # 250 ms period
        assert src.read(timeout_s=1.0).index == 0
        assert src.read(timeout_s=0.01) is None
        assert src._pending is None and src._next == 1  # frame 1 (due in ~250 ms) not decoded yet
        lead_s = src._decode_lead_ns() / 1e9
        assert 0.002 <= lead_s < 0.2
        t0 = time.monotonic()
        f = src.read(timeout_s=2.0)
        assert f.index == 1 and time.monotonic() - t0 > 0.1  # released at its time, decoded on the way


def test_every_frame_mode_ignores_pacing():
    with open_source(f"dicom:{YBR}", every_frame=True, fps=2) as src:  # paced, 30 frames would take 15 s
        t0 = time.monotonic()
        assert len(read_all(src)) == 30
        assert time.monotonic() - t0 < 5.0


def test_corrupt_frame_mid_stream_is_skipped_and_counted(tmp_path):
    ds = pydicom.dcmread(YBR)
    frames = list(generate_frames(ds.PixelData, number_of_frames=30))
    frames[10] = b"\xff\xd8\xff\xdb" + bytes(range(256)) * 4 + b"\xff\xd9"  # garbage JPEG
    ds.PixelData = encapsulate(frames)
    ds.save_as(tmp_path / "c.dcm")
    with open_source(f"dicom:{tmp_path / 'c.dcm'}", every_frame=True) as src:
        got = [f.index for f in read_all(src)]
        assert src.frames_skipped == 1 and "skipped" in src.status
    assert got == [i for i in range(30) if i != 10]


def test_read_after_close_is_an_error():
    src = open_source(f"dicom:{YBR}", every_frame=True)
    src.close()
    with pytest.raises(SourceError):
        src.read()


def _region_item(box, data_type=1, spatial=1, delta_cm=0.02, units=3):
    r = Dataset()
    r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = spatial, data_type, 0
    r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = box
    r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = units
    r.PhysicalDeltaX, r.PhysicalDeltaY = delta_cm, delta_cm * 1.5
    return r


@pytest.mark.parametrize(
    "probe, kind",
    [
        ({"TransducerType": "SECTOR_PHASED"}, "phased"),
        ({"TransducerType": "LINEAR"}, "linear"),
        ({"TransducerData": ["C5-2", "", ""]}, "curvilinear"),
        ({"TransducerData": ["L12-5", "", ""]}, "linear"),
        ({"TransducerData": ["S5-1", "", ""]}, "phased"),
        ({}, None),
    ],
)
def test_regions_written_here(tmp_path, probe, kind):
    seq = [
        _region_item((0, 0, 99, 9), data_type=1),  # small tissue strip
        _region_item((10, 20, 89, 69), data_type=1),  # the largest tissue region: chosen
        _region_item((0, 70, 99, 79), data_type=3, spatial=3),  # spectral Doppler strip: ignored
    ]
    path = write_dcm(tmp_path / "r.dcm", np.zeros((1, 80, 100), np.uint8), SequenceOfUltrasoundRegions=seq, **probe)
    with open_source(f"dicom:{path}") as src:
        r = src.read().region
    assert r.box == (10, 20, 90, 70)  # Max X1/Y1 are inclusive in DICOM
    assert r.spacing_mm == pytest.approx((0.3, 0.2))  # (row, col) in mm from cm
    assert r.kind == kind


def test_region_without_cm_units_has_no_spacing(tmp_path):
    seq = [_region_item((10, 20, 89, 69), units=0)]
    path = write_dcm(tmp_path / "r.dcm", np.zeros((1, 80, 100), np.uint8), SequenceOfUltrasoundRegions=seq)
    with open_source(f"dicom:{path}") as src:
        r = src.read().region
    assert r.box == (10, 20, 90, 70) and r.spacing_mm is None


def test_file_without_preamble_is_read(tmp_path):
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundMultiFrameImageStorage, generate_uid()
    ds.set_pixel_data(np.full((16, 16), 7, np.uint8), "MONOCHROME2", 8)
    del ds.file_meta  # set_pixel_data adds one
    ds.save_as(tmp_path / "raw.dcm", implicit_vr=True, little_endian=True)  # no preamble, no file meta
    assert open(tmp_path / "raw.dcm", "rb").read(132)[128:] != b"DICM"
    with open_source(f"dicom:{tmp_path / 'raw.dcm'}", every_frame=True) as src:
        assert src.read().pixels.mean() == 7


# -- bad input: one-line SourceError ----------------------------------------------


def _truncated_native(tmp_path):
    path = write_dcm(tmp_path / "n.dcm", np.ones((4, 32, 32), np.uint8))
    raw = open(path, "rb").read()
    (tmp_path / "cut.dcm").write_bytes(raw[:-1500])
    return tmp_path / "cut.dcm"


def _truncated_jpeg(tmp_path):
    raw = open(YBR, "rb").read()
    (tmp_path / "cut.dcm").write_bytes(raw[: len(raw) // 2])
    return tmp_path / "cut.dcm"


def _not_dicom(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"this is a text file, not DICOM\n" * 20)
    return tmp_path / "x.dcm"


def _no_pixels(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, generate_uid()
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    return tmp_path / "sr.dcm"


def _with_syntax(uid):
    def make(tmp_path):
        ds = pydicom.dcmread(YBR)
        ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(tmp_path / "u.dcm")
        return tmp_path / "u.dcm"

    return make


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: p / "missing.dcm", "not found"),
        (lambda p: p, "directory"),
        (_not_dicom, "not a DICOM file"),
        (_truncated_native, "truncated"),
        (_truncated_jpeg, "truncated"),
        (_no_pixels, "no pixel data"),
        (_with_syntax(MPEG4HP41), "MPEG-4"),
    ],
    ids=["missing", "directory", "not-dicom", "truncated-native", "truncated-jpeg", "no-pixels", "mpeg4"],
)
def test_bad_input_is_a_one_line_source_error(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(SourceError) as err:
        open_source(f"dicom:{path}")
    msg = str(err.value)
    assert words in msg and "\n" not in msg, msg


def test_missing_decoder_names_the_package(tmp_path):
    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("an HTJ2K decoder is installed here")
    with pytest.raises(SourceError) as err:
        open_source(f"dicom:{_with_syntax(HTJ2KLossless)(tmp_path)}")
    assert "pylibjpeg-openjpeg" in str(err.value) and "\n" not in str(err.value)


def test_unknown_option_is_rejected():
    with pytest.raises(SourceError, match="unknown option"):
        open_source(f"dicom:{YBR}", loop=True)
