"""How far each pose component may be off before the target view changes.

A view is what the beam cuts: the tissue of every beam sample. The view
change of a pose error is the fraction of beam samples whose tissue differs
from the target view's (noise-free, heart at rest). An in-plane slide of one
slide tolerance (TOL['u'], 6 mm) keeps the same anatomy on screen, shifted:
that is the framing a sonographer accepts. Each out-of-plane component
(elevational slide w, rotation, fan) is tolerated as far as it changes the
view no more than that slide does, in both directions (the median over
patients), rounded to half a unit and kept between 0.6 of a step (so the
simulator's policy always ends) and twice the default tolerance.

`edge-assist sim tolerances` prints the measurement; patient.TOLERANCES
holds the values measured on held-out patients (seeds 1000-1011).
"""

from __future__ import annotations

import numpy as np

from edge_assist.sim.patient import STEP, TOL, VirtualPatient

OUT_OF_PLANE = ("w", "rot", "fan")
PROBE_OFFSETS = {"w": np.arange(1.0, 20.5, 0.5), "rot": np.arange(1.0, 40.5, 1.0), "fan": np.arange(0.5, 20.25, 0.25)}


def view_change(vp: VirtualPatient, reference: np.ndarray, **errors) -> float:
    """Fraction of beam samples whose tissue differs from `reference` at the
    target pose plus `errors` (the worse of +errors and -errors)."""
    worst = 0.0
    for sign in (-1.0, 1.0):
        vp.reset_to_target()
        vp.set_pose_error(**{k: sign * v for k, v in errors.items()})
        worst = max(worst, float((vp.view_tissues() != reference).mean()))
    vp.reset_to_target()
    return worst


def measure_tolerances(preset: str, seeds) -> dict[str, float]:
    """The tolerances of a preset's target view, measured on `seeds` patients."""
    reached: dict[str, list[float]] = {k: [] for k in OUT_OF_PLANE}
    for seed in seeds:
        vp = VirtualPatient(preset, int(seed), image_size=(64, 64))
        vp.reset_to_target()
        ref = vp.view_tissues()
        budget = view_change(vp, ref, u=TOL["u"])
        for k in OUT_OF_PLANE:
            last_within = 0.0
            for o in PROBE_OFFSETS[k]:  # up to the first offset that changes the view more
                if view_change(vp, ref, **{k: float(o)}) > budget:
                    break
                last_within = float(o)
            reached[k].append(last_within)
    out = dict(TOL)
    for k, vals in reached.items():
        v = round(float(np.median(vals)) * 2) / 2
        out[k] = float(min(2 * TOL[k], max(0.6 * STEP[k], v)))
    return out
