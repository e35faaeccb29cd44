"""Ultrasound DICOM (single frame or cine) as a FrameSource, via pydicom 3.

Frames are decoded lazily, one per read(), so a long cine opens at once.
Only frame 0 is decoded at open, to fail early and clearly on a bad file.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections import deque
from pathlib import Path

import numpy as np

from edge_assist.errors import EndOfStream, SourceError
from edge_assist.frames import Frame, ScanRegion
from edge_assist.sources.base import FrameSource, Pacer

DEFAULT_FPS = 30.0
DECODE_MARGIN_NS = 2_000_000  # paced: start decoding this long plus 1.5x the slowest recent decode before a frame is due
_OPTIONS = ("fps",)  # accepted **options


def open_dicom(rest: str, *, uri: str, every_frame: bool = False, **options) -> "DicomSource":
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise SourceError(f"unknown option(s) {', '.join(unknown)} for {uri!r}; accepted: {', '.join(_OPTIONS)}")
    return DicomSource(rest, uri=uri or f"dicom:{rest}", every_frame=every_frame, **options)


def _one_line(exc: BaseException) -> str:
    # pydicom messages often span lines; the CLI prints exactly one.
    return " ".join(str(exc).split()) or type(exc).__name__


class _SchedulePacer(Pacer):
    """Pacer for a FrameTimeVector: frame i is due at offsets_ns[i] after frame 0."""

    def __init__(self, offsets_ns: np.ndarray):
        super().__init__(0)
        self.offsets_ns = offsets_ns

    def _offset_ns(self, index: int) -> int:
        return int(self.offsets_ns[index])


class DicomSource(FrameSource):
    is_live = False

    def __init__(self, path: str, *, uri: str, every_frame: bool = False, fps: float | None = None):
        self.uri = uri
        self.path = Path(path).expanduser()
        self.every_frame = every_frame
        self.frames_skipped = 0
        self._closed = False
        name = str(self.path)

        if not path:
            raise SourceError(f"{uri!r} names no file; use dicom:PATH/TO/FILE.dcm")
        if self.path.is_dir():
            raise SourceError(f"{name} is a directory; give one DICOM file (use folder:{name} for an image sequence)")
        if not self.path.is_file():
            raise SourceError(f"DICOM file not found: {name}; check the path after 'dicom:'")

        ds, eof_warning = _read_dataset(self.path)
        self.ds = ds
        ts = ds.file_meta.get("TransferSyntaxUID")
        if "PixelData" not in ds:
            uid = ds.get("SOPClassUID")
            sop = uid.name if uid is not None and uid.name != str(uid) else ""  # "" = missing or cut short
            if sop and "Image Storage" not in sop and "Rows" not in ds and not eof_warning:
                raise SourceError(f"{name} contains no pixel data ({sop}); choose an ultrasound image or cine file")
            # pydicom silently drops a pixel data element cut short by EOF.
            raise SourceError(f"{name} has no pixel data ({sop or 'incomplete header'}): it is truncated or damaged; copy or export it again")
        self._decoder = _get_decoder(ts, name)

        self.rows, self.cols = int(ds.Rows), int(ds.Columns)
        self._n = _number_of_frames(ds)
        self.photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        self.bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            self._check_fragments(name)
        else:
            _check_native_length(ds, self._n, name)

        # Colour/intensity mapping decided once so every frame looks the same.
        self._palette = _palette_table(ds, name) if self.photometric == "PALETTE COLOR" else None
        self._window: tuple[float, float] | None = None  # (lo, hi) for >8-bit grey

        # Timing.
        tag_fps, offsets_ms = _timing(ds, self._n)
        if fps:  # explicit override
            self.nominal_fps, offsets_ms = float(fps), None
        else:
            self.nominal_fps = tag_fps or DEFAULT_FPS
        self._pacer: Pacer = Pacer(self.nominal_fps)
        if offsets_ms is not None:  # variable frame intervals
            self._pacer = _SchedulePacer((offsets_ms * 1e6).astype(np.int64))

        self.region, region_note = _scan_region(ds, self.rows, self.cols)
        self._meta = {
            "manufacturer": str(ds.get("Manufacturer", "")),
            "model": str(ds.get("ManufacturerModelName", "")),
            "transducer": _transducer_name(ds),
            "photometric": self.photometric,
            "transfer_syntax": getattr(ts, "name", str(ts)),
            "path": name,
            "frame_count": self._n,
        }
        if region_note:
            self._meta["region_note"] = region_note
        if "PixelSpacing" in ds:  # not an US region, but worth passing on
            self._meta["pixel_spacing_mm"] = tuple(float(v) for v in ds.PixelSpacing)

        # Decode frame 0 now: a file that cannot show a single frame is an open error.
        try:
            t0 = time.monotonic_ns()
            first = self._decode(0)
            self._decode_ns: deque[int] = deque([time.monotonic_ns() - t0], maxlen=8)
        except Exception as exc:  # any decoder plugin failure means the same to the user
            raise SourceError(f"cannot decode the pixel data of {name}: {_one_line(exc)}; the file may be damaged") from exc
        self._next = 1  # next frame to decode
        self._pending: tuple[int, np.ndarray] | None = (0, first)

    # -- FrameSource -------------------------------------------------------

    @property
    def frame_count(self) -> int:
        return self._n

    @property
    def status(self) -> str:
        if self._closed:
            return "closed"
        return f"ok ({self.frames_skipped} frames skipped)" if self.frames_skipped else "ok"

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self._closed:
            raise SourceError(f"{self.uri} is closed")
        # Paced: decode shortly before the frame is due, not right after the
        # previous hand-over, when the consumer is working on that frame and
        # the decoder (which holds the GIL for milliseconds) would compete
        # with it. The lead is the slowest recent decode plus a margin, so
        # decode time still never delays the release time.
        while self._pending is None:
            if self._next >= self._n:
                raise EndOfStream(self.uri)
            i = self._next
            if not self.every_frame and not self._pacer.wait_for(i, timeout_s, lead_ns=self._decode_lead_ns()):
                return None  # not yet time to decode it
            self._next += 1
            t0 = time.monotonic_ns()
            try:
                self._pending = (i, self._decode(i))
            except Exception:  # a damaged frame mid-stream is skipped, not fatal
                self.frames_skipped += 1
            self._decode_ns.append(time.monotonic_ns() - t0)
        i, pixels = self._pending
        if not self.every_frame and not self._pacer.wait_for(i, timeout_s):
            return None  # not due yet: a timeout, the frame stays pending
        self._pending = None
        return Frame(pixels=pixels, index=i, t_capture_ns=time.monotonic_ns(), region=self.region, meta=dict(self._meta))

    def close(self) -> None:
        self._closed = True
        self._pending = None

    def _decode_lead_ns(self) -> int:
        return int(max(self._decode_ns, default=0) * 1.5) + DECODE_MARGIN_NS

    # -- decoding ----------------------------------------------------------

    def _check_fragments(self, name: str) -> None:
        from pydicom.encaps import generate_frames

        # Walk the fragment structure once (cheap, no decoding) to catch truncation.
        try:
            n = sum(1 for _ in generate_frames(self.ds.PixelData, number_of_frames=self._n))
        except Exception as exc:  # malformed item tags, odd lengths, ...
            raise SourceError(f"the compressed pixel data of {name} is malformed ({_one_line(exc)}); copy or export the file again") from exc
        if n < self._n:
            raise SourceError(f"{name} is truncated: {n} of {self._n} compressed frames present; copy or export the file again")

    def _decode(self, i: int) -> np.ndarray:
        from pydicom.pixels import convert_color_space

        arr, props = self._decoder.as_array(self.ds, index=i)
        # pydicom 3 already converts YBR to RGB for most syntaxes (including
        # JPEG baseline YBR_FULL_422) and says so in props; converting again
        # would give the green cast. Convert only if it did not.
        pi = str(props.get("photometric_interpretation", self.photometric)).upper()
        if arr.ndim == 3:
            if pi in ("YBR_FULL", "YBR_FULL_422"):
                arr = convert_color_space(arr, "YBR_FULL", "RGB")
            if arr.dtype != np.uint8:
                arr = (arr >> max(0, self.bits_stored - 8)).astype(np.uint8)
            return np.ascontiguousarray(arr)
        if self._palette is not None:
            return self._palette[np.clip(arr, 0, len(self._palette) - 1)]
        if arr.dtype != np.uint8 or self.bits_stored > 8:
            arr = self._to_8bit(arr)
        if self.photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
            arr = 255 - arr
        return np.ascontiguousarray(arr)

    def _to_8bit(self, arr: np.ndarray) -> np.ndarray:
        ds = self.ds
        x = arr.astype(np.float32)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        if slope != 1 or intercept != 0:
            x = x * slope + intercept
        if self._window is None:
            # One mapping for the whole cine (window tags, else frame 0's range)
            # so brightness does not flicker from frame to frame.
            c, w = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
            if c is not None and w is not None and w > 1:
                self._window = (c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2)
            else:
                lo, hi = float(x.min()), float(x.max())
                self._window = (lo, hi if hi > lo else lo + 1)
        lo, hi = self._window
        return np.clip((x - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


# -- helpers -----------------------------------------------------------------


def _read_dataset(path: Path):
    """Read the dataset; returns (ds, eof_warning). Raises SourceError if not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ImplicitVRLittleEndian

    name = str(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            # Old files may lack the 128-byte preamble; accept them only if a
            # forced read finds an image, otherwise it is simply not DICOM.
            try:
                ds = pydicom.dcmread(path, force=True)
            except Exception:  # garbage parses into any kind of error
                ds = None
            if ds is None or "Rows" not in ds:
                raise SourceError(f"{name} is not a DICOM file; give a .dcm file (use file: for videos, folder: for images)") from None
            if "TransferSyntaxUID" not in ds.file_meta:
                ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        except PermissionError as exc:
            raise SourceError(f"cannot read {name}: permission denied; check the file's permissions") from exc
        except Exception as exc:  # a damaged file makes the parser fail in many ways (struct.error, EOFError, ...)
            raise SourceError(f"{name} is damaged or truncated ({_one_line(exc)}); copy or export it again") from exc
    eof = any("end of file" in str(w.message).lower() for w in caught)
    if "TransferSyntaxUID" not in ds.file_meta:
        raise SourceError(f"{name} has an incomplete file header (no transfer syntax): it is truncated or damaged; copy or export it again")
    return ds, eof


def _get_decoder(ts, name: str):
    from pydicom.pixels import get_decoder

    label = f"{getattr(ts, 'name', '') or 'unknown'} ({ts})"
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        hint = "convert it to uncompressed or JPEG (e.g. gdcmconv --raw)"
        if "MPEG" in label or "HEVC" in label:
            hint = "it is a video-encoded cine; export it as a video file and use file: instead, or convert it with gdcmconv --raw"
        raise SourceError(f"{name} uses transfer syntax {label}, which pydicom cannot decode; {hint}") from None
    if not decoder.is_available:
        # pydicom lists "plugin - requires pkg>=v and pkg2>=v"; keep the requirement.
        need = " or ".join(d.split(" - requires ")[-1] for d in decoder.missing_dependencies) or "a pydicom decoder plugin"
        raise SourceError(f"{name} uses transfer syntax {label} and no decoder for it is installed; pip install {need}")
    return decoder


def _number_of_frames(ds) -> int:
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n = 1
    return max(1, n)


def _check_native_length(ds, n: int, name: str) -> None:
    from pydicom.pixels.utils import get_expected_length

    have, want = len(ds.PixelData), get_expected_length(ds)
    if have < want:
        per = max(1, want // n)
        raise SourceError(
            f"{name} is truncated: pixel data has {have} of {want} bytes ({have // per} of {n} frames complete); copy or export the file again"
        )


def _first(v) -> float | None:
    """First value of a possibly multi-valued numeric tag."""
    if v is not None and not isinstance(v, (str, bytes, int, float)) and len(v):
        v = v[0]
    return _float(v) if v is not None else None


def _palette_table(ds, name: str) -> np.ndarray:
    """Map every stored value to uint8 RGB once, instead of per frame."""
    from pydicom.pixels import apply_color_lut

    bits = int(ds.get("BitsStored", 8))
    dtype = np.uint8 if int(ds.get("BitsAllocated", 8)) <= 8 else np.uint16
    try:
        table = apply_color_lut(np.arange(2**bits, dtype=dtype), ds)
    except (ValueError, AttributeError, KeyError) as exc:
        raise SourceError(f"{name} is PALETTE COLOR but its colour lookup table is unusable ({_one_line(exc)})") from exc
    # 16-bit LUT entries (the usual case) -> 8 bits; some vendors store 8-bit values in them.
    if table.dtype != np.uint8:
        table = (table >> 8) if table.max() > 255 else table
    return np.ascontiguousarray(table.astype(np.uint8))


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _timing(ds, n: int) -> tuple[float | None, np.ndarray | None]:
    """(fps, per-frame release offsets in ms or None) from the cine timing tags.

    FrameIncrementPointer names the authoritative tag; otherwise FrameTime,
    FrameTimeVector, CineRate, RecommendedDisplayFrameRate in that order.
    """
    offsets = None
    ftv = ds.get("FrameTimeVector")
    if ftv is not None and n > 1:
        inc = np.asarray([_float(x) if _float(x) is not None else -1.0 for x in ftv], dtype=np.float64)
        if len(inc) == n and np.all(inc >= 0):
            inc[0] = 0.0  # time since the previous frame: none before the first
            offsets = np.cumsum(inc) if inc.sum() > 0 else None
    ptr = ds.get("FrameIncrementPointer")
    ptrs = [ptr] if isinstance(ptr, int) else list(ptr or [])  # one tag or several
    ft = _float(ds.get("FrameTime"))
    ft = ft if ft and ft > 0 else None
    if offsets is not None and (0x00181065 in ptrs or ft is None):
        return 1000.0 * (n - 1) / offsets[-1], offsets
    for fps in (1000.0 / ft if ft else None, _float(ds.get("CineRate")), _float(ds.get("RecommendedDisplayFrameRate"))):
        if fps and 0 < fps <= 1000:
            return fps, None
    return None, None


def _transducer_name(ds) -> str:
    td = ds.get("TransducerData")
    if td is None:
        return ""
    first = td[0] if not isinstance(td, str) else td
    return str(first).strip()


def _probe_kind(ds) -> str | None:
    """Probe geometry from TransducerType, else a vendor model name like C5-1 / L12-5 / S5-1."""
    ttype = str(ds.get("TransducerType", "")).upper()
    if "PHASED" in ttype or ttype.startswith("SECTOR"):
        return "phased"  # mechanical/annular sectors draw the same apex-topped image
    if "CURVED" in ttype or ttype.endswith("_CLA"):
        return "curvilinear"
    if "LINEAR" in ttype:
        return "linear"
    m = re.match(r"^([CLSP])\d", _transducer_name(ds).upper())
    return {"C": "curvilinear", "L": "linear", "S": "phased", "P": "phased"}[m.group(1)] if m else None


def _scan_region(ds, rows: int, cols: int) -> tuple[ScanRegion | None, str]:
    """Largest 2-D tissue region of SequenceOfUltrasoundRegions, fitted to the frame.

    Returns (region or None, note). Real files disagree with their pixels: the
    SonoSite example's tags are in 640x480 coordinates for 320x240 frames (a
    downscaled export), the Philips one's reach below its cropped 350 rows.
    """
    seq = ds.get("SequenceOfUltrasoundRegions")
    if not seq:
        return None, ""
    best, best_key = None, None
    for r in seq:
        try:
            box = (int(r.RegionLocationMinX0), int(r.RegionLocationMinY0), int(r.RegionLocationMaxX1) + 1, int(r.RegionLocationMaxY1) + 1)
        except (AttributeError, TypeError, ValueError):
            continue
        spatial, dtype = int(r.get("RegionSpatialFormat", 0) or 0), int(r.get("RegionDataType", 0) or 0)
        if spatial != 1:  # 1 = 2-D image (not M-mode, spectral, waveform or graphics)
            continue
        area = max(0, box[2] - box[0]) * max(0, box[3] - box[1])
        key = (dtype == 1, dtype == 2, area)  # tissue first, then colour flow, then size
        if best_key is None or key > best_key:
            best, best_key = (r, box), key
    if best is None:
        return None, ""
    r, (x0, y0, x1, y1) = best
    spacing = None
    if int(r.get("PhysicalUnitsXDirection", 0) or 0) == 3 and int(r.get("PhysicalUnitsYDirection", 0) or 0) == 3:
        dx, dy = float(r.get("PhysicalDeltaX", 0) or 0), float(r.get("PhysicalDeltaY", 0) or 0)
        if dx > 0 and dy > 0:
            spacing = (abs(dy) * 10.0, abs(dx) * 10.0)  # cm -> mm, (row, col)
    note = ""
    if x1 > cols + 1 and y1 > rows + 1:
        # Beyond the frame on both axes: a downscaled export. Take the smallest
        # integer factor that makes the tags fit, and scale spacing with it.
        for f in (2, 3, 4):
            if x1 / f <= cols + 1 and y1 / f <= rows + 1:
                x0, y0, x1, y1 = x0 // f, y0 // f, math.ceil(x1 / f), math.ceil(y1 / f)
                spacing = (spacing[0] * f, spacing[1] * f) if spacing else None
                note = f"region tags scaled 1/{f} to fit the {cols}x{rows} frame"
                break
    if x1 > cols or y1 > rows:
        note = note or f"region tags clipped to the {cols}x{rows} frame"
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(cols, x1), min(rows, y1)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None, f"region tags lie outside the {cols}x{rows} frame; ignored"
    return ScanRegion(box=(x0, y0, x1, y1), kind=_probe_kind(ds), spacing_mm=spacing), note
