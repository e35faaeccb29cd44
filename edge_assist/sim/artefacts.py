"""Artefact scenarios: put a virtual patient into a state that shows one
quality problem (or none), with random severity.

Every scenario starts from a pose within tolerance of the target view (so the
only thing wrong is the named problem) and the ground truth is then measured
from the state, never assumed: a rib occluder that happens to miss, or an
off-target pose that also brings a rib into view, is labelled as it renders.
"""

from __future__ import annotations

import numpy as np

from edge_assist.sim.patient import ERROR_KEYS, STEP, VirtualPatient
from edge_assist.sim.render import TGC_BANDS

# Named artefacts (a superset of the quality reasons: TGC and depth have a direction).
ARTEFACTS = (
    "good", "no_contact", "partial_contact", "shadowing", "gain_high", "gain_low", "tgc_high", "tgc_low",
    "depth_shallow", "depth_deep", "blur", "noise", "off_target",
)
# Which artefacts produce a quality reason.
REASON_OF = {
    "no_contact": "no_contact", "partial_contact": "partial_contact", "shadowing": "shadowing",
    "gain_high": "gain_high", "gain_low": "gain_low", "tgc_high": "gain_high", "tgc_low": "gain_low",
    "depth_shallow": "depth", "depth_deep": "depth", "blur": "blur", "noise": "noise", "off_target": "off_target",
}
OFF_TARGET_RANGE = {"u": 40.0, "w": 40.0, "rot": 60.0, "fan": 25.0, "rock": 25.0}


# near_target: the view offset it accepts (the target view ends at 1.0), and how often it draws again.
NEAR_VIEW_OFFSET = 0.8
NEAR_DRAWS = 8


def near_target(vp: VirtualPatient, rng: np.random.Generator, frac: float = 0.65) -> None:
    """A pose within `frac` of every tolerance whose view is well inside the
    target view (offset <= NEAR_VIEW_OFFSET: several components' changes can
    add up; each new draw is a fifth nearer), the right depth (or one step
    off), gain within 2.5 dB, full contact, no artefacts."""
    vp.reset_to_target()
    vp.clear_degradations()
    t = vp.target
    for _ in range(NEAR_DRAWS):
        vp.set_pose_error(**{k: rng.uniform(-frac, frac) * vp.tol[k] for k in ERROR_KEYS})
        if vp.view_offset() <= NEAR_VIEW_OFFSET:
            break
        frac *= 0.8
    else:
        vp.set_pose_error()
    depth = t["depth"]
    if rng.random() < 0.3:
        depth += STEP["depth"] * rng.choice([-1, 1])
    vp.set_pose(depth=depth, gain=rng.uniform(-2.5, 2.5))


def apply_artefact(vp: VirtualPatient, name: str, rng: np.random.Generator, *, from_target: bool = True) -> dict:
    """Apply one artefact (see ARTEFACTS) with a random severity beyond its
    threshold; returns what was done."""
    if name not in ARTEFACTS:
        raise ValueError(f"unknown artefact {name!r}; use one of {', '.join(ARTEFACTS)}")
    if from_target:
        near_target(vp, rng)
    done: dict = {"artefact": name}
    if name == "good":
        mild = {"blur": rng.uniform(0, 0.15), "noise_db": rng.uniform(0, 10)}
        if rng.random() < 0.3:
            mild["tgc_db"] = list(rng.uniform(-2, 2, TGC_BANDS))
        vp.apply_degradations(mild)
        done.update(mild)
    elif name == "no_contact":
        vp.apply_degradations({"contact": 0.0})
        done["contact"] = 0.0
    elif name == "partial_contact":
        c, side = float(rng.uniform(0.3, 0.78)), int(rng.choice([-1, 1]))
        vp.apply_degradations({"contact": c, "contact_side": side})
        done.update(contact=c, contact_side=side)
    elif name == "shadowing":
        kind = str(rng.choice(["rib", "gas"]))
        wall = max(4.0, vp.phantom.wall_mm)
        v = min(wall * 0.6 + 2, 25.0) if kind == "rib" else wall + 8
        extent = vp.fan_extent_mm(v)
        w = float(rng.uniform(0.3, 0.55)) * extent
        w = min(w, 60.0) if kind == "gas" else w
        u = float(rng.uniform(-1, 1)) * max(0.0, extent / 2 - w / 2)
        occ = {"kind": kind, "u_mm": u, "width_mm": w}
        vp.apply_degradations({"occluder": occ})
        done["occluder"] = occ
    elif name in ("gain_high", "gain_low"):
        sign = 1 if name == "gain_high" else -1
        g = sign * float(rng.uniform(6, 18))
        vp.apply_degradations({"gain_db": g})
        done["gain_db"] = g
    elif name in ("tgc_high", "tgc_low"):
        sign = 1 if name == "tgc_high" else -1
        bands = [0.0] * TGC_BANDS
        b0 = int(rng.integers(0, TGC_BANDS - 1))
        db = sign * float(rng.uniform(9, 18))
        bands[b0] = db
        bands[b0 + 1] = db * float(rng.uniform(0.5, 1.0))
        vp.apply_degradations({"tgc_db": bands})
        done["tgc_db"] = bands
    elif name in ("depth_shallow", "depth_deep"):
        sign = -1 if name == "depth_shallow" else 1
        p = vp.probe
        t = vp.target["depth"]
        steps = int(rng.integers(2, 7))
        d = t + sign * steps * STEP["depth"]
        d = min(p.depth_max, max(p.depth_min, d))
        if abs(d - t) < 2 * STEP["depth"]:  # no room on this side
            d = min(p.depth_max, max(p.depth_min, t - sign * steps * STEP["depth"]))
        vp.set_pose(depth=d)
        done["depth_mm"] = d
    elif name == "blur":
        b = float(rng.uniform(0.5, 1.0))
        vp.apply_degradations({"blur": b})
        done["blur"] = b
    elif name == "noise":
        n = float(rng.uniform(30, 45))
        vp.apply_degradations({"noise_db": n})
        done["noise_db"] = n
    elif name == "off_target":
        keys = list(ERROR_KEYS)
        n = int(rng.choice([1, 1, 2, 3]))
        chosen = rng.choice(keys, size=n, replace=False)
        kw = {}
        for k in chosen:
            tol = vp.tol[str(k)]
            mag = float(rng.uniform(1.3 * tol, max(1.5 * tol, OFF_TARGET_RANGE[k])))
            kw[str(k)] = float(rng.choice([-1, 1])) * mag
        vp.set_pose_error(**kw)
        done["pose_error"] = kw
    return done
