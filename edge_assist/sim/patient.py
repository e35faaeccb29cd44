"""The virtual patient: a phantom, a probe on its skin, the renderer, and the
ground truth of every frame.

Moves are the discrete actions of vocab.ACTIONS with fixed steps (slide 5 mm,
rotate 10 deg, fan/rock 5 deg, depth 10 mm, gain 3 dB), in the probe's own
frame as a sonographer gives them: slide left/right along the image's lateral
axis (toward image left/right), slide head/feet across the image plane
(toward the side the beam leans to with fan_toward; cranial/caudal in a
transverse view). The optimal action is a deterministic function of the
state, in the order a sonographer works:

  1. contact lost or partial  -> 'hold' (re-seat the probe on the skin; in
     the simulator 'hold' restores full contact and stops motion blur);
  2. depth, 3. gain: the image's settings first (they read off any frame,
     and a well-set image shows the rest);
  4. position: the larger of the two slide errors (in the probe's frame:
     u along the image, w across it);
  5. rock, 6. rotation, 7. fan, each only if out of tolerance;
  8. the view on screen is the target view -> 'hold' (target reached).

The target view is judged by what the beam cuts (view_offset): once depth
and gain are right, the view is the target's when its tissue differs from
the target view's no more than an in-plane slide of one tolerance (6 mm)
changes it, whatever the single components say. An elevational slide and a
fan that cancel at the organ's depth show the target view; components each
within tolerance whose changes add up do not, and the policy then steps the
one furthest off. The truth's off-target severity is the same view offset.

Every move changes exactly one component by one step toward the target, and
the tolerances exceed half a step, so following the policy always ends
(tests check the closed loop). The tolerances are the target view's, per
preset (TOLERANCES): how far each component alone may be off before the
view changes (sim/README.md says how they were measured); they set the
order of the corrections.
"""

from __future__ import annotations

import math
import threading
import zlib

import numpy as np

from edge_assist.errors import SourceError
from edge_assist.frames import ScanRegion
from edge_assist.lexicon import sentence_en, sentence_zh
from edge_assist.sim import truth as T
from edge_assist.sim.geometry import DEPTH_STEP_MM, PROBES, BeamGeometry, pose_basis
from edge_assist.sim.presets import ALL_PRESETS, PRESETS, build_phantom_for
from edge_assist.sim.render import DYNAMIC_RANGE_DB, SHADOW_DB, TGC_BANDS, Renderer, TissueTables
from edge_assist.sim.shapes import Cylinder, Ellipsoid
from edge_assist.sim.tissues import LABEL_INDEX, LABELS
from edge_assist.vocab import ACTIONS, QUALITY_REASONS


class SimError(SourceError):
    """A simulator parameter is wrong (preset, probe, depth, action, URI)."""


STEP = {"u": 5.0, "w": 5.0, "rot": 10.0, "fan": 5.0, "rock": 5.0, "depth": DEPTH_STEP_MM, "gain": 3.0}
# Default tolerances of a target view; TOLERANCES has each preset's.
TOL = {"u": 6.0, "w": 6.0, "rot": 12.0, "fan": 6.0, "rock": 6.0, "depth": 15.0, "gain": 4.0}
POSE_KEYS = ("x", "y", "rot", "fan", "rock")  # the probe's pose: face point on the skin (world mm) and angles
ERROR_KEYS = ("u", "w", "rot", "fan", "rock")  # its error, the face point's in the probe's frame
ERROR_NAMES = {"u": "u_mm", "w": "w_mm", "rot": "rot_deg", "fan": "fan_deg", "rock": "rock_deg", "depth": "depth_mm", "gain": "gain_db"}
ACTION_EFFECT: dict[str, tuple[str, int] | None] = {
    "slide_left": ("u", -1),  # toward image left
    "slide_right": ("u", +1),
    "slide_head": ("w", +1),  # across the image plane, the side fan_toward leans to
    "slide_feet": ("w", -1),
    "rotate_cw": ("rot", -1),
    "rotate_ccw": ("rot", +1),
    "fan_toward": ("fan", +1),
    "fan_away": ("fan", -1),
    "rock_left": ("rock", -1),
    "rock_right": ("rock", +1),
    "depth_up": ("depth", +1),
    "depth_down": ("depth", -1),
    "gain_up": ("gain", +1),
    "gain_down": ("gain", -1),
    "hold": None,
}
assert set(ACTION_EFFECT) == set(ACTIONS)
# Each preset's target view tolerates what does not change it: an
# out-of-plane error as far as it changes the view no more than an in-plane
# slide of 6 mm does (sim/tolerance.py; `edge-assist sim tolerances`).
TOLERANCES: dict[str, dict[str, float]] = {
    "liver": {**TOL, "w": 9.0, "rot": 19.5, "fan": 6.0},
    "thyroid": {**TOL, "w": 12.0, "rot": 24.0, "fan": 12.0},
    "cardiac": {**TOL, "w": 9.5, "rot": 17.0, "fan": 7.5},
    "phantom": {**TOL},
}


def tolerances(preset: str) -> dict[str, float]:
    """The target view's tolerance per error component for a preset."""
    return TOLERANCES.get(preset, TOL)


_ACTION_FOR = {(comp, sign): a for a, eff in ACTION_EFFECT.items() if eff for comp, sign in [eff]}
# The order of corrections: the image's settings first (depth and gain read
# off any frame, and a well-set image shows the rest), then what moves the
# anatomy within the plane, then across it.
GROUPS = (("depth", ("depth",)), ("gain", ("gain",)), ("slide", ("u", "w")), ("rock", ("rock",)), ("rotate", ("rot",)), ("fan", ("fan",)))
SETTINGS_GROUPS = 2  # the first two groups are the image's settings; the rest move the view
GROUP_OF = {c: name for name, comps in GROUPS for c in comps}
# The target view is judged by what the beam cuts, on every other beam line:
# half the cost, and the same verdict as every line on 59 of 60 poses near the target.
VIEW_LINE_STRIDE = 2
ANGLE_LIMIT = 35.0
GAIN_LIMIT = 30.0
SLIDE_LIMIT = 90.0  # mm from the target
# Reference tissue for the gain calibration and its display level (0..255 before the grey map).
REFERENCE = {"liver": ("liver", 128.0), "thyroid": ("thyroid", 140.0), "cardiac": ("myocardium", 122.0), "phantom": ("qa_background", 128.0)}
HEART_PERIOD_S = 0.85
DEGRADATION_KEYS = ("contact", "contact_side", "tgc_db", "blur", "noise_db", "occluder", "gain_db", "depth_mm", "no_contact", "partial_contact")


_GEOMETRIES: dict = {}
_GEOMETRIES_LOCK = threading.Lock()


def shared_geometry(probe, depth: float, image_size, speckle_scale: float) -> BeamGeometry:
    """Beam geometries (remap tables, PSF kernels) are read-only: share them
    between patients (datasets make many patients with the same probe)."""
    key = (probe, float(depth), tuple(image_size), float(speckle_scale))
    with _GEOMETRIES_LOCK:
        g = _GEOMETRIES.get(key)
        if g is None:
            if len(_GEOMETRIES) > 256:
                _GEOMETRIES.clear()
            g = _GEOMETRIES[key] = BeamGeometry(probe, depth, image_size, speckle_scale)
        return g


def _plane_axes(rot_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The image's lateral axis and the plane normal on the skin at a rotation
    (fan and rock zero): the directions of the probe-frame slides."""
    lat, _, el = pose_basis(rot_deg, 0.0, 0.0)
    return lat, el


def wrap180(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


def _r(x, n=3):
    return None if x is None else round(float(x), n)


class VirtualPatient:
    """A simulated patient under a simulated probe.

    render() -> (uint8 HxW image, truth dict); move(action); pose_error();
    optimal_action(); at_target(); randomize_pose(rng); apply_degradations().
    Thread-safe: render() and move() may be called from different threads.
    """

    def __init__(self, preset: str, seed: int, probe: str | None = None, image_size=(256, 256), live_speckle: bool = True,
                 *, speckle_scale: float = 1.0, fps: float = 30.0, animate: bool = True):
        if preset not in ALL_PRESETS:
            raise SimError(f"unknown simulator preset {preset!r}; choose one of {', '.join(PRESETS)} (or 'phantom' for the QA phantom)")
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise SimError(f"simulator seed must be an integer, not {seed!r}") from None
        if seed < 0:
            raise SimError(f"simulator seed must be >= 0, not {seed}")
        kind = probe or ALL_PRESETS[preset].probe
        if kind not in PROBES:
            raise SimError(f"unknown probe {kind!r}; choose one of {', '.join(PROBES)}")
        try:
            h, w = (int(v) for v in image_size)
        except (TypeError, ValueError):
            raise SimError(f"image size must be two integers (height, width), not {image_size!r}") from None
        if not (32 <= h <= 2048 and 32 <= w <= 2048):
            raise SimError(f"image size {h}x{w} out of range; use 32..2048 pixels a side")
        self.preset = preset
        self.info = ALL_PRESETS[preset]
        self.tol = tolerances(preset)
        self.seed = seed
        self.probe = PROBES[kind]
        self.image_size = (h, w)
        self.live_speckle = bool(live_speckle)
        self.speckle_scale = float(speckle_scale)
        self.fps = float(fps)
        self.animate = animate
        self.phantom = build_phantom_for(preset, seed)
        tgt = dict(self.phantom.target)
        tgt["depth"] = float(min(self.probe.depth_max, max(self.probe.depth_min, tgt["depth"])))
        tgt["gain"] = 0.0
        self.target = tgt
        for name in ("bone", "air", "bowel_wall"):  # occluders may need them
            self.phantom.tissue(name)
        self.tables = TissueTables(self.phantom.tissues, self.probe.freq_mhz)
        self.renderer = Renderer(self.tables, self.info.nominal_atten)
        self._lock = threading.RLock()
        self._geos: dict[float, BeamGeometry] = {}
        self._cache = None
        self._view_ref: tuple[np.ndarray, float] | None = None  # the target view's cut and budget (lazily)
        self._view_memo: tuple | None = None  # (pose, view offset) of the last pose judged
        self._calib = None
        self._salt = zlib.crc32(f"{preset}:{seed}".encode())
        self.reseed(seed)
        self.pose = {k: float(tgt[k]) for k in (*POSE_KEYS, "depth", "gain")}
        self.clear_degradations()
        self.frame_index = 0
        self.keep_envelope = False
        self.last_envelope = None
        self.last_label_mask = None
        self.last_beam = None
        self._last_lesion_beam = None  # (L,S) bool: the reported lesion's visible samples in the last frame

    # -- state -------------------------------------------------------------------
    def reseed(self, noise_seed: int) -> None:
        """Seed the per-frame randomness (noise, fresh speckle, heart phase)."""
        with self._lock:
            self._rng = np.random.default_rng(np.random.SeedSequence([int(noise_seed) & 0xFFFFFFFF, self._salt, 7]))
            L, S = self.probe.n_lines, self.probe.n_samples
            self._noise_bank = (self._rng.standard_normal(2 * L * S * 2, dtype=np.float32) * np.float32(math.sqrt(0.5)))

    def clear_degradations(self) -> None:
        with self._lock:
            self.deg = {"contact": 1.0, "contact_side": 1, "tgc_db": [0.0] * TGC_BANDS, "blur": 0.0, "noise_db": 0.0, "occluder": None}

    def reset_to_target(self) -> None:
        with self._lock:
            self.pose = {k: float(self.target[k]) for k in (*POSE_KEYS, "depth", "gain")}

    def set_pose(self, **kw) -> None:
        """Set pose/settings directly: x, y, rot, fan, rock (absolute), depth (mm), gain (dB re. optimal)."""
        with self._lock:
            for k, v in kw.items():
                if k not in self.pose:
                    raise SimError(f"unknown pose field {k!r}; use {', '.join(self.pose)}")
                self.pose[k] = float(v)
            self._clamp()

    def set_pose_error(self, **errors) -> None:
        """Put the probe at the target view plus signed errors (ERROR_KEYS:
        u, w in mm in the probe's frame, rot, fan, rock in degrees); pose_error()
        then reports them back. Depth and gain are left as they are."""
        unknown = set(errors) - set(ERROR_KEYS)
        if unknown:
            raise SimError(f"unknown pose error {sorted(unknown)[0]!r}; use {', '.join(ERROR_KEYS)}")
        with self._lock:
            t = self.target
            e = {k: float(errors.get(k, 0.0)) for k in ERROR_KEYS}
            rot = t["rot"] + e["rot"]
            lat, el = _plane_axes(rot)
            self.pose.update({"x": t["x"] + e["u"] * lat[0] + e["w"] * el[0], "y": t["y"] + e["u"] * lat[1] + e["w"] * el[1],
                              "rot": rot, "fan": t["fan"] + e["fan"], "rock": t["rock"] + e["rock"]})
            self._clamp()

    def _clamp(self) -> None:
        p, t = self.pose, self.target
        for k in ("x", "y"):
            p[k] = float(min(t[k] + SLIDE_LIMIT, max(t[k] - SLIDE_LIMIT, p[k])))
        p["rot"] = wrap180(p["rot"])
        for k in ("fan", "rock"):
            p[k] = float(min(ANGLE_LIMIT, max(-ANGLE_LIMIT, p[k])))
        p["depth"] = float(min(self.probe.depth_max, max(self.probe.depth_min, round(p["depth"] / DEPTH_STEP_MM) * DEPTH_STEP_MM)))
        p["gain"] = float(min(GAIN_LIMIT, max(-GAIN_LIMIT, p["gain"])))

    def randomize_pose(self, rng: np.random.Generator, spread: float = 1.0) -> None:
        """A random start: position within +-30 mm, rotation +-40 deg, fan and
        rock +-15 deg, depth +-4 steps, gain +-12 dB (times `spread`), full contact."""
        with self._lock:
            t = self.target
            self.pose = {
                "x": t["x"] + rng.uniform(-30, 30) * spread,
                "y": t["y"] + rng.uniform(-30, 30) * spread,
                "rot": t["rot"] + rng.uniform(-40, 40) * spread,
                "fan": t["fan"] + rng.uniform(-15, 15) * spread,
                "rock": t["rock"] + rng.uniform(-15, 15) * spread,
                "depth": t["depth"] + DEPTH_STEP_MM * int(rng.integers(-4, 5)),
                "gain": rng.uniform(-12, 12) * spread,
            }
            self._clamp()
            self.deg["contact"] = 1.0

    def apply_degradations(self, d: dict) -> None:
        """Apply artefacts. Keys: contact (0..1 of the aperture on the skin),
        contact_side (+1 right / -1 left), no_contact (bool), partial_contact
        (fraction lost), tgc_db (8 band offsets, or {'band': i, 'db': x}),
        blur (0..1), noise_db (>= 0, added receiver noise), occluder
        ({'kind': 'rib'|'gas', 'u_mm': lateral centre, 'width_mm': w} or None),
        gain_db (gain re. optimal), depth_mm."""
        with self._lock:
            for k, v in d.items():
                if k not in DEGRADATION_KEYS:
                    raise SimError(f"unknown degradation {k!r}; use {', '.join(DEGRADATION_KEYS)}")
                if k == "contact":
                    self.deg["contact"] = float(min(1.0, max(0.0, v)))
                elif k == "no_contact":
                    if v:
                        self.deg["contact"] = 0.0
                elif k == "partial_contact":
                    self.deg["contact"] = float(min(1.0, max(0.0, 1.0 - float(v))))
                elif k == "contact_side":
                    self.deg["contact_side"] = 1 if v >= 0 else -1
                elif k == "tgc_db":
                    if isinstance(v, dict):
                        bands = [0.0] * TGC_BANDS
                        bands[int(v["band"]) % TGC_BANDS] = float(v["db"])
                        self.deg["tgc_db"] = bands
                    else:
                        vals = [float(x) for x in v]
                        if len(vals) != TGC_BANDS:
                            raise SimError(f"tgc_db needs {TGC_BANDS} band values, got {len(vals)}")
                        self.deg["tgc_db"] = vals
                elif k == "blur":
                    self.deg["blur"] = float(min(1.0, max(0.0, v)))
                elif k == "noise_db":
                    self.deg["noise_db"] = float(max(0.0, v))
                elif k == "occluder":
                    if v is not None and v.get("kind") not in ("rib", "gas"):
                        raise SimError("occluder kind must be 'rib' or 'gas'")
                    self.deg["occluder"] = None if v is None else {"kind": v["kind"], "u_mm": float(v["u_mm"]), "width_mm": float(v["width_mm"])}
                elif k == "gain_db":
                    self.pose["gain"] = float(v)
                elif k == "depth_mm":
                    dv = float(v)
                    if not (self.probe.depth_min <= dv <= self.probe.depth_max):
                        raise SimError(f"depth {dv:g} mm impossible for the {self.probe.kind} probe; use {self.probe.depth_min:g}..{self.probe.depth_max:g} mm")
                    self.pose["depth"] = dv
            self._clamp()

    def move(self, action: str) -> None:
        """Apply one discrete probe move (an entry of vocab.ACTIONS)."""
        if action not in ACTION_EFFECT:
            raise SimError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        with self._lock:
            eff = ACTION_EFFECT[action]
            if eff is None:
                self.deg["contact"] = 1.0
                self.deg["blur"] = 0.0
                return
            comp, sign = eff
            if comp in ("u", "w"):  # slides are in the probe's frame
                lat, el = _plane_axes(self.pose["rot"])
                axis = lat if comp == "u" else el
                self.pose["x"] += sign * STEP[comp] * axis[0]
                self.pose["y"] += sign * STEP[comp] * axis[1]
            else:
                self.pose[comp] += sign * STEP[comp]
            self._clamp()

    # -- ground-truth policy ------------------------------------------------------
    def _errors(self) -> dict:
        p, t = self.pose, self.target
        e = {k: p[k] - t[k] for k in ("fan", "rock", "depth", "gain")}
        e["rot"] = wrap180(p["rot"] - t["rot"])
        # The face point's offset in the probe's frame: what a slide corrects.
        lat, el = _plane_axes(p["rot"])
        dx, dy = p["x"] - t["x"], p["y"] - t["y"]
        e["u"] = dx * lat[0] + dy * lat[1]
        e["w"] = dx * el[0] + dy * el[1]
        return e

    def pose_error(self) -> dict:
        """Signed errors (current - target) per component, contact loss, and
        'total' = RMS-like norm of the errors in units of their tolerances
        (+10 per unit of lost contact)."""
        with self._lock:
            e = self._errors()
            out = {name: round(float(e[k]), 3) for k, name in ERROR_NAMES.items()}
            out["contact"] = round(1.0 - self.deg["contact"], 3)
            total = math.sqrt(sum((e[k] / self.tol[k]) ** 2 for k in e)) + 10.0 * (1.0 - self.deg["contact"])
            out["total"] = round(total, 4)
            return out

    def _decide(self) -> tuple[str, str]:
        if self.deg["contact"] < 0.999:
            return "hold", "contact"
        e = self._errors()

        def toward(k: str) -> str:
            return _ACTION_FOR[(k, -1 if e[k] > 0 else +1)]

        for i, (name, comps) in enumerate(GROUPS):
            if i == SETTINGS_GROUPS and self._view_offset() <= 1.0:
                return "hold", "at_target"  # the settings are right and the screen shows the target view
            k = max(comps, key=lambda c: abs(e[c]) / self.tol[c])
            if abs(e[k]) / self.tol[k] > 1.0:
                return toward(k), name
        # Every component within its tolerance, yet together they change the
        # view more than the target view allows: step the one furthest off, if
        # a step brings it closer; else this is as near as the steps reach.
        k = max(ERROR_KEYS, key=lambda c: abs(e[c]) / self.tol[c])
        if abs(e[k]) > 0.5 * STEP[k]:
            return toward(k), GROUP_OF[k]
        return "hold", "at_target"

    # -- the view on screen -------------------------------------------------------
    def _view_cut(self) -> np.ndarray:
        """The tissue the beam cuts at the current probe pose, down to the
        target depth whatever the display depth (every VIEW_LINE_STRIDE-th
        line; no occluders, the heart at rest)."""
        geo = self.geometry(self.target["depth"])
        o, d = self._lines(geo)
        return self.phantom.paint(o[::VIEW_LINE_STRIDE], d[::VIEW_LINE_STRIDE], geo.r, geo.dr, 0.0)

    def _view_reference(self) -> tuple[np.ndarray, float]:
        """The target view's cut and the budget: the fraction of it that an
        in-plane slide of one slide tolerance (TOL['u'], either way) changes."""
        if self._view_ref is None:
            pose = dict(self.pose)
            try:
                self.reset_to_target()
                ref = self._view_cut()
                budget = 0.0
                for sign in (-1.0, 1.0):
                    self.set_pose_error(u=sign * TOL["u"])
                    budget = max(budget, float((self._view_cut() != ref).mean()))
            finally:
                self.pose = pose
            self._view_ref = (ref, max(budget, 1e-6))
        return self._view_ref

    def _view_offset(self) -> float:
        key = tuple(self.pose[k] for k in POSE_KEYS)
        if self._view_memo is None or self._view_memo[0] != key:
            ref, budget = self._view_reference()
            self._view_memo = (key, float((self._view_cut() != ref).mean()) / budget)
        return self._view_memo[1]

    def view_offset(self) -> float:
        """How far the view on screen is from the target view: the share of
        the beam whose tissue differs from the target view's, in units of
        what a one-tolerance slide along the image changes (<= 1: the target
        view, framed as a sonographer accepts it). Depth and gain aside."""
        with self._lock:
            return self._view_offset()

    def optimal_action(self) -> str:
        with self._lock:
            return self._decide()[0]

    def at_target(self) -> bool:
        with self._lock:
            return self._decide()[1] == "at_target"

    # -- geometry -------------------------------------------------------------------
    def geometry(self, depth: float | None = None) -> BeamGeometry:
        d = float(self.pose["depth"] if depth is None else depth)
        g = self._geos.get(d)
        if g is None:
            g = shared_geometry(self.probe, d, self.image_size, self.speckle_scale)
            self._geos[d] = g
        return g

    @property
    def spacing_mm(self) -> tuple[float, float]:
        return self.geometry().spacing_mm

    @property
    def region(self) -> ScanRegion:
        return self.geometry().region()

    def view_tissues(self) -> np.ndarray:
        """The tissue id of every beam sample at the current pose (lines x
        samples; no occluders, the heart at rest): the anatomy the view cuts."""
        geo = self.geometry()
        o, d = self._lines(geo)
        return self.phantom.paint(o, d, geo.r, geo.dr, 0.0)

    def _lines(self, geo: BeamGeometry):
        p = self.pose
        o, d = geo.world_lines(p["x"], p["y"], p["rot"], p["fan"], p["rock"])
        o[:, 2] = 0.0  # the skin conforms to the probe face
        return o, d

    def _occluder_shapes(self, geo: BeamGeometry):
        occ = self.deg["occluder"]
        if not occ:
            return ()
        p = self.pose
        lat, beam, el = pose_basis(p["rot"], p["fan"], p["rock"])
        face = np.array([p["x"], p["y"], 0.0])
        w = occ["width_mm"]
        wall = max(4.0, self.phantom.wall_mm)
        if occ["kind"] == "rib":
            v = min(wall * 0.6 + 2, 25.0)
            c = face + occ["u_mm"] * lat + v * beam
            return (Cylinder(c, el, [w / 2, 4.0], self._tissue_id("bone"), 200, p1=lat),)
        v = wall + w / 4 + 3
        c = face + occ["u_mm"] * lat + v * beam
        axes = np.stack([lat, el, beam])
        return (Ellipsoid(c, axes, [w / 2 + 2.5, w / 2 + 2.5, w / 4 + 2.5], self._tissue_id("bowel_wall")),
                Ellipsoid(c, axes, [w / 2, w / 2, w / 4], self._tissue_id("air")))

    def _tissue_id(self, name: str) -> int:
        return self.phantom._index[name]

    def fan_extent_mm(self, v_mm: float) -> float:
        """Lateral width of the fan at depth v below the face centre."""
        p = self.probe
        if p.kind == "linear":
            return p.footprint_mm
        half = math.radians(p.sector_deg) / 2
        if p.kind == "curvilinear":
            return 2 * (p.radius_mm + v_mm) * half
        return 2 * v_mm * math.tan(half)

    # -- rendering ------------------------------------------------------------------
    def _beat_phase(self) -> float:
        if not self.phantom.beating:
            return 0.0
        if self.live_speckle:
            if not self.animate:
                return 0.0
            t = self.frame_index / self.fps
        else:
            t = float(self._rng.uniform(0, HEART_PERIOD_S))
        return round(0.5 - 0.5 * math.cos(2 * math.pi * t / HEART_PERIOD_S), 3)

    def _beam(self, geo: BeamGeometry, beat: float, *, fresh: bool | None = None):
        fresh = (not self.live_speckle) if fresh is None else fresh
        occ = self.deg["occluder"]
        key = (tuple(round(self.pose[k], 4) for k in (*POSE_KEYS, "depth")), self.deg["contact"], self.deg["contact_side"],
               None if occ is None else tuple(sorted(occ.items())), beat)
        if not fresh and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        extra = self._occluder_shapes(geo)
        o, d = self._lines(geo)
        lab = self.phantom.paint(o, d, geo.r, geo.dr, beat, extra)
        # Fresh speckle = the same world-locked scatterer field with a new
        # random salt: identical statistics to live mode, new realisation.
        salt = int(self._rng.integers(0, 2**32)) if fresh else self._salt
        bf = self.renderer.beam(lab, o, d, geo, scatter=None, cell_salt=salt,
                                contact=self.deg["contact"], contact_side=self.deg["contact_side"])
        if not fresh:
            self._cache = (key, bf)
        return bf

    def _noise(self, geo: BeamGeometry, rng: np.random.Generator | None = None) -> np.ndarray:
        L, S = geo.n_lines, geo.n_samples
        n = L * S * 2
        off = int((rng or self._rng).integers(0, self._noise_bank.size - n))
        return self._noise_bank[off : off + n].reshape(L, S, 2)

    def _calibration(self) -> dict:
        """Gain reference (target organ at its display level at gain 0), the
        target structure's visible area and the shadowed fraction in the
        target view. Computed once, at the target, without touching the
        per-frame randomness."""
        if self._calib is not None:
            return self._calib
        saved_pose, saved_deg, saved_cache = dict(self.pose), {**self.deg}, self._cache
        try:
            self.reset_to_target()
            self.clear_degradations()
            geo = self.geometry()
            bf = self._beam(geo, 0.0, fresh=False)
            zero = np.zeros((geo.n_lines, geo.n_samples, 2), np.float32)
            g, _ = self.renderer.display(bf, geo, noise=zero, noise_db=0.0, gain_db=0.0, tgc_bands_db=[0.0] * TGC_BANDS)
            cls = self.tables.label[bf.labels]
            shadow = self._shadow(bf, cls)
            ref_name, ref_level = REFERENCE[self.preset]
            ref = (bf.labels == self.phantom._index[ref_name]) & ~shadow
            med = float(np.median(g[ref])) if ref.any() else ref_level
            gain_ref = (ref_level - med) * (DYNAMIC_RANGE_DB / 255.0)
            an = T.analyse(bf.labels, cls, ~shadow, bf.contact_w > 0.5, shadow, geo, self.phantom, self.tables.label)
            target_area = float(an["vis_cls"][LABEL_INDEX[self.info.target_label]])
            self._calib = {"gain_ref_db": gain_ref, "target_area": max(target_area, 1.0), "shadow_fraction": an["shadow_fraction"]}
        finally:
            self.pose, self.deg, self._cache = saved_pose, saved_deg, saved_cache
        return self._calib

    @staticmethod
    def _shadow(bf, cls) -> np.ndarray:
        """Tissue behind bone or gas (air itself, e.g. lung, is not 'shadow')."""
        return (bf.excess_db > SHADOW_DB) & (cls != LABEL_INDEX["air"])

    def render(self, return_mask: bool = False):
        """Render the current frame: (image uint8 HxW, truth dict), or
        (image, truth, label mask) with return_mask=True. The label mask
        (uint8, values index sim.LABELS) is also kept in `last_label_mask`."""
        with self._lock:
            calib = self._calibration()
            geo = self.geometry()
            beat = self._beat_phase()
            bf = self._beam(geo, beat)
            noise = self._noise(geo)
            g, env = self.renderer.display(bf, geo, noise=noise, noise_db=self.deg["noise_db"], gain_db=self.pose["gain"],
                                           tgc_bands_db=self.deg["tgc_db"], blur=self.deg["blur"], gain_ref_db=calib["gain_ref_db"],
                                           return_envelope=self.keep_envelope)
            image = self.renderer.to_image(g, geo)
            cls = self.tables.label[bf.labels]
            mask = geo.scan_convert_nearest(cls)
            truth = self._truth(bf, cls, geo, calib)
            truth["beat_phase"] = beat
            self.last_envelope = env
            self.last_label_mask = mask
            self.last_beam = bf
            self.frame_index += 1
            if return_mask:
                return image, truth, mask
            return image, truth

    def lesion_mask(self) -> np.ndarray:
        """uint8 HxW of the last rendered frame: 1 where the lesion its truth
        reports (the largest visible one; without its halo) is visible (in
        contact, not shadowed), else 0 - the pixels truth's size_mm measures."""
        with self._lock:
            geo = self.geometry()
            if self._last_lesion_beam is None:
                return np.zeros(geo.image_size, np.uint8)
            return geo.scan_convert_nearest(self._last_lesion_beam.astype(np.uint8))

    def _truth(self, bf, cls, geo: BeamGeometry, calib: dict) -> dict:
        contact_lines = bf.contact_w > 0.5
        shadow = self._shadow(bf, cls)
        visible = ~shadow & contact_lines[:, None]
        an = T.analyse(bf.labels, cls, visible, contact_lines, shadow, geo, self.phantom, self.tables.label)
        top = an["lesions"][0]["info"].tissue if an["lesions"] else None
        self._last_lesion_beam = None if top is None else (bf.labels == top) & visible
        tcls = LABEL_INDEX[self.info.target_label]
        in_contact = np.broadcast_to(contact_lines[:, None], cls.shape)
        tmask = (cls == tcls) & in_contact
        area = np.broadcast_to(geo.area[None, :], cls.shape)
        t_total = float(area[tmask].sum())
        t_shadow = float(area[tmask & shadow].sum()) / t_total if t_total > 0 else 0.0
        visibility = float(an["vis_cls"][tcls]) / calib["target_area"]
        e = self._errors()
        pose_norm = self._view_offset()  # off target as the screen shows it, not one component at a time
        b = T.severities(
            contact=self.deg["contact"], shadow_excess=max(0.0, an["shadow_fraction"] - calib["shadow_fraction"]),
            target_shadow=t_shadow, gain_err=e["gain"], tgc_db=self.deg["tgc_db"], depth_err=e["depth"], depth_tol=self.tol["depth"],
            blur=self.deg["blur"], noise_db=self.deg["noise_db"], pose_norm=pose_norm,
        )
        quality = T.quality_from(b, visibility, self.deg["contact"])
        findings = T.findings_from(an, self.pose["depth"])
        action, why = self._decide()
        occ = self.deg["occluder"]
        return {
            "preset": self.preset,
            "seed": self.seed,
            "frame": self.frame_index,
            "probe": self.probe.kind,
            "quality": round(quality, 4),
            "reasons": T.flags_from(b),
            "reason_severity": {k: round(float(b[k]), 3) + 0.0 for k in QUALITY_REASONS},
            "action": action,
            "action_reason": why,
            "at_target": why == "at_target",
            "view_offset": round(min(pose_norm, 99.0), 3),
            "pose_error": self.pose_error(),
            "findings": findings,
            "report_en": sentence_en(**findings),
            "report_zh": sentence_zh(**findings),
            "target": self.info.target_label,
            "target_visible": round(min(visibility, 9.99), 3),
            "shadow_fraction": round(an["shadow_fraction"], 3),
            "lesions_in_view": [
                {**les["info"].to_dict(), "size_mm": round(les["size_mm"], 1), "location": T.location_of(les["v_mm"], self.pose["depth"])}
                for les in an["lesions"]
            ],
            "pose": {k: round(v, 3) for k, v in self.pose.items()},
            "depth_mm": self.pose["depth"],
            "spacing_mm": [round(geo.spacing_mm[0], 5), round(geo.spacing_mm[1], 5)],
            "degradations": {
                "contact": round(self.deg["contact"], 3), "contact_side": self.deg["contact_side"],
                "tgc_db": [round(x, 2) for x in self.deg["tgc_db"]], "blur": round(self.deg["blur"], 3),
                "noise_db": round(self.deg["noise_db"], 2), "occluder": None if occ is None else {k: (round(v, 2) if isinstance(v, float) else v) for k, v in occ.items()},
            },
            "mask_labels": list(LABELS),
        }

    def apply_random_artefact(self, rng: np.random.Generator, name: str | None = None, *, from_target: bool = True) -> dict:
        """Dataset helper: apply a named artefact (sim.artefacts.ARTEFACTS) or a
        random one, with random severity; returns what was applied."""
        from edge_assist.sim.artefacts import ARTEFACTS, apply_artefact

        with self._lock:
            return apply_artefact(self, name or str(rng.choice(ARTEFACTS)), rng, from_target=from_target)

    # -- summaries -------------------------------------------------------------------
    def anatomy(self) -> dict:
        """Scalar anatomy parameters of this patient (sizes, depths, positions, lesions)."""
        return dict(self.phantom.params)

    def describe(self) -> dict:
        return {
            "preset": self.preset, "seed": self.seed, "probe": self.probe.kind, "probe_model": self.probe.model,
            "target": {k: round(v, 2) for k, v in self.target.items()},
            "lesions": [les.to_dict() for les in self.phantom.lesions],
        }
