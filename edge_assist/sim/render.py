"""B-mode rendering with the convolution model in the beam (polar) domain.

Per frame: tissue labels on the beam grid (analytic shapes intersected with
the scanlines) -> complex scatterer field scaled by each tissue's
backscatter -> specular echoes at interfaces -> round-trip attenuation with
transmission losses (shadows behind bone and air, enhancement behind fluid)
-> separable, depth-dependent PSF (cv2.sepFilter2D on the IQ field) ->
receiver noise -> envelope -> TGC and gain -> log compression -> grey map ->
scan conversion with a precomputed cv2.remap table.

In live mode the scatterers are looked up by world coordinates in a hashed
lattice, so the speckle belongs to the tissue: it stays still while the
probe holds still and travels with the anatomy when the probe slides in
plane. In dataset mode they are drawn afresh for every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge_assist.sim.geometry import BeamGeometry
from edge_assist.sim.tissues import LABEL_INDEX

LN10_20 = math.log(10.0) / 20.0
DB_PER_NEPER_POWER = 10.0 / math.log(10.0)  # 10 log10(P) = 4.343 ln(P)
DYNAMIC_RANGE_DB = 60.0
SPECULAR_K_DB = 24.0  # specular echo of a perfect reflector, dB above tissue speckle
SHADOW_DB = 20.0  # excess loss beyond which a sample counts as shadowed
NOISE_FLOOR_DB = -78.0  # receiver noise power re. liver speckle at the face
ARTEFACT_NOISE_REF_DB = 40.0  # noise artefact of noise_db dB sits at noise_db - 40 dB re. tissue
TGC_BANDS = 8
_HASH_BITS = 16  # 64k scatterers (512 KB): stays in cache
_SMOOTH = np.array([0.2, 0.6, 0.2], np.float32)
_HASH_TABLE: np.ndarray | None = None


def hash_table() -> np.ndarray:
    """A fixed table of unit-power complex Gaussian scatterers (shared)."""
    global _HASH_TABLE
    if _HASH_TABLE is None:
        rng = np.random.default_rng(0x5CA77E4)
        t = rng.standard_normal((1 << _HASH_BITS, 2)).astype(np.float32) * np.float32(math.sqrt(0.5))
        _HASH_TABLE = t.view(np.complex64).reshape(-1)
    return _HASH_TABLE


def grey_map(gamma: float = 1.35) -> np.ndarray:
    """Display grey map: a gentle power law that darkens the mid-tones, as
    scanner maps do (their grey histograms are skewed positive)."""
    x = np.arange(256, dtype=np.float64) / 255.0
    y = x**gamma
    return np.clip(np.rint(y * 255), 0, 255).astype(np.uint8)


class TissueTables:
    """Per-phantom lookup tables indexed by tissue id (and by tissue pairs)."""

    def __init__(self, tissues, freq_mhz: float):
        nt = len(tissues)
        self.n = nt
        self.echo = np.array([t.echo for t in tissues], np.float32)
        self.atten = np.array([t.atten for t in tissues], np.float32)
        z = np.array([t.impedance for t in tissues], np.float64)
        self.label = np.array([LABEL_INDEX[t.label] for t in tissues], np.uint8)
        self.textures = [(i, t.texture) for i, t in enumerate(tissues) if t.texture]
        self.freq = freq_mhz
        # Excess attenuation (beyond soft tissue) marks shadows.
        self.excess = np.maximum(self.atten - 2.0, 0.0).astype(np.float32)
        za, zb = z[:, None], z[None, :]
        gamma = np.abs(zb - za) / (zb + za)
        spec_db = np.where(gamma > 1e-9, 20 * np.log10(np.maximum(gamma, 1e-9)) + SPECULAR_K_DB, -200.0)
        wall = np.array([t.wall_db if t.wall_db is not None else -200.0 for t in tissues])
        wall_db = np.maximum(wall[:, None], wall[None, :])
        amp = 10 ** (spec_db / 20) + 10 ** (wall_db / 20)
        np.fill_diagonal(amp, 0.0)
        self.spec_pair = amp.astype(np.float32).reshape(-1)
        tl = -20 * np.log10(np.maximum(1 - gamma**2, 1e-5))  # round trip, dB
        np.fill_diagonal(tl, 0.0)
        self.tloss_pair = tl.astype(np.float32).reshape(-1)
        self.air = [i for i, t in enumerate(tissues) if t.label == "air"]


@dataclass
class BeamFrame:
    """What the renderer knows about one frame, in the beam domain."""

    labels: np.ndarray  # (L, S) tissue ids
    iq: np.ndarray  # (L, S, 2) float32 after PSF, before noise
    excess_db: np.ndarray  # (L, S) loss from bone/air/interfaces
    contact_w: np.ndarray  # (L,) 1 in contact, 0 in air


def world_coords(o: np.ndarray, d: np.ndarray, r: np.ndarray):
    r32 = r.astype(np.float32)[None, :]
    return [(o[:, k : k + 1].astype(np.float32) + d[:, k : k + 1].astype(np.float32) * r32) for k in range(3)]


def _mix(h: np.ndarray) -> np.ndarray:
    """Multiplicative hashing: the top bits of h * K index the table."""
    h *= np.uint32(0x2C1B3C6D)
    h >>= np.uint32(32 - _HASH_BITS)
    return h.astype(np.intp)  # gathers are ~2x faster with native indices


def hashed_scatterers(xyz, cell_mm: float, salt: int) -> np.ndarray:
    """Complex Gaussian scatterer field fixed in world coordinates: unit
    Gaussians on a hashed lattice of pitch cell_mm, trilinearly interpolated
    and renormalised to unit power. Continuous in space, so the speckle moves
    with the tissue when the probe slides, with the same statistics
    everywhere (no moire from lattice/beam-grid beats)."""
    inv = np.float32(1.0 / cell_mm)
    off = np.float32(20000.0)
    table = hash_table()
    primes = (np.uint32(0x9E3779B1), np.uint32(0x85EBCA77), np.uint32(0xC2B2AE3D))
    hs, ws, norm = [], [], None
    for k in range(3):
        g = (xyz[k] + off) * inv
        i0 = g.astype(np.uint32)
        f = g - i0.astype(np.float32)
        h0 = i0 * primes[k]
        hs.append((h0, h0 + primes[k]))
        w1 = f
        w0 = np.float32(1.0) - f
        ws.append((w0, w1))
        n = w0 * w0 + w1 * w1
        norm = n if norm is None else norm * n
    salt32 = np.uint32(salt & 0xFFFFFFFF)
    hx, hy, hz = hs
    wx, wy, wz = ws
    out = None
    for a in (0, 1):
        hxa = hx[a] ^ salt32
        for b in (0, 1):
            hab = hxa ^ hy[b]
            wab = wx[a] * wy[b]
            for c in (0, 1):
                v = table.take(_mix(hab ^ hz[c]))
                v *= wab * wz[c]
                if out is None:
                    out = v
                else:
                    out += v
    out *= (np.float32(1.0) / np.sqrt(norm))
    return out


def apply_textures(E: np.ndarray, lab: np.ndarray, tables: TissueTables, xyz) -> None:
    for ti, kind in tables.textures:
        m = lab == ti
        if not m.any():
            continue
        x, y, z = xyz[0][m], xyz[1][m], xyz[2][m]
        if kind == "striated":
            mod = 1.0 + 0.55 * np.cos(z * 3.9 + 0.9 * np.sin(0.11 * x + 0.07 * y))
        elif kind == "septa":
            # Thin bright septa: where a sum of oblique waves crosses zero.
            s = (np.sin(0.55 * z + 0.21 * x + 1.9 * np.sin(0.13 * y)) + np.sin(0.47 * z - 0.17 * y + 1.7 * np.sin(0.11 * x))
                 + 0.8 * np.sin(0.9 * z + 0.3 * x - 0.2 * y))
            mod = 0.7 + 2.4 * (np.abs(s) < 0.12)
        else:
            continue
        E[m] *= mod.astype(np.float32)


def tgc_curve(geo: BeamGeometry, nominal_atten: float, bands_db) -> np.ndarray:
    """TGC in dB per sample: nominal attenuation compensation + user bands."""
    comp = 2.0 * nominal_atten * geo.probe.freq_mhz * geo.r / 10.0
    centres = (np.arange(TGC_BANDS) + 0.5) / TGC_BANDS * geo.depth_mm
    user = np.interp(geo.r, centres, np.asarray(bands_db, np.float64))
    return (comp + user).astype(np.float32)


class Renderer:
    """Stateless per frame; holds the tables for one phantom and probe."""

    def __init__(self, tables: TissueTables, nominal_atten: float):
        self.t = tables
        self.nominal_atten = nominal_atten
        self.lut = grey_map()

    def beam(self, lab: np.ndarray, o: np.ndarray, d: np.ndarray, geo: BeamGeometry, *,
             scatter: np.ndarray | None, cell_salt: int, contact: float = 1.0, contact_side: int = 1) -> BeamFrame:
        """Everything up to and including the PSF (cacheable while the probe is still).

        scatter: (L, S) complex64 fresh scatterers, or None for world-locked ones."""
        t = self.t
        L, S = lab.shape
        xyz = world_coords(o, d, geo.r)
        if scatter is None:
            cell = 0.8 * max(geo.dr, float(np.median(geo.lat_spacing)))
            scatter = hashed_scatterers(xyz, cell, cell_salt)
        E = t.echo[lab]
        if t.textures:
            apply_textures(E, lab, t, xyz)
        field = scatter * E
        # Interfaces: specular echo on the proximal side, transmission loss beyond.
        pair = lab[:, :-1].astype(np.int32) * t.n + lab[:, 1:]
        spec = t.spec_pair[pair] * np.float32(geo.specular_norm)
        tl = t.tloss_pair[pair]
        dr_cm2f = np.float32(2.0 * t.freq * geo.dr / 10.0)
        step = t.atten[lab] * dr_cm2f
        step[:, 1:] += tl
        att = np.cumsum(step, axis=1)
        att -= 0.5 * step
        xstep = t.excess[lab] * dr_cm2f
        xstep[:, 1:] += tl
        excess = np.cumsum(xstep, axis=1)
        amp = np.exp(np.minimum(att, 200.0) * np.float32(-LN10_20))
        field *= amp
        spec *= amp[:, :-1]
        field.real[:, :-1] += spec
        # Reverberation (A-lines) below the first air interface of each line.
        if t.air:
            is_air = np.isin(lab, t.air) if len(t.air) > 1 else lab == t.air[0]
            has = is_air.any(1)
            if has.any():
                ja = np.argmax(is_air, axis=1)
                rows = np.nonzero(has & (ja > 2))[0]
                if rows.size:
                    j = ja[rows]
                    a_air = amp[rows, j - 1]
                    base = 10 ** (SPECULAR_K_DB / 20) * geo.specular_norm * a_air
                    for k in range(2, 9):
                        jk = k * (j + 1) - 1
                        ok = jk < S
                        if not ok.any():
                            break
                        field.real[rows[ok], jk[ok]] += base[ok] * (a_air[ok] ** (k - 1)) * (0.55 ** (k - 1))
        # Contact: lines in air carry no tissue echo, only lens reverberation.
        w = contact_weights(L, contact, contact_side)
        if w.min() < 1.0:
            field *= w[:, None]
            lens = max(1, int(round(geo.probe.lens_mm / geo.dr)))
            nom = tgc_curve(geo, self.nominal_atten, np.zeros(TGC_BANDS))
            for k in range(1, 40):
                jk = k * lens - 1
                if jk >= S or geo.r[jk] > min(24.0, 0.45 * geo.depth_mm):
                    break
                a = 10 ** ((14.0 - 3.0 * k - nom[jk]) / 20.0) * geo.specular_norm
                field.real[:, jk] += (1.0 - w) * a
            excess = excess + ((1.0 - w) * 80.0)[:, None].astype(np.float32)
        iq = field.view(np.float32).reshape(L, S, 2)
        iq = self.psf(iq, geo)
        return BeamFrame(lab, iq, excess, w)

    def psf(self, iq: np.ndarray, geo: BeamGeometry) -> np.ndarray:
        one = np.ones(1, np.float32)
        ax = cv2.sepFilter2D(iq, cv2.CV_32F, geo.kernel_axial, one, borderType=cv2.BORDER_REFLECT_101)
        if len(geo.lateral_kernels) == 1:
            return cv2.sepFilter2D(ax, cv2.CV_32F, one, geo.lateral_kernels[0], borderType=cv2.BORDER_REFLECT_101)
        out = np.zeros_like(ax)
        for kern, (j0, j1, w) in zip(geo.lateral_kernels, geo.lateral_bands):
            f = cv2.sepFilter2D(np.ascontiguousarray(ax[:, j0:j1]), cv2.CV_32F, one, kern, borderType=cv2.BORDER_REFLECT_101)
            out[:, j0:j1] += f * w[None, :, None]
        return out

    def display(self, bf: BeamFrame, geo: BeamGeometry, *, noise: np.ndarray, noise_db: float, gain_db: float,
                tgc_bands_db, blur: float = 0.0, gain_ref_db: float = 0.0, return_envelope: bool = False):
        """Noise, envelope, TGC, gain, log compression; returns the beam-domain
        display (float, 0..255 before the grey map) and optionally the
        TGC-compensated envelope (linear)."""
        tgc = tgc_curve(geo, self.nominal_atten, tgc_bands_db)
        # Receiver noise enters before the TGC (it grows with depth); the noise
        # artefact (interference) after it, at noise_db - 40 dB re. tissue.
        var = 10 ** (NOISE_FLOOR_DB / 10.0) + 10 ** ((noise_db - ARTEFACT_NOISE_REF_DB) / 10.0 - tgc / 10.0) if noise_db > 0 else None
        if var is None:
            iq = bf.iq + noise * np.float32(10 ** (NOISE_FLOOR_DB / 20.0))
        else:
            iq = bf.iq + noise * np.sqrt(var).astype(np.float32)[None, :, None]
        sq = iq * iq
        p = sq[..., 0] + sq[..., 1]
        p += np.float32(1e-30)
        lnp = cv2.log(p)
        k = np.float32(255.0 / DYNAMIC_RANGE_DB)
        offset = (tgc + np.float32(gain_db + gain_ref_db + DYNAMIC_RANGE_DB)) * k
        g = lnp * np.float32(DB_PER_NEPER_POWER * 255.0 / DYNAMIC_RANGE_DB) + offset[None, :]
        # Light vendor-style smoothing of the log image (speckle looks softer on screen).
        g = cv2.sepFilter2D(g, cv2.CV_32F, _SMOOTH, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
        if blur > 0:
            g = motion_blur(g, blur)
        env = None
        if return_envelope:
            env = np.sqrt(p) * (10 ** (tgc / 20.0))[None, :]
        return g, env

    def to_image(self, g: np.ndarray, geo: BeamGeometry) -> np.ndarray:
        np.clip(g, 0, 255, out=g)
        beam8 = cv2.LUT(g.astype(np.uint8), self.lut)
        return geo.scan_convert(beam8)


def contact_weights(n_lines: int, contact: float, side: int) -> np.ndarray:
    """Per-line coupling: 1 in contact, 0 in air, with a short transition.
    side=+1 loses contact on the image-right side, -1 on the left."""
    if contact >= 0.999:
        return np.ones(n_lines, np.float32)
    if contact <= 0.001:
        return np.zeros(n_lines, np.float32)
    i = np.arange(n_lines, dtype=np.float32)
    edge = contact * n_lines
    x = (edge - i) if side > 0 else (i - (n_lines - edge))
    return np.clip(0.5 + x / 6.0, 0.0, 1.0).astype(np.float32)


def motion_blur(g: np.ndarray, severity: float) -> np.ndarray:
    """Probe motion during persistence: smear along the lines plus a ghost."""
    k = 1 + int(round(severity * 22))
    out = cv2.blur(g, (1, k), borderType=cv2.BORDER_REFLECT_101)
    shift = max(1, k // 2)
    ghost = np.empty_like(out)
    ghost[shift:] = out[:-shift]
    ghost[:shift] = out[:1]
    a = np.float32(0.35 * min(1.0, severity * 1.5))
    return out * (1 - a) + ghost * a
