"""Ground truth for one frame: findings, quality score and reason flags.

Quality is defined, not learnt. Every reason k has a badness b_k in units of
its threshold; b_k > 1 raises the flag. The score has two regimes that meet
at vocab.QUALITY_THRESHOLD = 0.5, so that quality >= 0.5 exactly when no
flag is raised:

  no flag:   quality = 0.5 + 0.5 * vis * prod_k u(b_k),
             u(b) = 1 for b <= 0.5, falling linearly to 0 at b = 1
  flags:     quality = 0.5 * vis * prod_(flagged k) f(b_k),
             f(b) = 2 ** (-(b - 1) / 0.6)   (0.5 at b = 1.6, 0.16 at 2.6);
             off-target alone keeps a factor >= 0.2 (the image may be fine);
             no contact gives 0.

vis = min(1, visible fraction of the target structure / 0.8), the visible
(in view, unshadowed) area relative to the target view's.
"""

from __future__ import annotations

import math

import numpy as np

from edge_assist.sim.tissues import LABEL_INDEX, LABELS
from edge_assist.vocab import QUALITY_REASONS, STRUCTURES

# Minimum visible area for a structure to count as "in view":
# max(absolute mm^2, fraction of the fan's area).
STRUCTURE_MIN_AREA = {
    "liver": (60.0, 0.02),
    "kidney": (60.0, 0.02),
    "gallbladder": (30.0, 0.005),
    "vessel": (8.0, 0.002),
    "thyroid": (40.0, 0.02),
    "heart": (60.0, 0.02),
    "rib": (6.0, 0.001),
    "muscle": (30.0, 0.02),
}

# Thresholds (b = 1) of each reason.
PARTIAL_CONTACT_LOSS = 0.15  # fraction of the aperture off the skin
SHADOW_EXCESS = 0.15  # shadowed fraction of the fan beyond the target view's own
TARGET_SHADOW = 0.25  # fraction of the target structure shadowed
GAIN_DB = 4.0
TGC_DB = 6.0
BLUR = 0.4
NOISE_DB = 24.0  # interference 16 dB below tissue


def u_of(b: float) -> float:
    """Sub-threshold factor: 1 up to half the threshold, 0 at the threshold."""
    return 1.0 if b <= 0.5 else max(0.0, 1.0 - (b - 0.5) / 0.5)


def f_of(b: float, floor: float = 0.0) -> float:
    """Above-threshold factor: 1 at the threshold, halving every 0.6."""
    return max(floor, 2.0 ** (-(b - 1.0) / 0.6))


def location_of(v_mm: float, depth_mm: float) -> str:
    f = v_mm / depth_mm
    return "near_field" if f < 1 / 3 else ("mid_field" if f < 2 / 3 else "far_field")


def measure_lesion(u: np.ndarray, v: np.ndarray, dr: float) -> tuple[float, float]:
    """Largest in-plane extent (mm) along the principal axis, and centroid depth."""
    pts = np.stack([u, v], 1).astype(np.float64)
    c = pts.mean(0)
    if len(pts) < 3:
        return float(dr), float(c[1])
    cov = np.cov((pts - c).T)
    w, vec = np.linalg.eigh(cov)
    proj = (pts - c) @ vec[:, -1]
    return float(proj.max() - proj.min() + dr), float(c[1])


def analyse(labels, label_cls, visible, contact_lines, shadow, geo, phantom, tables_label):
    """Areas, structures in view, shadow fractions and the visible lesions.

    labels: (L,S) tissue ids; label_cls: (L,S) label classes; visible: (L,S)
    bool (in contact and not shadowed); contact_lines: (L,) bool; shadow:
    (L,S) bool."""
    L, S = labels.shape
    area = np.broadcast_to(geo.area[None, :], (L, S))
    fan_area = float(geo.area.sum() * L)
    vis_cls = np.bincount(label_cls[visible], weights=area[visible], minlength=len(LABELS))
    vis_tis = np.bincount(labels[visible], weights=area[visible], minlength=len(tables_label))
    structures = []
    for s in STRUCTURES:
        a_min, frac = STRUCTURE_MIN_AREA[s]
        if vis_cls[LABEL_INDEX[s]] >= max(a_min, frac * fan_area):
            structures.append(s)
    # Shadowed fraction of the fan below the skin region (lines in contact;
    # over the area of all lines, so losing contact never adds "shadow").
    region = np.zeros((L, S), bool)
    region[:, int(0.1 * S):] = True
    reg_area = float(area[region].sum())
    region[~contact_lines] = False
    sh_frac = float(area[region & shadow].sum() / reg_area) if reg_area > 0 else 0.0
    lesions = []
    for les in phantom.lesions:
        a = float(vis_tis[les.tissue])
        full = math.pi / 4 * les.diameter_mm**2
        if a < max(6.0, 0.12 * full):
            continue
        m = (labels == les.tissue) & visible
        size, v_c = measure_lesion(geo.u[m], geo.v[m], geo.dr)
        if size < 3.0:
            continue
        lesions.append({"area_mm2": a, "size_mm": size, "v_mm": v_c, "info": les})
    lesions.sort(key=lambda d: -d["area_mm2"])
    return {"vis_cls": vis_cls, "fan_area": fan_area, "structures": structures, "shadow_fraction": sh_frac, "lesions": lesions}


def findings_from(analysis: dict, depth_mm: float) -> dict:
    f = {"structures": list(analysis["structures"]), "lesion_present": False, "size_mm": None,
         "echogenicity": None, "margins": None, "location": None}
    if analysis["lesions"]:
        top = analysis["lesions"][0]
        f.update(lesion_present=True, size_mm=round(top["size_mm"], 1), echogenicity=top["info"].echogenicity,
                 margins=top["info"].margins, location=location_of(top["v_mm"], depth_mm))
    return f


def severities(*, contact: float, shadow_excess: float, target_shadow: float, gain_err: float, tgc_db, depth_err: float,
               depth_tol: float, blur: float, noise_db: float, pose_norm: float) -> dict:
    tgc = np.asarray(tgc_db, float)
    b = {
        "no_contact": 10.0 if contact < 0.1 else 0.0,
        "partial_contact": (1.0 - contact) / PARTIAL_CONTACT_LOSS if 0.1 <= contact < 0.999 else 0.0,
        "shadowing": max(shadow_excess / SHADOW_EXCESS, target_shadow / TARGET_SHADOW),
        "gain_high": max(gain_err / GAIN_DB, float(tgc.max()) / TGC_DB, 0.0),
        "gain_low": max(-gain_err / GAIN_DB, -float(tgc.min()) / TGC_DB, 0.0),
        "depth": abs(depth_err) / depth_tol,
        "blur": blur / BLUR,
        "noise": noise_db / NOISE_DB,
        "off_target": pose_norm,
    }
    if contact < 0.1:  # nothing else can be judged without contact
        b = {k: (v if k == "no_contact" else 0.0) for k, v in b.items()}
    return b


def quality_from(b: dict, visibility: float, contact: float) -> float:
    if contact < 0.1:
        return 0.0
    vis = min(1.0, max(0.0, visibility) / 0.8)
    flagged = [k for k in QUALITY_REASONS if b[k] > 1.0]
    if not flagged:
        return 0.5 + 0.5 * vis * float(np.prod([u_of(b[k]) for k in QUALITY_REASONS]))
    q = 0.5 * vis
    for k in flagged:
        q *= f_of(b[k], 0.2 if k == "off_target" else 0.0)
    return min(q, 0.4999)


def flags_from(b: dict) -> list[str]:
    return [k for k in QUALITY_REASONS if b[k] > 1.0]
