"""The virtual patient as a live source:

  sim:PRESET[?seed=N&probe=KIND&fps=F&mode=manual|novice&size=HxW&depth=MM&start=random|target]

PRESET is liver, thyroid or cardiac (or phantom). Frames are rendered on
demand at fps (default 30) and paced like a live stream: a slow reader skips
frames (Frame.index jumps) rather than falling behind. move(action) drives
the probe (UI keys, closed-loop evaluation) and may be called from any
thread. Each Frame carries region (full image, probe kind, mm/px, fan mask),
meta['truth'] (the ground-truth dict, JSON-serialisable) and
meta['label_mask'] (uint8, values index edge_assist.sim.LABELS).
"""

from __future__ import annotations

import threading
import time
from urllib.parse import parse_qsl

from edge_assist.errors import EndOfStream
from edge_assist.frames import Frame
from edge_assist.sim.geometry import PROBES
from edge_assist.sim.novice import Novice
from edge_assist.sim.patient import SimError, VirtualPatient
from edge_assist.sim.presets import ALL_PRESETS, PRESETS
from edge_assist.sources.base import FrameSource, Pacer

OPTIONS = ("seed", "probe", "fps", "mode", "size", "depth", "start")
MODES = ("manual", "novice")
USAGE = "sim:PRESET?seed=N&probe=linear|curvilinear|phased&fps=30&mode=manual|novice&size=256x256&depth=MM&start=random|target"


def _bad(uri: str, what: str) -> SimError:
    return SimError(f"{what} in {uri!r}; use {USAGE}")


def parse_size(text, uri: str = "") -> tuple[int, int]:
    try:
        if isinstance(text, (tuple, list)):
            h, w = (int(v) for v in text)
        else:
            parts = str(text).lower().split("x")
            if len(parts) == 1:
                h = w = int(parts[0])
            elif len(parts) == 2:
                h, w = int(parts[0]), int(parts[1])
            else:
                raise ValueError
    except ValueError:
        raise _bad(uri, f"size {text!r} is not HxW (e.g. 256x256)") from None
    if not (32 <= h <= 2048 and 32 <= w <= 2048):
        raise _bad(uri, f"size {h}x{w} out of range (32..2048)")
    return h, w


class SimSource(FrameSource):
    is_live = True

    def __init__(self, preset: str, *, uri: str, seed: int = 0, probe: str | None = None, fps: float = 30.0, mode: str = "manual",
                 size=(256, 256), depth: float | None = None, start: str = "random", every_frame: bool = False):
        self.uri = uri
        self.nominal_fps = float(fps)
        self.every_frame = every_frame
        self.mode = mode
        self.patient = VirtualPatient(preset, seed, probe, size, live_speckle=True, fps=fps)
        if start == "random":
            import numpy as np

            self.patient.randomize_pose(np.random.default_rng([int(seed), 0x57A27]))
        if depth is not None:
            self.patient.apply_degradations({"depth_mm": depth})
        self.novice = Novice(seed, fps) if mode == "novice" else None
        self._lock = threading.Lock()
        self._pacer = None if every_frame else Pacer(fps)
        self._next = 0
        self._closed = False
        self.frames_read = 0
        self.frames_skipped = 0
        self.moves: list[tuple[int, str]] = []  # (frame index, action) applied from outside

    @property
    def status(self) -> str:
        c = self.patient.deg["contact"]
        return "no contact" if c < 0.1 else ("partial contact" if c < 0.999 else "ok")

    def move(self, action: str) -> None:
        """Apply one probe move (vocab.ACTIONS); thread-safe."""
        with self._lock:
            self.patient.move(action)
            self.moves.append((self._next, action))

    def degrade(self, degradations: dict) -> None:
        """Apply artefacts (see VirtualPatient.apply_degradations); thread-safe."""
        with self._lock:
            self.patient.apply_degradations(degradations)

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self._closed:
            raise EndOfStream(f"{self.uri} is closed")
        if self._pacer is not None:
            if not self._pacer.wait_for(self._next, timeout_s):
                return None
            due = (time.monotonic_ns() - self._pacer.t0_ns) // max(1, self._pacer.period_ns)
            if due > self._next:  # a slow reader: skip to the frame due now
                self.frames_skipped += int(due - self._next)
                self._next = int(due)
        with self._lock:
            index = self._next
            self._next += 1
            if self.novice is not None:
                self.novice.step(self.patient)
            self.patient.frame_index = index  # heart phase follows the stream's clock
            image, truth, mask = self.patient.render(return_mask=True)
            region = self.patient.region
        self.frames_read += 1
        return Frame(pixels=image, index=index, t_capture_ns=time.monotonic_ns(), region=region,
                     meta={"source": "sim", "truth": truth, "label_mask": mask, "status": self.status})

    def close(self) -> None:
        self._closed = True


def open_sim(rest: str, *, uri: str, every_frame: bool = False, **options) -> SimSource:
    """Parse sim:PRESET?key=value... ; keyword options override the query."""
    uri = uri or f"sim:{rest}"
    preset, _, query = rest.partition("?")
    preset = preset.strip().lower()
    if not preset:
        raise _bad(uri, "no preset")
    if preset not in ALL_PRESETS:
        raise SimError(f"unknown simulator preset {preset!r} in {uri!r}; choose one of {', '.join(PRESETS)} (or phantom)")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _bad(uri, f"malformed query {query!r}") from None
    params: dict = {}
    for k, v in pairs:
        if k in params:
            raise _bad(uri, f"option {k!r} given twice")
        params[k] = v
    params.update({k: v for k, v in options.items() if v is not None})
    unknown = sorted(set(params) - set(OPTIONS))
    if unknown:
        raise _bad(uri, f"unknown option(s) {', '.join(unknown)}")
    try:
        seed = int(params.get("seed", 0))
    except (TypeError, ValueError):
        raise _bad(uri, f"seed {params.get('seed')!r} is not an integer") from None
    if seed < 0:
        raise _bad(uri, "seed must be >= 0")
    try:
        fps = float(params.get("fps", 30.0))
    except (TypeError, ValueError):
        raise _bad(uri, f"fps {params.get('fps')!r} is not a number") from None
    if not (0 < fps <= 1000):
        raise _bad(uri, f"fps {fps:g} out of range (0 < fps <= 1000)")
    probe = params.get("probe") or None
    if probe is not None and probe not in PROBES:
        raise _bad(uri, f"unknown probe {probe!r} (linear, curvilinear, phased)")
    mode = params.get("mode", "manual")
    if mode not in MODES:
        raise _bad(uri, f"unknown mode {mode!r} (manual, novice)")
    start = params.get("start", "random")
    if start not in ("random", "target"):
        raise _bad(uri, f"unknown start {start!r} (random, target)")
    size = parse_size(params.get("size", "256x256"), uri)
    depth = params.get("depth")
    if depth is not None:
        try:
            depth = float(depth)
        except (TypeError, ValueError):
            raise _bad(uri, f"depth {depth!r} is not a number (mm)") from None
        spec = PROBES[probe or ALL_PRESETS[preset].probe]
        if not (spec.depth_min <= depth <= spec.depth_max):
            raise SimError(f"depth {depth:g} mm impossible for the {spec.kind} probe in {uri!r}; use {spec.depth_min:g}..{spec.depth_max:g} mm")
    return SimSource(preset, uri=uri, seed=seed, probe=probe, fps=fps, mode=mode, size=size, depth=depth, start=start, every_frame=every_frame)
