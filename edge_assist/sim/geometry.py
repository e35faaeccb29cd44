"""Probe geometries, the probe pose on the skin, and the beam grid.

World frame (mm): x toward the patient's left, y toward the head (cranial),
z into the body (depth); the skin is the plane z = 0.

A probe pose is a face point (x, y) on the skin plus three angles:
  rot  - rotation about the vertical: the image's lateral axis (image left ->
         right) is (cos rot, sin rot, 0);
  fan  - out-of-plane tilt about that lateral axis (positive: the beam leans
         toward (-sin rot, cos rot, 0), the head side at rot = 0);
  rock - in-plane tilt (positive: the beam leans toward image right).
All beams of one frame lie in one plane, so a frame is a planar section of the
phantom in any pose.

The beam grid has one row per scanline and one column per depth sample
(lines x samples); it is scan converted to the displayed image with a
precomputed cv2.remap table per depth setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge_assist.frames import ScanRegion

# pymust PSF of a C5-2v (3.57 MHz, focus 60 mm), FWHM in mm (FACTS.md).
_PSF_DEPTH = np.array([20.0, 40.0, 60.0, 80.0, 100.0])
_PSF_AXIAL = np.array([0.38, 0.40, 0.45, 0.47, 0.53])
_PSF_LATERAL = np.array([1.15, 1.75, 1.55, 2.05, 2.55])
_PSF_F0_MHZ = 3.57
_PSF_FOCUS_MM = 60.0
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # "linear" | "curvilinear" | "phased"
    model: str  # the kind of real probe it imitates
    freq_mhz: float
    footprint_mm: float  # aperture width (linear, phased); arc length (curvilinear)
    radius_mm: float  # curvilinear radius of curvature, 0 otherwise
    sector_deg: float  # curvilinear/phased field of view, 0 for linear
    depth_range_mm: tuple[float, float]
    focus_mm: float
    n_lines: int = 160
    n_samples: int = 320
    lens_mm: float = 3.0  # spacing of the reverberation bands with the probe in air

    @property
    def depth_min(self) -> float:
        return self.depth_range_mm[0]

    @property
    def depth_max(self) -> float:
        return self.depth_range_mm[1]


PROBES: dict[str, ProbeSpec] = {
    "linear": ProbeSpec("linear", "L12-5-like linear", 7.5, 38.0, 0.0, 0.0, (20.0, 90.0), 20.0, lens_mm=2.2),
    "curvilinear": ProbeSpec("curvilinear", "C5-2-like convex", 3.5, 56.0, 50.0, 64.0, (40.0, 300.0), 60.0, lens_mm=3.2),
    "phased": ProbeSpec("phased", "P4-2-like phased array", 2.5, 20.0, 0.0, 80.0, (40.0, 300.0), 80.0, lens_mm=3.6),
}

DEPTH_STEP_MM = 10.0


def pose_basis(rot_deg: float, fan_deg: float, rock_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(e_lat, e_beam, e_el): image lateral axis, central beam direction and
    the plane normal, as world unit vectors."""
    t, f, k = math.radians(rot_deg), math.radians(fan_deg), math.radians(rock_deg)
    lat0 = np.array([math.cos(t), math.sin(t), 0.0])
    el0 = np.array([-math.sin(t), math.cos(t), 0.0])
    z = np.array([0.0, 0.0, 1.0])
    ax1 = math.cos(f) * z + math.sin(f) * el0
    el1 = math.cos(f) * el0 - math.sin(f) * z
    beam = math.cos(k) * ax1 + math.sin(k) * lat0
    lat = math.cos(k) * lat0 - math.sin(k) * ax1
    return lat, beam, el1


def _interp_extrap(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Linear interpolation, clamped below xp[0], extrapolated above xp[-1]."""
    y = np.interp(x, xp, fp)
    slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    hi = x > xp[-1]
    y[hi] = fp[-1] + slope * (x[hi] - xp[-1])
    return y


# Displayed speckle is coarser than the physical PSF (vendor filtering,
# FACTS.md: 2-3x); on screen the coarsening is mostly axial, which keeps the
# grain's aspect ratio near that of real B-mode images.
DISPLAY_AXIAL = 2.4
DISPLAY_LATERAL = 1.25


def psf_fwhm_mm(probe: ProbeSpec, depth_mm: np.ndarray, speckle_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Axial and lateral FWHM (mm) at the given depths: the C5-2 table, moved
    to the probe's focus and scaled by wavelength, times the display
    coarsening (DISPLAY_AXIAL, DISPLAY_LATERAL) times speckle_scale."""
    d = np.asarray(depth_mm, dtype=np.float64) * (_PSF_FOCUS_MM / probe.focus_mm)
    scale = (_PSF_F0_MHZ / probe.freq_mhz) * speckle_scale
    return (_interp_extrap(d, _PSF_DEPTH, _PSF_AXIAL) * scale * DISPLAY_AXIAL,
            _interp_extrap(d, _PSF_DEPTH, _PSF_LATERAL) * scale * DISPLAY_LATERAL)


def _gauss_kernel(sigma: float) -> np.ndarray:
    """Energy-normalised Gaussian (sum of squares 1): white speckle keeps its power."""
    half = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= math.sqrt(float((k * k).sum()))
    return k.astype(np.float32)


class BeamGeometry:
    """Everything that depends only on the probe, the depth and the image size:
    line origins/directions in the image plane, sample depths, PSF kernels,
    scan-conversion maps, fan mask, and the area (mm^2) each beam sample covers."""

    def __init__(self, probe: ProbeSpec, depth_mm: float, image_size: tuple[int, int], speckle_scale: float = 1.0):
        self.probe = probe
        self.depth_mm = float(depth_mm)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        L, S = probe.n_lines, probe.n_samples
        self.n_lines, self.n_samples = L, S
        self.dr = self.depth_mm / S
        self.r = ((np.arange(S) + 0.5) * self.dr).astype(np.float64)
        R = probe.radius_mm
        if probe.kind == "linear":
            u = np.linspace(-probe.footprint_mm / 2, probe.footprint_mm / 2, L)
            self.origin_uv = np.stack([u, np.zeros(L)], 1)
            self.dir_uv = np.tile([0.0, 1.0], (L, 1))
            self.dphi = 0.0
            lat_spacing = np.full(S, probe.footprint_mm / (L - 1))
        else:
            half = math.radians(probe.sector_deg) / 2
            phi = np.linspace(-half, half, L)
            self.dphi = 2 * half / (L - 1)
            self.dir_uv = np.stack([np.sin(phi), np.cos(phi)], 1)
            if probe.kind == "curvilinear":
                self.origin_uv = np.stack([R * np.sin(phi), R * np.cos(phi) - R], 1)
                lat_spacing = (R + self.r) * self.dphi
            else:
                self.origin_uv = np.zeros((L, 2))
                lat_spacing = np.maximum(self.r, 2.0) * self.dphi
        self.lat_spacing = lat_spacing
        self.area = (lat_spacing * self.dr).astype(np.float32)  # (S,) mm^2 per sample
        # In-plane coordinates of every sample (for measurements in mm).
        self.u = (self.origin_uv[:, 0:1] + self.dir_uv[:, 0:1] * self.r[None, :]).astype(np.float32)
        self.v = (self.origin_uv[:, 1:2] + self.dir_uv[:, 1:2] * self.r[None, :]).astype(np.float32)
        self._build_psf(speckle_scale)
        self._build_maps()

    # -- PSF --------------------------------------------------------------------
    def _build_psf(self, speckle_scale: float) -> None:
        ax_fwhm, lat_fwhm = psf_fwhm_mm(self.probe, self.r, speckle_scale)
        self.axial_fwhm_mm = ax_fwhm
        self.lateral_fwhm_mm = lat_fwhm
        sig_ax = float(np.median(ax_fwhm)) * FWHM_TO_SIGMA / self.dr
        self.kernel_axial = _gauss_kernel(max(0.6, sig_ax))
        sig_lat = np.clip(lat_fwhm * FWHM_TO_SIGMA / self.lat_spacing, 0.6, 10.0)
        S = self.n_samples
        anchors = [int(S * 0.08), int(S * 0.45), int(S * 0.85)]
        sig = [float(sig_lat[a]) for a in anchors]
        if max(sig) / min(sig) < 1.3:
            anchors, sig = [S // 2], [float(np.median(sig_lat))]
        self.lateral_kernels = [_gauss_kernel(s) for s in sig]
        # Piecewise-linear blend weights over depth, and the column range each band touches.
        j = np.arange(S)
        weights = []
        for k, a in enumerate(anchors):
            w = np.zeros(S, np.float32)
            if len(anchors) == 1:
                w[:] = 1
            else:
                lo = anchors[k - 1] if k > 0 else None
                hi = anchors[k + 1] if k + 1 < len(anchors) else None
                w[:] = 0
                if lo is None:
                    w[j <= a] = 1
                else:
                    m = (j > lo) & (j <= a)
                    w[m] = (j[m] - lo) / (a - lo)
                if hi is None:
                    w[j > a] = 1
                else:
                    m = (j > a) & (j < hi)
                    w[m] = (hi - j[m]) / (hi - a)
            nz = np.nonzero(w)[0]
            weights.append((int(nz[0]), int(nz[-1]) + 1, w[nz[0] : nz[-1] + 1].copy()))
        self.lateral_bands = weights
        # Gain that makes a continuous specular interface normal to the beam
        # come out at amplitude 1 after filtering.
        mid = self.lateral_kernels[len(self.lateral_kernels) // 2]
        self.specular_norm = 1.0 / float(self.kernel_axial.max() * mid.sum())

    # -- scan conversion --------------------------------------------------------
    def _build_maps(self) -> None:
        H, W = self.image_size
        p = self.probe
        R = p.radius_mm
        D = self.depth_mm
        if p.kind == "linear":
            v_top, height, width = 0.0, D, p.footprint_mm
        else:
            half = math.radians(p.sector_deg) / 2
            v_top = R * (math.cos(half) - 1.0)
            height = D - v_top
            width = 2 * (R + D) * math.sin(half)
        s = max(height / H, width / W)
        self.spacing_mm = (s, s)
        self.v_top = v_top
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
        v = v_top + (yy + 0.5) * s
        u = (xx + 0.5 - W / 2.0) * s
        L, S = self.n_lines, self.n_samples
        if p.kind == "linear":
            line = (u + p.footprint_mm / 2) / (p.footprint_mm / (L - 1))
            samp = v / self.dr - 0.5
            rr = v
        else:
            half = math.radians(p.sector_deg) / 2
            rho = np.hypot(u, v + R)
            phi = np.arctan2(u, v + R)
            line = (phi + half) / self.dphi
            rr = rho - R
            samp = rr / self.dr - 0.5
        valid = (line >= -0.5) & (line <= L - 0.5) & (rr >= 0) & (rr <= D)
        mapx = np.where(valid, np.clip(samp, 0, S - 1), -10).astype(np.float32)
        mapy = np.where(valid, np.clip(line, 0, L - 1), -10).astype(np.float32)
        self.mapx, self.mapy = mapx, mapy
        self.map1, self.map2 = cv2.convertMaps(mapx, mapy, cv2.CV_16SC2)
        self.fan_mask = (valid * 255).astype(np.uint8)
        self.fan_mask.flags.writeable = False  # shared by every frame of this geometry
        # Nearest-neighbour maps for labels.
        self.nn_x = np.where(valid, np.clip(np.rint(samp), 0, S - 1), -10).astype(np.float32)
        self.nn_y = np.where(valid, np.clip(np.rint(line), 0, L - 1), -10).astype(np.float32)

    def scan_convert(self, beam: np.ndarray) -> np.ndarray:
        return cv2.remap(beam, self.map1, self.map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def scan_convert_nearest(self, beam: np.ndarray) -> np.ndarray:
        return cv2.remap(beam, self.nn_x, self.nn_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def region(self) -> ScanRegion:
        H, W = self.image_size
        return ScanRegion(box=(0, 0, W, H), kind=self.probe.kind, spacing_mm=self.spacing_mm, mask=self.fan_mask)

    def world_lines(self, x_mm: float, y_mm: float, rot: float, fan: float, rock: float) -> tuple[np.ndarray, np.ndarray]:
        """Line origins and unit directions in world coordinates, (L, 3) each."""
        lat, beam, _ = pose_basis(rot, fan, rock)
        face = np.array([x_mm, y_mm, 0.0])
        o = face[None, :] + self.origin_uv[:, 0:1] * lat[None, :] + self.origin_uv[:, 1:2] * beam[None, :]
        d = self.dir_uv[:, 0:1] * lat[None, :] + self.dir_uv[:, 1:2] * beam[None, :]
        return o, d
