"""The probe moves: names (vocab.ACTIONS, the guidance head's classes), what
each does in the simulator, and the step sizes."""

from edge_assist.sim.patient import ACTION_EFFECT, STEP, TOL, TOLERANCES, tolerances
from edge_assist.vocab import ACTION_TEXT, ACTIONS

__all__ = ["ACTIONS", "ACTION_TEXT", "ACTION_EFFECT", "STEP", "TOL", "TOLERANCES", "tolerances"]
