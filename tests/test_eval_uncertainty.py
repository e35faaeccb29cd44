"""How much the evaluation's figures can be trusted: intervals and the
support behind each findings term (no torch: the evaluation runs on ONNX
Runtime only)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_assist.training.common import wilson_interval
from edge_assist.training.evaluate import MIN_TERM_SUPPORT, interpreter_metrics
from edge_assist.vocab import ECHOGENICITY, LOCATIONS, MARGINS, STRUCTURES


def test_wilson_interval_known_values_and_edges():
    lo, hi = wilson_interval(177, 210)  # 84.3 %: the committed closed loop
    assert lo == pytest.approx(0.7877, abs=1e-3) and hi == pytest.approx(0.8857, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and 0.0 < wilson_interval(0, 20)[1] < 0.2
    assert wilson_interval(20, 20)[1] == 1.0 and 0.8 < wilson_interval(20, 20)[0] < 1.0
    assert all(np.isnan(wilson_interval(0, 0)))
    # more episodes, a narrower interval around the same rate
    a, b = wilson_interval(85, 100), wilson_interval(850, 1000)
    assert b[1] - b[0] < a[1] - a[0]


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _rows(n_patients: int = 30, frames: int = 6, seed: int = 0) -> list[dict]:
    """Diagnostic frames with known truth and an interpreter that is right on
    liver, kidney and lesions, and misses the one gallbladder frame."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for f in range(frames):
            structures = ["liver", "kidney"] + (["gallbladder"] if (p, f) == (0, 0) else [])
            lesion = bool(rng.random() < 0.5)
            echo, margin, loc = rng.integers(len(ECHOGENICITY)), rng.integers(len(MARGINS)), rng.integers(len(LOCATIONS))
            said = {"liver", "kidney"}
            raw = {
                "structures": np.array([_logit(0.9) if s in said else _logit(0.1) for s in STRUCTURES]),
                "lesion": np.array([_logit(0.9 if lesion else 0.1)]),
                "size": np.array([0.1]),
                "echogenicity": np.eye(len(ECHOGENICITY))[echo],
                "margins": np.eye(len(MARGINS))[margin],
                # location right on four frames in five
                "location": np.eye(len(LOCATIONS))[loc if f % 5 else (loc + 1) % len(LOCATIONS)],
            }
            truth = {"quality": 0.9, "preset": "liver", "seed": p,
                     "findings": {"structures": structures, "lesion_present": lesion, "echogenicity": ECHOGENICITY[echo],
                                  "margins": MARGINS[margin], "location": LOCATIONS[loc], "size_mm": None}}
            rows.append({"truth": truth, "raw": raw, "look": None, "abstained": False, "mm": None})
    return rows


def test_findings_terms_say_their_support_and_the_macro_its_interval():
    out = {"rows": _rows(), "decode": {"temperature": 1.0}, "input_h": 128}
    m = interpreter_metrics(out)
    assert m["f1_support"]["structure/gallbladder"] == 1 and m["f1"]["structure/gallbladder"] == 0.0
    assert m["terms_below_support"] == {"structure/gallbladder": 1}
    kept = [k for k, n in m["f1_support"].items() if n >= MIN_TERM_SUPPORT]
    assert "structure/gallbladder" not in kept and "lesion" in kept
    assert m["findings_macro_f1_supported"] == pytest.approx(np.mean([m["f1"][k] for k in kept]), abs=2e-3)
    # one missed frame drags the all-terms mean below the supported one
    assert m["findings_macro_f1"] < m["findings_macro_f1_supported"]
    lo, hi = m["findings_macro_f1_ci95"]
    assert 0.0 <= lo <= hi <= 1.0
    # patients are drawn with replacement: whether the gallbladder frame's
    # patient is drawn moves the mean by a whole term, and the interval shows it
    assert lo <= m["findings_macro_f1"] and hi >= m["findings_macro_f1_supported"] - 1e-3
    assert interpreter_metrics(out)["findings_macro_f1_ci95"] == [lo, hi]  # fixed seed: reproducible


def test_findings_use_each_structures_own_threshold():
    out = {"rows": _rows(), "decode": {"temperature": 1.0}, "input_h": 128}
    assert interpreter_metrics(out)["f1"]["structure/liver"] == 1.0
    # liver is said at p 0.9: above a threshold of 0.95 it is never reported
    out["decode"]["structure_thresholds"] = {"liver": 0.95}
    m = interpreter_metrics(out)
    assert m["f1"]["structure/liver"] == 0.0 and m["f1"]["structure/kidney"] == 1.0
