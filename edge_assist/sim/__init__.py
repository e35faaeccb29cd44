"""The virtual patient: a fast B-mode ultrasound simulator with exact ground
truth, used as a live source (`sim:liver?seed=3`) and as a dataset generator.

    from edge_assist.sim import VirtualPatient
    vp = VirtualPatient("liver", seed=3)
    image, truth = vp.render()        # uint8 HxW, ground-truth dict
    vp.move(vp.optimal_action())      # one of vocab.ACTIONS

See patient.py (policy, moves), render.py (the B-mode model), presets.py
(anatomy), truth.py (quality and findings), dataset.py (datasets).
"""

from edge_assist.sim.geometry import PROBES, ProbeSpec
from edge_assist.sim.patient import ACTION_EFFECT, STEP, TOL, TOLERANCES, SimError, VirtualPatient, tolerances
from edge_assist.sim.presets import ALL_PRESETS, PRESETS
from edge_assist.sim.tissues import LABELS

__all__ = ["VirtualPatient", "PRESETS", "ALL_PRESETS", "PROBES", "ProbeSpec", "LABELS", "STEP", "TOL", "TOLERANCES", "tolerances", "ACTION_EFFECT", "SimError"]
