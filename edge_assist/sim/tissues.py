"""Tissue properties and the label classes of the ground-truth mask.

echo: backscatter amplitude relative to liver parenchyma (linear amplitude,
      intensity goes with its square).
atten: attenuation in dB/cm/MHz (one way).
impedance: acoustic impedance in MRayl (reflection and transmission at
      interfaces follow from it; bone and air give shadows).
wall_db: a specular boundary echo (capsules, vessel walls, fascia), in dB
      relative to the speckle of liver, added where a beam crosses into or
      out of this tissue.
texture: None, "striated" (muscle fibres) or "septa" (fat lobules).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edge_assist.vocab import STRUCTURES

# Classes of the label mask (uint8 values are indices into this tuple).
# 0 is outside the fan; 1 is unnamed soft tissue (body wall, deep tissue);
# the named structures follow in vocab.STRUCTURES order; then lesions and air.
LABELS: tuple[str, ...] = ("background", "soft_tissue", *STRUCTURES, "lesion", "air")
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}


@dataclass(frozen=True)
class Tissue:
    name: str
    echo: float
    atten: float
    impedance: float
    label: str = "soft_tissue"
    wall_db: float | None = None
    texture: str | None = None

    def with_(self, **kw) -> "Tissue":
        return replace(self, **kw)


BASE_TISSUES: dict[str, Tissue] = {
    t.name: t
    for t in [
        Tissue("gel", 0.0, 0.0, 1.50),
        Tissue("skin", 1.7, 1.2, 1.70, wall_db=2.0),
        Tissue("fat", 0.45, 0.6, 1.38, texture="septa"),
        Tissue("wall_muscle", 0.55, 1.0, 1.70, wall_db=3.0, texture="striated"),
        Tissue("deep_tissue", 0.55, 0.8, 1.62, texture="striated"),
        Tissue("perirenal_fat", 1.5, 0.6, 1.40),
        Tissue("liver", 1.0, 0.5, 1.65, label="liver"),
        Tissue("kidney_cortex", 0.62, 0.6, 1.62, label="kidney", wall_db=6.0),
        Tissue("kidney_medulla", 0.30, 0.6, 1.62, label="kidney"),
        Tissue("kidney_sinus", 1.9, 0.6, 1.45, label="kidney"),
        Tissue("bile", 0.006, 0.02, 1.55, label="gallbladder", wall_db=4.0),
        Tissue("blood", 0.02, 0.15, 1.61, label="vessel"),
        Tissue("portal_blood", 0.02, 0.15, 1.61, label="vessel", wall_db=7.0),
        Tissue("artery_blood", 0.02, 0.15, 1.61, label="vessel", wall_db=6.0),
        Tissue("bone", 0.0, 20.0, 7.80, label="rib"),
        Tissue("air", 0.0, 40.0, 0.0004, label="air"),
        Tissue("diaphragm", 2.6, 0.8, 1.70, wall_db=3.0),
        Tissue("bowel_wall", 1.2, 0.8, 1.65),
        Tissue("thyroid", 1.30, 0.6, 1.63, label="thyroid", wall_db=3.0),
        Tissue("neck_muscle", 0.42, 1.0, 1.70, label="muscle", wall_db=4.0, texture="striated"),
        Tissue("neck_soft", 0.5, 0.7, 1.60),
        Tissue("cartilage", 0.22, 1.0, 1.80, wall_db=3.0),
        Tissue("myocardium", 0.55, 0.5, 1.67, label="heart", texture="striated"),
        Tissue("cardiac_blood", 0.035, 0.15, 1.61, label="heart"),
        Tissue("pericardium", 2.8, 0.8, 1.70, label="heart", wall_db=3.0),
        Tissue("valve", 2.2, 0.6, 1.70, label="heart"),
        Tissue("mediastinum", 0.85, 0.6, 1.60),
        Tissue("qa_background", 1.0, 0.5, 1.60),
        Tissue("qa_cyst", 0.004, 0.02, 1.55, label="lesion"),
    ]
}

# Host-relative backscatter of lesion types, and their attenuation.
LESION_ECHO = {"anechoic": 0.006, "hypoechoic": 0.38, "isoechoic": 1.0, "hyperechoic": 2.3}
LESION_ATTEN = {"anechoic": 0.02, "hypoechoic": 0.6, "isoechoic": 0.6, "hyperechoic": 0.8}
