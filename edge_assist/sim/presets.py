"""Procedural phantoms: random anatomy per (preset, seed), built around a
target view.

Each builder first draws the target view (probe position and angles on the
skin), then places the anatomy so that the view is what a sonographer would
aim for: RUQ liver-kidney (Morison's pouch, longitudinal), thyroid lobe with
the carotid (transverse), a parasternal-like cardiac window between two ribs.
Everything is drawn from a generator seeded by (preset, seed), so the same
seed always gives the same patient and different seeds are independent
patients.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from edge_assist.sim.geometry import DEPTH_STEP_MM, pose_basis
from edge_assist.sim.shapes import Cylinder, Ellipsoid, Layer, random_perturbation, random_rotation
from edge_assist.sim.tissues import BASE_TISSUES, LESION_ATTEN, LESION_ECHO, Tissue
from edge_assist.vocab import ECHOGENICITY


@dataclass(frozen=True)
class PresetInfo:
    name: str
    probe: str  # default probe kind
    description: str
    target_label: str  # label class that must be in view at the target
    nominal_atten: float  # dB/cm/MHz the default TGC compensates


PRESETS: dict[str, PresetInfo] = {
    "liver": PresetInfo("liver", "curvilinear", "RUQ: liver and right kidney (Morison's pouch), longitudinal", "kidney", 0.55),
    "thyroid": PresetInfo("thyroid", "linear", "thyroid lobe with the carotid artery, transverse", "thyroid", 0.6),
    "cardiac": PresetInfo("cardiac", "phased", "parasternal-like cardiac window between two ribs", "heart", 0.45),
}
# Not an exam: a homogeneous tissue-mimicking block with anechoic cylinders
# (speckle statistics, resolution checks).
EXTRA_PRESETS: dict[str, PresetInfo] = {
    "phantom": PresetInfo("phantom", "curvilinear", "QA phantom: homogeneous background with anechoic cylinders", "lesion", 0.5),
}
ALL_PRESETS = {**PRESETS, **EXTRA_PRESETS}


@dataclass
class LesionInfo:
    tissue: int
    echogenicity: str
    margins: str
    diameter_mm: float
    center: list
    host: str

    def to_dict(self) -> dict:
        return {
            "echogenicity": self.echogenicity,
            "margins": self.margins,
            "diameter_mm": round(float(self.diameter_mm), 1),
            "center_mm": [round(float(c), 1) for c in self.center],
            "host": self.host,
        }


@dataclass
class Phantom:
    preset: str
    seed: int
    tissues: list = field(default_factory=list)
    shapes: list = field(default_factory=list)
    background: int = 0
    target: dict = field(default_factory=dict)  # x, y, rot, fan, rock, depth
    lesions: list = field(default_factory=list)
    params: dict = field(default_factory=dict)  # scalar anatomy parameters (signature)
    beating: bool = False
    wall_mm: float = 0.0  # body-wall thickness under the target (skin + fat + muscle)
    _index: dict = field(default_factory=dict)

    def tissue(self, name: str) -> int:
        if name not in self._index:
            return self.add_tissue(BASE_TISSUES[name])
        return self._index[name]

    def add_tissue(self, t: Tissue) -> int:
        if len(self.tissues) >= 250:
            raise ValueError("too many tissues in one phantom")
        self.tissues.append(t)
        self._index[t.name] = len(self.tissues) - 1
        return len(self.tissues) - 1

    def add(self, shape):
        self.shapes.append(shape)
        return shape

    def paint(self, o, d, r, dr, beat_phase: float = 0.0, extra=()) -> np.ndarray:
        lab = np.full((o.shape[0], r.shape[0]), self.background, dtype=np.uint8)
        for s in self.shapes:
            s.paint(lab, o, d, r, dr, beat_phase)
        for s in extra:
            s.paint(lab, o, d, r, dr, beat_phase)
        return lab

    def signature(self) -> np.ndarray:
        return np.array([self.params[k] for k in sorted(self.params)], dtype=np.float64)


NEAR_PLANE_P = 0.65  # the first lesion lies in the target plane this often


def _seed_rng(preset: str, seed: int) -> np.random.Generator:
    key = zlib.crc32(preset.encode())
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, key, 0x51A7]))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _frame(ax0, ax1) -> np.ndarray:
    """Orthonormal rows (ax0, ax1', ax0 x ax1')."""
    a0 = _unit(ax0)
    a1 = np.asarray(ax1, float) - a0 * (np.asarray(ax1, float) @ a0)
    a1 = _unit(a1)
    return np.stack([a0, a1, np.cross(a0, a1)])


def _support(center_v: float, axes: np.ndarray, radii, beam: np.ndarray) -> float:
    """Deepest point along `beam` of an ellipsoid whose centre lies at depth center_v."""
    return center_v + float(np.sqrt(((np.asarray(radii) * (axes @ beam)) ** 2).sum()))


def _grid_depth(d: float, lo: float, hi: float) -> float:
    return float(min(hi, max(lo, math.ceil(d / DEPTH_STEP_MM) * DEPTH_STEP_MM)))


class _Builder:
    """Helpers shared by the preset builders."""

    def __init__(self, preset: str, seed: int):
        self.rng = _seed_rng(preset, seed)
        self.ph = Phantom(preset=preset, seed=int(seed))
        self.avoid: list = []  # shapes lesions must not overlap
        self.lesion_shapes: list = []

    def u(self, lo, hi, key: str | None = None) -> float:
        v = float(self.rng.uniform(lo, hi))
        if key:
            self.ph.params[key] = v
        return v

    def set_target(self, x, y, rot, fan, rock):
        self.x, self.y, self.rot, self.fan, self.rock = x, y, rot, fan, rock
        self.lat, self.beam, self.el = pose_basis(rot, fan, rock)
        self.face = np.array([x, y, 0.0])
        self.ph.target = {"x": x, "y": y, "rot": rot, "fan": fan, "rock": rock}

    def p(self, u=0.0, v=0.0, w=0.0) -> np.ndarray:
        """A point given in the target plane's coordinates (u lateral, v depth, w out of plane)."""
        return self.face + u * self.lat + v * self.beam + w * self.el

    def wall(self, skin, fat, muscle_t, muscle_tissue="wall_muscle"):
        rng = self.rng
        self.ph.wall_mm = skin + fat + muscle_t
        waves = lambda amp: [(amp * rng.uniform(0.3, 1.0), rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08), rng.uniform(0, 6.3))]  # noqa: E731
        slope = (rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03))
        ph = self.ph
        self.layers = [
            Layer(skin + fat + muscle_t, ph.tissue(muscle_tissue), slope, waves(1.5)),
            Layer(skin + fat, ph.tissue("fat"), slope, waves(1.5)),
            Layer(skin, ph.tissue("skin"), (0, 0), waves(0.3)),
        ]
        return skin + fat + muscle_t

    def add_layers(self):
        for layer in self.layers:
            self.ph.add(layer)

    def lesions(self, hosts, n_choices=(0, 1, 1, 2, 3), echo_weights=None):
        """hosts: list of (weight, name, host_tissue_name, sampler(rng)->point,
        inside(p, margin)->bool, max_d, shapes to keep clear of)."""
        rng = self.rng
        n = int(rng.choice(n_choices))
        self.ph.params["n_lesions"] = float(n)
        weights = np.array([h[0] for h in hosts], float)
        for k in range(n):
            host = hosts[int(rng.choice(len(hosts), p=weights / weights.sum()))]
            _, host_name, host_tissue, sampler, inside, max_d, avoid = host
            echo = str(rng.choice(ECHOGENICITY, p=echo_weights))
            if echo == "anechoic":
                margins = "irregular" if rng.random() < 0.1 else "circumscribed"
            else:
                margins = "irregular" if rng.random() < 0.5 else "circumscribed"
            d = float(math.exp(rng.uniform(math.log(4.0), math.log(max_d))))
            radii = d / 2 * np.array([1.0, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0)])
            placed = None
            near = k == 0 and rng.random() < NEAR_PLANE_P
            for _ in range(80):
                c = sampler(rng)
                if near:  # onto the target plane, give or take a third of the radius
                    c = c - ((c - self.face) @ self.el) * self.el + rng.uniform(-0.33, 0.33) * d / 2 * self.el
                halo = 2.0 if echo == "isoechoic" else 0.0
                reach = d / 2 * (1.25 if margins == "irregular" else 1.0) + halo + 1.0
                if not inside(c, reach):
                    continue
                if any(s.inside(c, -(reach + 1.0))[0] for s in list(avoid) + self.lesion_shapes):
                    continue
                placed = c
                break
            if placed is None:
                continue
            host_t = BASE_TISSUES[host_tissue]
            lesion_echo = LESION_ECHO[echo] * (1.0 if echo == "anechoic" else host_t.echo)
            t = Tissue(
                f"lesion{k}", lesion_echo, LESION_ATTEN[echo], host_t.impedance, label="lesion",
                wall_db=4.0 if echo == "anechoic" else None,
            )
            ti = self.ph.add_tissue(t)
            axes = random_rotation(rng)
            perturb = random_perturbation(rng, rng.uniform(0.9, 1.5)) if margins == "irregular" else None
            if echo == "isoechoic":
                halo_t = self.ph.add_tissue(Tissue(f"lesion{k}_halo", 0.22 * host_t.echo, 0.6, host_t.impedance, label="lesion"))
                self.ph.add(Ellipsoid(placed, axes, radii + 1.6, halo_t, perturb))
            shape = self.ph.add(Ellipsoid(placed, axes, radii, ti, perturb))
            self.lesion_shapes.append(shape)
            self.ph.lesions.append(LesionInfo(ti, echo, margins, d, [float(v) for v in placed], host_name))
            self.ph.params[f"lesion{k}_d"] = d
            self.ph.params[f"lesion{k}_pos"] = float(np.linalg.norm(placed - self.face))

    def finish(self, depth: float):
        self.ph.target["depth"] = depth
        for k in ("x", "y", "rot", "fan", "rock", "depth"):
            self.ph.params["target_" + k] = float(self.ph.target[k])
        return self.ph


# -- RUQ liver / right kidney ------------------------------------------------------------


def build_liver(seed: int) -> Phantom:
    b = _Builder("liver", seed)
    ph, rng = b.ph, b.rng
    b.set_target(b.u(-20, 20), b.u(-20, 20), b.u(70, 110, "rot"), b.u(-8, 8, "fan"), b.u(-5, 5, "rock"))
    wall = b.wall(b.u(1.5, 2.5, "skin"), b.u(5, 28, "fat"), b.u(8, 14, "muscle"))
    ph.background = ph.tissue("deep_tissue")
    medial = 1.0 if b.el[0] > 0 else -1.0  # the sign of w toward the midline (+x): IVC, hilum, gallbladder

    # Kidney, long axis in the target plane.
    v_k = wall + b.u(58, 80, "kidney_depth")
    ck = b.p(b.u(-3, 3, "kidney_u"), v_k)  # centred: what a sonographer aims for
    ka, kb, kc = b.u(46, 58, "kidney_len"), b.u(22, 28, "kidney_w"), b.u(19, 24, "kidney_t")
    psi = math.radians(b.u(-5, 5, "kidney_tilt"))  # long axis level on the screen
    k_axes = _frame(math.cos(psi) * b.lat + math.sin(psi) * b.beam, b.el)
    if k_axes[2] @ b.beam < 0:
        k_axes[2] *= -1
    k_radii = np.array([ka, kb, kc])

    # Liver: top against the body wall, bottom near the kidney's middle, cranial to it.
    dy = b.u(25, 45, "liver_dy")
    ry, rx = b.u(85, 105, "liver_ry"), b.u(80, 100, "liver_rx")
    bottom = ck[2] + b.u(-8, 6, "liver_bottom")
    f = math.sqrt(max(0.05, 1 - (dy / ry) ** 2))
    rz = max((bottom - wall) / (1 + f) + b.u(2, 8), 30.0)
    zc = bottom - rz * f
    cl = np.array([ck[0] + b.u(-20, 10, "liver_dx"), ck[1] + dy, zc])
    ang = rng.uniform(-0.3, 0.3)
    liver_axes = np.array([[math.cos(ang), math.sin(ang), 0.0], [-math.sin(ang), math.cos(ang), 0.0], [0.0, 0.0, 1.0]])
    liver = ph.add(Ellipsoid(cl, liver_axes, [rx, ry, rz], ph.tissue("liver")))
    left_lobe = ph.add(Ellipsoid(cl + np.array([rx * 0.8, -ry * 0.2, -rz * 0.2]), np.eye(3), [rx * 0.6, ry * 0.55, rz * 0.6], ph.tissue("liver")))

    def in_liver(p, m):
        return bool(liver.inside(p, m)[0] or left_lobe.inside(p, m)[0])

    # Vessels: IVC medial to the kidney, hepatic veins and portal branches in the liver.
    ivc = Cylinder(ck + np.array([b.u(35, 50, "ivc_dx"), 0, b.u(-12, 8)]), [rng.uniform(-0.1, 0.1), 1, rng.uniform(-0.1, 0.1)], [b.u(8, 12), 6.5], ph.tissue("blood"), 140, p1=[1, 0, 0])
    ph.add(ivc)
    b.avoid.append(ivc)
    conf = np.array([ivc.c[0] - 5, cl[1] + 0.45 * ry, zc + 0.25 * rz])
    for k, (tissue, n) in enumerate((("blood", 3), ("portal_blood", 3))):
        start = conf if tissue == "blood" else np.array([cl[0] + 0.2 * rx, cl[1] - 0.3 * ry, zc + 0.2 * rz])
        for j in range(n):
            for _ in range(30):
                end = cl + rng.uniform(-0.8, 0.8, 3) * np.array([rx, ry, rz])
                if in_liver(end, 8):
                    break
            seg = end - start
            length = float(np.linalg.norm(seg))
            rad = rng.uniform(3.0, 6.0) if tissue == "blood" else rng.uniform(3.5, 6.5)
            v = ph.add(Cylinder((start + end) / 2, seg, [rad, rad], ph.tissue(tissue), length / 2))
            ph.add(Ellipsoid(end, np.eye(3), [rad, rad, rad], ph.tissue(tissue)))  # rounded end
            b.avoid.append(v)
            ph.params[f"vessel{k}{j}"] = length

    # Gallbladder (not always), medial to the target plane: 6-35 mm, so about a quarter of
    # them show their wall at the target view (at 18-35 mm a readable held-out frame showed
    # one in 838, and the interpreter could not learn it; docs/TRAINING.md).
    if rng.random() < 0.6:
        for _ in range(20):
            cg = b.p(rng.uniform(-45, 25), wall + rng.uniform(18, 45), medial * rng.uniform(6, 35))
            if liver.inside(cg, 18)[0]:
                g_axes = _frame([rng.uniform(-0.4, 0.4), 1.0, rng.uniform(-0.3, 0.3)], [1, 0, 0])
                gb = ph.add(Ellipsoid(cg, g_axes, [rng.uniform(25, 38), rng.uniform(10, 15), rng.uniform(10, 15)], ph.tissue("bile")))
                b.avoid.append(gb)
                ph.params["gallbladder"] = float(gb.radii[0])
                break

    # Kidney with perirenal fat, cortex, medullary pyramids and sinus.
    fat_m = b.u(4, 8, "perirenal")
    kfat = ph.add(Ellipsoid(ck, k_axes, k_radii + fat_m, ph.tissue("perirenal_fat")))
    b.avoid.append(kfat)
    kidney = ph.add(Ellipsoid(ck, k_axes, k_radii, ph.tissue("kidney_cortex")))
    for s in np.linspace(-0.55, 0.55, 4):
        for side in (-1, 1):
            cpy = ck + s * ka * k_axes[0] + side * 0.42 * kc * k_axes[2]
            ph.add(Ellipsoid(cpy, k_axes, [0.13 * ka, 0.3 * kb, 0.2 * kc], ph.tissue("kidney_medulla")))
    # The sinus and the hilum open medially: fanning or sliding medially
    # shows the renal vein and the sinus widen, laterally only cortex.
    ph.add(Ellipsoid(ck + 0.08 * kc * k_axes[2] + medial * 0.18 * kb * k_axes[1], k_axes, [0.62 * ka, 0.48 * kb, 0.28 * kc], ph.tissue("kidney_sinus")))
    hilum = ck + medial * b.u(0.3, 0.4, "hilum_w") * kb * k_axes[1] + 0.1 * kc * k_axes[2]
    rv_end = ivc.c + np.array([0.0, hilum[1] - ivc.c[1], 0.0])
    rv_r = b.u(4.0, 5.5, "renal_vein_r")
    ph.add(Cylinder((hilum + rv_end) / 2, rv_end - hilum, [rv_r, rv_r], ph.tissue("blood"), float(np.linalg.norm(rv_end - hilum)) / 2))

    # Lung and diaphragm cranial to the liver dome; bowel gas caudally.
    lung_c = np.array([cl[0], cl[1] + ry + b.u(15, 30, "lung_dy"), zc + b.u(0, 25)])
    lung_r = np.array([110.0, 55.0, 80.0])
    ph.add(Ellipsoid(lung_c, np.eye(3), lung_r + 4.0, ph.tissue("diaphragm")))
    ph.add(Ellipsoid(lung_c, np.eye(3), lung_r, ph.tissue("air")))
    n_gas = int(rng.choice([0, 1, 2, 3], p=[0.3, 0.3, 0.25, 0.15]))
    ph.params["gas"] = float(n_gas)
    for _ in range(n_gas):
        cgas = np.array([ck[0] + rng.uniform(-20, 40), b.y - rng.uniform(70, 100), wall + rng.uniform(10, 25)])
        rg = rng.uniform(7, 14, 3)
        ph.add(Ellipsoid(cgas, np.eye(3), rg + 2.5, ph.tissue("bowel_wall")))
        ph.add(Ellipsoid(cgas, np.eye(3), rg, ph.tissue("air")))

    depth = _grid_depth(_support(v_k, k_axes, k_radii + fat_m, b.beam) + b.u(8, 20), 90, 220)

    def liver_sampler(r):
        w = r.uniform(-10, 10) if r.random() < 0.75 else r.uniform(-40, 40)
        return b.p(r.uniform(-60, 60), r.uniform(wall + 8, depth - 8), w)

    def kidney_sampler(r):
        return ck + r.uniform(-0.7, 0.7) * ka * k_axes[0] + r.uniform(-0.5, 0.5) * kb * k_axes[1] + r.uniform(-0.5, 0.5) * kc * k_axes[2]

    b.lesions([
        (0.85, "liver", "liver", liver_sampler, in_liver, 40.0, b.avoid),
        (0.15, "kidney", "kidney_cortex", kidney_sampler, lambda p, m: bool(kidney.inside(p, m * 0.6)[0]), 22.0, []),
    ])
    b.add_layers()
    # Ribs cranial to the target view (shadows when the probe slides headward).
    psi_r = math.radians(b.u(-20, 20, "rib_angle"))
    axis = np.array([math.cos(psi_r), math.sin(psi_r), 0.0])
    y0, spacing = b.y + b.u(50, 62, "rib_start"), b.u(22, 30, "rib_spacing")
    zr = 2.0 + (wall - 2.0) * 0.55
    for k in range(4):
        yk = y0 + k * spacing
        ph.add(Cylinder([b.x, yk, zr], axis, [rng.uniform(5, 7), rng.uniform(3.5, 4.5)], ph.tissue("bone"), 200, p1=np.cross(axis, [0, 0, 1.0])))
    return b.finish(depth)


# -- thyroid --------------------------------------------------------------------


def build_thyroid(seed: int) -> Phantom:
    b = _Builder("thyroid", seed)
    ph, rng = b.ph, b.rng
    b.set_target(b.u(-10, 10), b.u(-10, 10), b.u(-12, 12, "rot"), b.u(-6, 6, "fan"), b.u(-4, 4, "rock"))
    wall = b.wall(b.u(1.2, 2.0, "skin"), b.u(2, 7, "fat"), b.u(3, 6, "strap"), muscle_tissue="neck_muscle")
    ph.background = ph.tissue("neck_soft")
    axes = np.stack([b.el, b.lat, b.beam])  # long (cranio-caudal), transverse, antero-posterior
    la, lt, lap = b.u(20, 27, "lobe_len"), b.u(7.5, 11, "lobe_w"), b.u(7, 10, "lobe_ap")
    uL, vL = b.u(-2, 2, "lobe_u"), wall + lap + b.u(0.5, 2.0, "lobe_v")
    tr_r = b.u(8, 11, "trachea_r")
    u_tr, v_tr = uL + lt + tr_r + b.u(1, 3, "trachea_gap"), wall + tr_r + b.u(2, 4, "trachea_v")
    cca_r = b.u(3.0, 4.0, "cca_r")
    u_cca, v_cca = uL - lt - cca_r - b.u(0.5, 2.5, "cca_gap"), vL + b.u(0, 4)
    ijv_a, ijv_b = b.u(4, 7, "ijv_a"), b.u(2.5, 4.5)
    u_ijv, v_ijv = u_cca - cca_r - ijv_a + b.u(0, 2), v_cca - b.u(2, 5)
    # Sternocleidomastoid over the vessels.
    scm = Ellipsoid(b.p(u_cca - b.u(0, 6), wall + b.u(3, 5)), axes, [70, b.u(10, 15, "scm_w"), b.u(3, 5)], ph.tissue("neck_muscle"))
    ph.add(scm)
    # The target plane crosses the lobes above their middle: caudally they
    # widen and the isthmus comes into view, cranially they taper and the
    # carotid divides (landmarks that tell the two sides of the plane apart).
    w_lobe = -b.u(3, 6, "lobe_w_off")
    lobe = ph.add(Ellipsoid(b.p(uL, vL, w_lobe), axes, [la, lt, lap], ph.tissue("thyroid")))
    lobe2 = ph.add(Ellipsoid(b.p(2 * u_tr - uL, vL, w_lobe), axes, [la * b.u(0.85, 1.1), lt * b.u(0.85, 1.1), lap], ph.tissue("thyroid")))
    ph.add(Ellipsoid(b.p(u_tr, v_tr - tr_r - 2.0, -b.u(8, 11, "isthmus_w")), axes, [6, u_tr - uL, 2.6], ph.tissue("thyroid")))
    tr_axis = b.el + rng.uniform(-0.1, 0.1) * b.lat
    trachea = ph.add(Cylinder(b.p(u_tr, v_tr), tr_axis, [tr_r, tr_r], ph.tissue("cartilage"), 200, p1=b.lat))
    ph.add(Cylinder(b.p(u_tr, v_tr), tr_axis, [tr_r - 2.0, tr_r - 2.0], ph.tissue("air"), 200, p1=b.lat))
    b.avoid += [trachea]
    cca_axis = _unit(b.el + rng.uniform(-0.08, 0.08) * b.lat)
    w_bif = b.u(9, 14, "bifurcation_w")  # cranial to the target plane
    bif = b.p(u_cca, v_cca) + w_bif * cca_axis
    cca = ph.add(Cylinder(bif - 100.0 * cca_axis, cca_axis, [cca_r, cca_r], ph.tissue("artery_blood"), 100.0, p1=b.lat))
    ph.add(Ellipsoid(bif, _frame(cca_axis, b.lat), [cca_r * 1.6, cca_r * 1.3, cca_r * 1.2], ph.tissue("artery_blood")))  # the bulb
    for side, r_frac in ((-1.0, 0.8), (1.0, 0.6)):  # internal carotid posterolateral, external anteromedial
        axis_b = _unit(cca_axis + side * 0.3 * b.lat - side * 0.2 * b.beam)
        ph.add(Cylinder(bif + 40.0 * axis_b, axis_b, [cca_r * r_frac, cca_r * r_frac], ph.tissue("artery_blood"), 40.0, p1=b.lat))
    ijv = ph.add(Cylinder(b.p(u_ijv, v_ijv), b.el + rng.uniform(-0.08, 0.08) * b.lat, [ijv_a, ijv_b], ph.tissue("blood"), 200, p1=b.lat))
    b.avoid += [cca, ijv]
    depth = _grid_depth(vL + lap + b.u(6, 14, "depth_margin"), 30, 60)

    def lobe_sampler(r, c=lobe.c):
        return c + r.uniform(-0.6, 0.6) * la * axes[0] * (0.3 if r.random() < 0.7 else 1.0) + r.uniform(-0.5, 0.5) * lt * axes[1] + r.uniform(-0.4, 0.4) * lap * axes[2]

    max_d = min(25.0, 2 * lt * 0.95)
    b.lesions([
        (0.8, "thyroid", "thyroid", lobe_sampler, lambda p, m: bool(lobe.inside(p, min(m, 0.8 * min(lt, lap)))[0]), max_d, b.avoid),
        (0.2, "thyroid", "thyroid", lambda r: lobe_sampler(r, lobe2.c), lambda p, m: bool(lobe2.inside(p, min(m, 0.8 * min(lt, lap)))[0]), max_d, b.avoid),
    ], n_choices=(0, 1, 1, 2))
    b.add_layers()
    return b.finish(depth)


# -- cardiac window ----------------------------------------------------------------


def build_cardiac(seed: int) -> Phantom:
    b = _Builder("cardiac", seed)
    ph = b.ph
    psi_r = b.u(-25, 25, "rib_angle")
    b.set_target(b.u(-15, 15), b.u(-15, 15), psi_r + b.u(-4, 4, "rot_off"), b.u(-10, 10, "fan"), b.u(-8, 8, "rock"))
    skin, fat = b.u(1.5, 2.5, "skin"), b.u(3, 15, "fat")
    wall = b.wall(skin, fat, b.u(6, 12, "muscle"))
    ph.background = ph.tissue("air")  # lung around the mediastinum
    v_m = wall + b.u(85, 100, "mediastinum_v")
    med_axes = np.stack([b.lat, b.el, b.beam])
    ph.add(Ellipsoid(b.p(b.u(-10, 10), v_m), med_axes, [b.u(100, 115), b.u(55, 70, "med_el"), v_m - wall + b.u(4, 8)], ph.tissue("mediastinum")))
    # Heart, parasternal long axis: apex toward image left and deep, aortic
    # root and left atrium at the base (image right), RV in the near field.
    v_h = wall + b.u(55, 68, "heart_v")
    ch = b.p(b.u(-3, 3, "heart_u"), v_h)  # centred
    psi_h = math.radians(b.u(10, 18, "heart_tilt"))
    h_axes = _frame(-math.cos(psi_h) * b.lat + math.sin(psi_h) * b.beam, b.el)
    if h_axes[2] @ b.beam < 0:
        h_axes[2] *= -1
    a0, a1, a2 = h_axes
    sc = b.u(0.85, 1.15, "heart_scale")

    def P(x0, x2):
        return ch + sc * (x0 * a0 + x2 * a2)

    hr = sc * np.array([b.u(56, 64, "heart_len"), b.u(38, 45, "heart_w"), b.u(41, 47, "heart_t")])
    ph.add(Ellipsoid(ch, h_axes, hr + 2.5, ph.tissue("pericardium")))
    heart = ph.add(Ellipsoid(ch, h_axes, hr, ph.tissue("myocardium"), beat=0.03))
    blood = ph.tissue("cardiac_blood")
    lv = ph.add(Ellipsoid(P(10, 6), h_axes, sc * np.array([b.u(36, 44, "lv_len"), b.u(18, 22), b.u(15, 19, "lv_w")]), blood, beat=0.15))
    ph.add(Ellipsoid(P(0, -26), h_axes, sc * np.array([b.u(30, 36), b.u(20, 24), b.u(6.5, 9.5, "rv_w")]), blood, beat=0.10))
    la = ph.add(Ellipsoid(P(-47, 14), h_axes, sc * np.array([b.u(17, 22, "la"), 17, b.u(14, 17)]), blood, beat=-0.08))
    ao_r = sc * b.u(10, 12.5, "ao_r")
    ph.add(Cylinder(P(-48, -10), _unit(-a0 - 0.35 * a2), [ao_r, ao_r], ph.tissue("artery_blood"), sc * 22, p1=a2))
    valve = ph.tissue("valve")
    for (x0a, x2a), (x0b, x2b) in (((-29, 4), (-13, 9)), ((-29, 22), (-18, 17))):  # mitral leaflets
        pa, pb = P(x0a, x2a), P(x0b, x2b)
        ph.add(Ellipsoid((pa + pb) / 2, _frame(pb - pa, a1), [np.linalg.norm(pb - pa) / 2, 8 * sc, 0.7], valve))
    ph.add(Cylinder(P(-40, 42), a1, [sc * b.u(8, 10.5, "dao_r")] * 2, ph.tissue("artery_blood"), 200, p1=a0))
    # Either side of the long-axis plane (a1 is its normal): the right
    # ventricular outflow tract and pulmonary artery on one side, the right
    # atrium and tricuspid valve on the other, as when a sonographer tilts
    # toward the left shoulder or the right hip.
    w_out, w_in = sc * b.u(13, 16, "rvot_w"), -sc * b.u(13, 16, "ra_w")
    rvot_c = P(-30, -24) + w_out * a1
    ph.add(Ellipsoid(rvot_c, h_axes, sc * np.array([16.0, 9.0, 8.0]), blood, beat=0.08))
    pa_axis = _unit(a1 - 0.5 * a0 + 0.3 * a2)
    ph.add(Cylinder(rvot_c + sc * 22.0 * pa_axis, pa_axis, [sc * 10.0] * 2, ph.tissue("artery_blood"), sc * 16.0, p1=a0))
    ra_c = P(-12, -12) + w_in * a1
    ph.add(Ellipsoid(ra_c, h_axes, sc * np.array([20.0, 10.0, 14.0]), blood, beat=-0.06))
    pa_, pb_ = P(-2, -20) + (w_in + sc * 6.0) * a1, P(8, -10) + (w_in + sc * 6.0) * a1  # tricuspid leaflet
    ph.add(Ellipsoid((pa_ + pb_) / 2, _frame(pb_ - pa_, a1), [np.linalg.norm(pb_ - pa_) / 2, 6 * sc, 0.7], valve))
    depth = _grid_depth(_support(v_h, h_axes, hr + 2.5, b.beam) + b.u(15, 30, "depth_margin"), 120, 220)

    def cavity_sampler(r):
        c = lv.c if r.random() < 0.6 else la.c
        return c + r.uniform(-12, 12, 3)

    def in_cavity(p, m):
        return bool(lv.inside(p, min(m, 12))[0] or la.inside(p, min(m, 10))[0])

    def myo_sampler(r):
        return ch + r.uniform(-0.7, 0.7) * hr[0] * a0 + r.uniform(-0.4, 0.4) * hr[1] * a1 + r.uniform(-0.6, 0.6) * hr[2] * a2

    b.lesions([
        (0.6, "heart", "myocardium", cavity_sampler, in_cavity, 30.0, []),
        (0.4, "heart", "myocardium", myo_sampler, lambda p, m: bool(heart.inside(p, min(m, 10))[0]), 20.0, []),
    ], n_choices=(0, 1, 1, 2))
    b.add_layers()
    # Ribs parallel to the target plane, the window in a gap between two of them.
    ax = np.array([math.cos(math.radians(psi_r)), math.sin(math.radians(psi_r)), 0.0])
    perp = np.array([-ax[1], ax[0], 0.0])
    spacing = b.u(33, 38, "rib_spacing")
    semi_p, semi_z = b.u(5.0, 6.0, "rib_w"), b.u(3.5, 4.5)
    zr = skin + fat + b.u(3, 5) + semi_z
    off = b.u(-1, 1, "rib_offset")
    for k in range(-3, 3):
        c = b.face + ((k + 0.5) * spacing + off) * perp + np.array([0, 0, zr])
        ph.add(Cylinder(c, ax, [semi_p, semi_z], ph.tissue("bone"), 200, p1=perp))
    ph.beating = True
    return b.finish(depth)


# -- QA phantom -------------------------------------------------------------------


def build_phantom(seed: int) -> Phantom:
    b = _Builder("phantom", seed)
    ph = b.ph
    b.set_target(0.0, 0.0, 0.0, 0.0, 0.0)
    ph.wall_mm = 5.0
    ph.background = ph.tissue("qa_background")
    # Cysts on the image-right half only: the left half stays homogeneous
    # (speckle statistics without posterior enhancement in the way).
    for k, (u, v, d) in enumerate(((6, 30, 4), (14, 45, 6), (26, 60, 8), (12, 85, 10), (32, 105, 15))):
        cyst = ph.add_tissue(BASE_TISSUES["qa_cyst"].with_(name=f"qa_cyst{k}"))
        c = b.p(u, v)
        ph.add(Cylinder(c, [0, 1, 0], [d / 2, d / 2], cyst, 200, p1=[1, 0, 0]))
        ph.lesions.append(LesionInfo(cyst, "anechoic", "circumscribed", float(d), [float(x) for x in c], "phantom"))
    return b.finish(140.0)


BUILDERS = {"liver": build_liver, "thyroid": build_thyroid, "cardiac": build_cardiac, "phantom": build_phantom}


def build_phantom_for(preset: str, seed: int) -> Phantom:
    return BUILDERS[preset](seed)
