"""Datasets from the virtual patient.

generate() yields (image, truth) with fresh speckle per frame, poses near and
far from the target view and a balanced mix of artefacts: about 45 % of the
frames are good quality (within tolerance of the target, no artefact), the
rest show one problem (sometimes two), every quality reason well represented.

write_dataset() writes images/NNNNNN.png and manifest.jsonl, one line per
frame:

  {"image": "images/000000.png", "report": <English sentence>,
   "report_zh": <Chinese sentence>, "labels": <truth dict>,
   "spacing_mm": [row, col]}

(plus "mask": "masks/NNNNNN.png" with masks=True). The same JSONL format is
the 'bring your own data' format for training: "labels" may then carry only
the keys the user has.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from edge_assist import __version__
from edge_assist.sim.artefacts import apply_artefact
from edge_assist.sim.patient import SimError, VirtualPatient
from edge_assist.sim.presets import ALL_PRESETS, PRESETS
from edge_assist.sim.tissues import LABELS
from edge_assist.vocab import ACTIONS, QUALITY_REASONS

GOOD_FRACTION = 0.45
# Share of the bad frames given to each artefact. Off-target gets the most:
# it is also what teaches the guidance head its moves.
BAD_MIX = {
    "off_target": 0.27, "no_contact": 0.09, "partial_contact": 0.09, "shadowing": 0.08, "gain_high": 0.055,
    "tgc_high": 0.025, "gain_low": 0.055, "tgc_low": 0.025, "depth_shallow": 0.05, "depth_deep": 0.05,
    "blur": 0.095, "noise": 0.095,
}
SECOND_ARTEFACT_P = 0.15


def parse_seeds(text: str) -> list[int]:
    """'0-99', '3', '1,5,7-9' -> list of ints."""
    out: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise SimError(f"cannot read seeds {text!r}; use e.g. 0-99 or 1,5,7-9") from None
    if not out or min(out) < 0:
        raise SimError(f"seeds {text!r} must name at least one seed >= 0")
    return out


def parse_presets(preset_or_list) -> list[str]:
    if isinstance(preset_or_list, str):
        names = list(PRESETS) if preset_or_list == "all" else [p.strip() for p in preset_or_list.split(",") if p.strip()]
    else:
        names = list(preset_or_list)
    for p in names:
        if p not in ALL_PRESETS:
            raise SimError(f"unknown simulator preset {p!r}; choose from {', '.join(PRESETS)} or 'all'")
    if not names:
        raise SimError("no preset given; choose from " + ", ".join(PRESETS))
    return names


class _Deck:
    """Scenario schedule with exact proportions per deck of 200 frames,
    shuffled: small datasets are balanced too (no sampling luck)."""

    SIZE = 200

    def __init__(self, rng: np.random.Generator, good_fraction: float):
        self.rng = rng
        self.good = good_fraction
        self.cards: list[str] = []

    def _fill(self) -> None:
        n_good = int(round(self.SIZE * self.good))
        names, w = list(BAD_MIX), np.array(list(BAD_MIX.values()))
        counts = np.floor(w / w.sum() * (self.SIZE - n_good)).astype(int)
        short = (self.SIZE - n_good) - counts.sum()
        counts[np.argsort(-w)[:short]] += 1
        cards = ["good"] * n_good + [n for n, c in zip(names, counts) for _ in range(c)]
        self.rng.shuffle(cards)
        self.cards = cards

    def draw(self) -> list[str]:
        if not self.cards:
            self._fill()
        first = self.cards.pop()
        out = [first]
        if first not in ("good", "no_contact") and self.rng.random() < SECOND_ARTEFACT_P:
            names = list(BAD_MIX)
            rest = [n for n in names if n not in (first, "no_contact") and n.split("_")[0] != first.split("_")[0]]
            ww = np.array([BAD_MIX[n] for n in rest])
            out.append(str(self.rng.choice(rest, p=ww / ww.sum())))
        return out


def generate(preset_or_list, seeds: Iterable[int], frames_per_seed: int, rng_seed: int = 0, *, image_size=(256, 256),
             probe: str | None = None, good_fraction: float = GOOD_FRACTION, with_mask: bool = False,
             with_lesion_mask: bool = False) -> Iterator:
    """Yield (image uint8 HxW, truth dict) — or (image, truth, mask) with
    with_mask=True (the label mask), or (image, truth, lesion mask) with
    with_lesion_mask=True (VirtualPatient.lesion_mask) — for every preset x
    seed x frame. Deterministic in (presets, seeds, frames_per_seed, rng_seed)."""
    if with_mask and with_lesion_mask:
        raise SimError("ask for the label mask or the lesion mask, not both")
    presets = parse_presets(preset_or_list)
    seeds = list(seeds)
    if frames_per_seed < 1:
        raise SimError("frames per seed must be at least 1")
    rng = np.random.default_rng(np.random.SeedSequence([int(rng_seed) & 0xFFFFFFFF, 0xDA7A]))
    deck = _Deck(rng, good_fraction)
    for seed in seeds:
        for preset in presets:
            vp = VirtualPatient(preset, seed, probe, image_size, live_speckle=False)
            vp.reseed(int(rng.integers(0, 2**31)))
            for _ in range(frames_per_seed):
                arts = deck.draw()
                done = [apply_artefact(vp, arts[0], rng)]
                for extra in arts[1:]:
                    done.append(apply_artefact(vp, extra, rng, from_target=False))
                image, truth, mask = vp.render(return_mask=True)
                truth["scenario"] = [d["artefact"] for d in done]
                if with_lesion_mask:
                    yield image, truth, vp.lesion_mask()
                else:
                    yield (image, truth, mask) if with_mask else (image, truth)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SimError(f"{out} exists and is not a folder; choose another --out")
    if (out / "manifest.jsonl").exists() and not overwrite:
        raise SimError(f"{out} already holds a dataset (manifest.jsonl); choose an empty folder or pass --overwrite")
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimError(f"cannot create {out}: {exc.strerror}") from exc


def write_dataset(out_dir, preset_or_list, seeds, frames_per_seed: int, rng_seed: int = 0, *, image_size=(256, 256),
                  probe: str | None = None, masks: bool = False, overwrite: bool = False, progress=None) -> dict:
    """Write a dataset folder; returns a summary (also saved as dataset.json)."""
    out = Path(out_dir)
    presets = parse_presets(preset_or_list)
    seeds = list(seeds)
    _check_out(out, overwrite)
    if masks:
        (out / "masks").mkdir(exist_ok=True)
    tmp = out / "manifest.jsonl.tmp"
    reasons: Counter = Counter()
    actions: Counter = Counter()
    n_good = n = n_lesion = 0
    total = len(seeds) * len(presets) * frames_per_seed
    with open(tmp, "w", encoding="utf-8") as f:
        for i, (image, truth, mask) in enumerate(generate(presets, seeds, frames_per_seed, rng_seed, image_size=image_size, probe=probe, with_mask=True)):
            name = f"images/{i:06d}.png"
            if not cv2.imwrite(str(out / name), image):
                raise SimError(f"cannot write {out / name}; check the disk and permissions")
            line = {"image": name, "report": truth["report_en"], "report_zh": truth["report_zh"], "labels": truth,
                    "spacing_mm": truth["spacing_mm"],
                    # The live source gives the whole image as the scan region;
                    # say so, so training crops exactly as run time does.
                    "region": [0, 0, int(image.shape[1]), int(image.shape[0])]}
            if masks:
                mname = f"masks/{i:06d}.png"
                cv2.imwrite(str(out / mname), mask)
                line["mask"] = mname
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            n += 1
            n_good += truth["quality"] >= 0.5
            n_lesion += bool(truth["findings"]["lesion_present"])
            reasons.update(truth["reasons"])
            actions[truth["action"]] += 1
            if progress is not None:
                progress(n, total)
    os.replace(tmp, out / "manifest.jsonl")
    summary = {
        "generator": "edge_assist.sim", "version": __version__, "presets": presets, "seeds": [min(seeds), max(seeds), len(seeds)],
        "frames_per_seed": frames_per_seed, "rng_seed": rng_seed, "image_size": list(image_size), "probe": probe,
        "frames": n, "good_fraction": round(n_good / max(n, 1), 4), "lesion_fraction": round(n_lesion / max(n, 1), 4),
        "reason_counts": {k: reasons.get(k, 0) for k in QUALITY_REASONS},
        "action_counts": {k: actions.get(k, 0) for k in ACTIONS},
        "mask_labels": list(LABELS) if masks else None,
    }
    with open(out / "dataset.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
    return summary
