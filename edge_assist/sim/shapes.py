"""Analytic 3-D shapes painted onto the beam grid.

A frame is a planar section, and every beam is a ray, so each shape is
painted by intersecting it with the rays: exact boundaries at any depth
setting, and work that grows with the shape's area in view rather than with
the phantom's volume. Shapes are painted in order (later ones overwrite).
"""

from __future__ import annotations

import math

import numpy as np


def _ranges_to_mask(lab: np.ndarray, tissue: int, t0: np.ndarray, t1: np.ndarray, dr: float) -> None:
    """Paint samples whose depth r_j = (j + 0.5) dr lies in [t0, t1] per line."""
    L, S = lab.shape
    j_lo = np.clip(np.ceil(t0 / dr - 0.5), 0, S).astype(np.int32)
    j_hi = np.clip(np.floor(t1 / dr - 0.5) + 1, 0, S).astype(np.int32)
    hit = j_hi > j_lo
    if not hit.any():
        return
    idx = np.nonzero(hit)[0]
    i0, i1 = int(idx[0]), int(idx[-1]) + 1
    jmin, jmax = int(j_lo[hit].min()), int(j_hi[hit].max())
    jj = np.arange(jmin, jmax, dtype=np.int32)[None, :]
    lo = np.where(hit, j_lo, S + 1)[i0:i1, None]
    hi = j_hi[i0:i1, None]
    m = (jj >= lo) & (jj < hi)
    sub = lab[i0:i1, jmin:jmax]
    sub[m] = tissue


class Ellipsoid:
    """Ellipsoid with semi-axes `radii` along the rows of `axes` (unit vectors).

    `perturb` makes the margin irregular: the boundary radius in direction n
    is 1 + sum(a_k sin(f_k (n . m_k) + p_k)) times the ellipsoid radius.
    `beat` shrinks the radii by that fraction at end systole (heart chambers).
    """

    def __init__(self, center, axes, radii, tissue: int, perturb=None, beat: float = 0.0):
        self.c = np.asarray(center, dtype=np.float64)
        self.axes = np.asarray(axes, dtype=np.float64)
        self.radii = np.asarray(radii, dtype=np.float64)
        self.tissue = int(tissue)
        self.perturb = perturb  # list of (amp, freq, (3,) unit vector, phase)
        self.beat = float(beat)
        self.bound = 1.0 + (sum(abs(a) for a, _, _, _ in perturb) if perturb else 0.0)

    def _inv(self, beat_phase: float) -> np.ndarray:
        radii = self.radii * (1.0 - self.beat * beat_phase) if self.beat else self.radii
        return self.axes / radii[:, None]

    def inside(self, p: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
        """Point test for (N, 3) points (perturbation ignored); a positive
        margin shrinks the ellipsoid."""
        radii = np.maximum(self.radii - margin_mm, 1e-3)
        q = (np.atleast_2d(p) - self.c) @ (self.axes / radii[:, None]).T
        return (q * q).sum(1) <= 1.0

    def paint(self, lab: np.ndarray, o: np.ndarray, d: np.ndarray, r: np.ndarray, dr: float, beat_phase: float = 0.0) -> None:
        inv = self._inv(beat_phase)
        A = (o - self.c) @ inv.T
        B = d @ inv.T
        a = (B * B).sum(1)
        b = 2.0 * (A * B).sum(1)
        cc = (A * A).sum(1) - self.bound**2
        disc = b * b - 4.0 * a * cc
        hit = disc > 0
        if not hit.any():
            return
        sq = np.sqrt(np.where(hit, disc, 0.0))
        t0 = np.where(hit, (-b - sq) / (2 * a), 1e9)
        t1 = np.where(hit, (-b + sq) / (2 * a), -1e9)
        if self.perturb is None:
            _ranges_to_mask(lab, self.tissue, t0, t1, dr)
            return
        S = lab.shape[1]
        j_lo = np.clip(np.floor(t0 / dr - 0.5), 0, S).astype(np.int32)
        j_hi = np.clip(np.ceil(t1 / dr - 0.5) + 1, 0, S).astype(np.int32)
        ok = j_hi > j_lo
        if not ok.any():
            return
        idx = np.nonzero(ok)[0]
        i0, i1 = int(idx[0]), int(idx[-1]) + 1
        jmin, jmax = int(j_lo[ok].min()), int(j_hi[ok].max())
        rr = r[None, jmin:jmax]
        q0 = A[i0:i1, 0:1] + B[i0:i1, 0:1] * rr
        q1 = A[i0:i1, 1:2] + B[i0:i1, 1:2] * rr
        q2 = A[i0:i1, 2:3] + B[i0:i1, 2:3] * rr
        s = q0 * q0 + q1 * q1 + q2 * q2
        inv_n = 1.0 / np.sqrt(s + 1e-12)
        rad = np.ones_like(s)
        for amp, freq, m, ph in self.perturb:
            rad += amp * np.sin(freq * (m[0] * q0 + m[1] * q1 + m[2] * q2) * inv_n + ph)
        mask = s <= rad * rad
        sub = lab[i0:i1, jmin:jmax]
        sub[mask] = self.tissue


class Cylinder:
    """Finite cylinder (vessel, rib, trachea): axis `axis` through `center`,
    elliptical cross-section with semi-axes `radii` along `p1`, `p2`,
    half-length `half_len`."""

    def __init__(self, center, axis, radii, tissue: int, half_len: float = 1e4, p1=None):
        self.c = np.asarray(center, dtype=np.float64)
        a = np.asarray(axis, dtype=np.float64)
        self.a = a / np.linalg.norm(a)
        if p1 is None:
            helper = np.array([0.0, 0.0, 1.0]) if abs(self.a[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
            p1 = np.cross(self.a, helper)
        p1 = np.asarray(p1, dtype=np.float64)
        p1 = p1 - self.a * (p1 @ self.a)
        p1 /= np.linalg.norm(p1)
        self.p1 = p1
        self.p2 = np.cross(self.a, p1)
        self.radii = np.asarray(radii, dtype=np.float64) * np.ones(2)
        self.tissue = int(tissue)
        self.half_len = float(half_len)

    def inside(self, p: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
        q = np.atleast_2d(p) - self.c
        radii = np.maximum(self.radii - margin_mm, 1e-3)
        s = (q @ self.p1 / radii[0]) ** 2 + (q @ self.p2 / radii[1]) ** 2
        return (s <= 1.0) & (np.abs(q @ self.a) <= self.half_len - margin_mm)

    def paint(self, lab, o, d, r, dr, beat_phase: float = 0.0) -> None:
        inv = np.stack([self.p1 / self.radii[0], self.p2 / self.radii[1]])
        A = (o - self.c) @ inv.T
        B = d @ inv.T
        a = (B * B).sum(1)
        b = 2.0 * (A * B).sum(1)
        cc = (A * A).sum(1) - 1.0
        par = a < 1e-12
        disc = b * b - 4.0 * a * cc
        hit = (disc > 0) & ~par
        sq = np.sqrt(np.where(hit, disc, 0.0))
        aa = np.where(par, 1.0, a)
        t0 = np.where(hit, (-b - sq) / (2 * aa), 1e9)
        t1 = np.where(hit, (-b + sq) / (2 * aa), -1e9)
        inside_par = par & (cc <= 0)
        t0 = np.where(inside_par, -1e9, t0)
        t1 = np.where(inside_par, 1e9, t1)
        # Slab |q.a| <= half_len.
        A0 = (o - self.c) @ self.a
        B0 = d @ self.a
        small = np.abs(B0) < 1e-12
        Bs = np.where(small, 1.0, B0)
        s0 = (-self.half_len - A0) / Bs
        s1 = (self.half_len - A0) / Bs
        lo = np.where(small, np.where(np.abs(A0) <= self.half_len, -1e9, 1e9), np.minimum(s0, s1))
        hi = np.where(small, np.where(np.abs(A0) <= self.half_len, 1e9, -1e9), np.maximum(s0, s1))
        _ranges_to_mask(lab, self.tissue, np.maximum(t0, lo), np.minimum(t1, hi), dr)


class Layer:
    """Everything shallower than the surface z = f(x, y) (a gently undulating
    plane) gets `tissue`. Painted per line: one crossing depth per ray."""

    def __init__(self, depth_mm: float, tissue: int, slope=(0.0, 0.0), waves=()):
        self.z0 = float(depth_mm)
        self.slope = (float(slope[0]), float(slope[1]))
        self.waves = [tuple(float(v) for v in w) for w in waves]  # (amp, kx, ky, phase)
        self.tissue = int(tissue)

    def surface(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        z = self.z0 + self.slope[0] * x + self.slope[1] * y
        for amp, kx, ky, ph in self.waves:
            z = z + amp * np.sin(kx * x + ky * y + ph)
        return np.maximum(z, 0.3)

    def crossing(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        dz = d[:, 2]
        steep = dz > 0.05
        dzs = np.where(steep, dz, 1.0)
        t = (self.surface(o[:, 0], o[:, 1]) - o[:, 2]) / dzs
        for _ in range(4):
            t = np.maximum(t, 0.0)
            x = o[:, 0] + d[:, 0] * t
            y = o[:, 1] + d[:, 1] * t
            t = (self.surface(x, y) - o[:, 2]) / dzs
        flat_in = o[:, 2] < self.surface(o[:, 0], o[:, 1])
        return np.where(steep, np.maximum(t, 0.0), np.where(flat_in, 1e9, 0.0))

    def paint(self, lab, o, d, r, dr, beat_phase: float = 0.0) -> None:
        t = self.crossing(o, d)
        S = lab.shape[1]
        j_hi = np.clip(np.ceil(t / dr - 0.5), 0, S).astype(np.int32)
        jmax = int(j_hi.max())
        if jmax <= 0:
            return
        jj = np.arange(jmax, dtype=np.int32)[None, :]
        sub = lab[:, :jmax]
        sub[jj < j_hi[:, None]] = self.tissue

    def inside(self, p: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
        p = np.atleast_2d(p)
        return p[:, 2] < self.surface(p[:, 0], p[:, 1]) - margin_mm


def random_perturbation(rng: np.random.Generator, strength: float) -> list:
    """Lobulated/spiculated margin: low- and high-frequency angular terms."""
    terms = []
    for k in range(7):
        m = rng.normal(size=3)
        m /= np.linalg.norm(m)
        if k < 4:
            amp, freq = strength * rng.uniform(0.05, 0.10), rng.uniform(2.0, 5.0)
        else:
            amp, freq = strength * rng.uniform(0.03, 0.06), rng.uniform(9.0, 16.0)
        terms.append((amp, freq, m, rng.uniform(0, 2 * math.pi)))
    return terms


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q
