"""Training data: a manifest JSONL read through the run-time preprocessing.

One line per image (the "bring your own data" format; the simulator's
dataset writer produces the same):

    {"image": "images/000001.png",          # path, relative to the JSONL file
     "report": "Liver in view. ...",        # optional, any language
     "report_zh": "...",                    # optional, a second language
     "labels": {...},                       # optional, see LABEL KEYS below
     "spacing_mm": [0.3, 0.3],              # optional (row, col) mm per pixel
     "region": [x0, y0, x1, y1],            # optional scan region; else detected
     "lesion_mask": "masks/000001.png"}     # optional: the reported lesion (nonzero), image-sized

LABEL KEYS (all optional; a missing label is masked out of its loss):
    quality (0..1), reasons [names from vocab.QUALITY_REASONS], action (a name
    from vocab.ACTIONS), findings {structures [..], lesion_present bool,
    size_mm float|null, echogenicity, margins, location}.

Images are preprocessed once (crop, grey, resize) by edge_assist.preprocess
and held as uint8 in memory; normalisation happens per batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_assist.errors import EdgeAssistError
from edge_assist.frames import Frame, ScanRegion
from edge_assist.preprocess import Preprocessor
from edge_assist.vocab import ACTIONS, ECHOGENICITY, LOCATIONS, MARGINS, QUALITY_REASONS, STRUCTURES

INPUT_SIZE = (128, 128)
MEAN, STD = 0.25, 0.25  # ultrasound is mostly dark: centre the typical grey
MASK_SIZE = 64  # lesion masks: half the input resolution (the interpreter's first feature map)


class DataError(EdgeAssistError):
    """A manifest line, image or report that cannot be used; names the line."""


@dataclass
class Record:
    line: int
    image: Path
    report: str | None
    report_zh: str | None
    labels: dict[str, Any]
    spacing_mm: tuple[float, float] | None
    region: tuple[int, int, int, int] | None
    lesion_mask: Path | None = None


def read_manifest(path: str | Path) -> list[Record]:
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found; point --data at a folder with manifest.jsonl (see docs/DATA.md)")
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg}); fix or remove the line") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
                raise DataError(f"{where}: needs an \"image\" path")
            img = (path.parent / obj["image"]).resolve()
            if not img.is_file():
                raise DataError(f"{where}: image {obj['image']} not found")
            for key in ("report", "report_zh"):
                if key in obj and obj[key] is not None and not isinstance(obj[key], str):
                    raise DataError(f"{where}: {key} must be text")
            sp = obj.get("spacing_mm")
            if sp is not None and not (isinstance(sp, list) and len(sp) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in sp)):
                raise DataError(f"{where}: spacing_mm must be [row_mm, col_mm] with positive numbers")
            labels = obj.get("labels") or {}
            if not isinstance(labels, dict):
                raise DataError(f"{where}: labels must be an object")
            if "action" in labels and labels["action"] not in ACTIONS:
                raise DataError(f"{where}: unknown action {labels['action']!r}")
            bad = [r for r in labels.get("reasons", []) if r not in QUALITY_REASONS]
            if bad:
                raise DataError(f"{where}: unknown quality reasons {bad}")
            region = obj.get("region")
            mask = obj.get("lesion_mask")
            if mask is not None:
                if not isinstance(mask, str):
                    raise DataError(f"{where}: lesion_mask must be a path to an image")
                mask = (path.parent / mask).resolve()
                if not mask.is_file():
                    raise DataError(f"{where}: lesion mask {obj['lesion_mask']} not found")
            records.append(Record(n, img, obj.get("report"), obj.get("report_zh"), labels,
                                  tuple(sp) if sp else None, tuple(region) if region else None, mask))
    if not records:
        raise DataError(f"{path} has no records")
    return records


@dataclass
class ArrayDataset:
    """Preprocessed images (N,H,W uint8) and label arrays with masks (-1 = unknown)."""

    images: np.ndarray
    quality: np.ndarray  # float32 (N,), nan = unknown
    reasons: np.ndarray  # float32 (N, R), nan row = unknown
    action: np.ndarray  # int64 (N,), -1 = unknown
    structures: np.ndarray  # float32 (N, S), nan row = unknown
    lesion: np.ndarray  # float32 (N,), nan = unknown
    size_frac: np.ndarray  # float32 (N,), lesion size / input height; nan = unknown
    echo: np.ndarray  # int64 (N,), -1 = unknown / no lesion
    margins: np.ndarray
    location: np.ndarray
    reports: list[str | None]
    reports_zh: list[str | None]
    mm_per_px: np.ndarray  # float32 (N, 2), nan = unknown
    meta: list[dict] = field(default_factory=list)
    # (N, MASK_SIZE, MASK_SIZE) uint8, 0..255: the fraction of each cell on the
    # reported lesion (the one size_frac measures); None = not known (the
    # interpreter then regresses the size instead of measuring it).
    lesion_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "ArrayDataset":
        idx = np.asarray(idx)
        pick = lambda a: a[idx]  # noqa: E731
        lst = lambda l: [l[i] for i in idx]  # noqa: E731
        return ArrayDataset(
            pick(self.images), pick(self.quality), pick(self.reasons), pick(self.action), pick(self.structures),
            pick(self.lesion), pick(self.size_frac), pick(self.echo), pick(self.margins), pick(self.location),
            lst(self.reports), lst(self.reports_zh), pick(self.mm_per_px), lst(self.meta) if self.meta else [],
            None if self.lesion_mask is None else pick(self.lesion_mask),
        )


def mask_target(mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A full-frame 0/1 lesion mask -> the MASK_SIZE x MASK_SIZE uint8 target
    (0..255, area fractions), cropped and resized as the frame is."""
    x0, y0, x1, y1 = box
    crop = (np.asarray(mask[y0:y1, x0:x1]) > 0).astype(np.float32) * 255.0
    return np.rint(cv2.resize(crop, (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_AREA)).astype(np.uint8)


def normalise(images_u8: np.ndarray) -> np.ndarray:
    """(N,H,W) uint8 -> (N,1,H,W) float32, as the run-time Preprocessor does."""
    return ((images_u8.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]


def _index(names, value) -> int:
    return names.index(value) if value in names else -1


def encode_labels(labels: dict, mm_per_px_row: float | None, height: int) -> dict[str, Any]:
    nan = float("nan")
    f = labels.get("findings") or {}
    out = {
        "quality": float(labels["quality"]) if "quality" in labels else nan,
        "reasons": np.array([float(r in labels["reasons"]) for r in QUALITY_REASONS], np.float32)
        if "reasons" in labels else np.full(len(QUALITY_REASONS), nan, np.float32),
        "action": _index(ACTIONS, labels.get("action")),
        "structures": np.array([float(s in f["structures"]) for s in STRUCTURES], np.float32)
        if "structures" in f else np.full(len(STRUCTURES), nan, np.float32),
        "lesion": float(bool(f["lesion_present"])) if "lesion_present" in f else nan,
        "size_frac": nan,
        "echo": _index(ECHOGENICITY, f.get("echogenicity")),
        "margins": _index(MARGINS, f.get("margins")),
        "location": _index(LOCATIONS, f.get("location")),
    }
    size = f.get("size_mm")
    if size is not None and mm_per_px_row:
        out["size_frac"] = float(size) / (mm_per_px_row * height)
    elif f.get("lesion_present") is False:
        out["size_frac"] = 0.0
    return out


def load_dataset(path: str | Path, size=INPUT_SIZE, limit: int | None = None) -> ArrayDataset:
    """Read a manifest and preprocess every image once, the run-time way."""
    records = read_manifest(path)[:limit]
    n = len(records)
    h, w = size
    images = np.zeros((n, h, w), np.uint8)
    rows: list[dict] = []
    mm = np.full((n, 2), np.nan, np.float32)
    pre = Preprocessor(size=size, mean=MEAN, std=STD, warmup_frames=1)
    masks: list[np.ndarray | None] = []
    for i, rec in enumerate(records):
        px = read_image(rec)
        pre.reset()
        prepared = pre(Frame(px, i, 0, region=given_region(rec)))
        images[i] = prepared.image
        lesion = read_lesion_mask(rec, px.shape[:2])
        if lesion is not None:
            masks.append(mask_target(lesion, prepared.region.box))
        elif (rec.labels.get("findings") or {}).get("lesion_present") is False:
            masks.append(np.zeros((MASK_SIZE, MASK_SIZE), np.uint8))  # no lesion: an empty mask is the truth
        else:
            masks.append(None)
        mpp = prepared.mm_per_px
        if mpp is None and rec.spacing_mm is not None:
            r = prepared.region
            mpp = (rec.spacing_mm[0] * r.height / h, rec.spacing_mm[1] * r.width / w)
        if mpp is not None:
            mm[i] = mpp
        rows.append(encode_labels(rec.labels, mpp[0] if mpp else None, h))
    col = lambda k, dt: np.array([r[k] for r in rows], dtype=dt)  # noqa: E731
    return ArrayDataset(
        images=images,
        quality=col("quality", np.float32),
        reasons=np.stack([r["reasons"] for r in rows]).astype(np.float32),
        action=col("action", np.int64),
        structures=np.stack([r["structures"] for r in rows]).astype(np.float32),
        lesion=col("lesion", np.float32),
        size_frac=col("size_frac", np.float32),
        echo=col("echo", np.int64),
        margins=col("margins", np.int64),
        location=col("location", np.int64),
        reports=[r.report for r in records],
        reports_zh=[r.report_zh for r in records],
        mm_per_px=mm,
        meta=[{"line": r.line, "preset": r.labels.get("preset"), "seed": r.labels.get("seed")} for r in records],
        # The interpreter learns to segment (and measure on) lesions only when every
        # frame's mask is known: a lesion_mask, or no lesion at all.
        lesion_mask=(np.stack(masks) if masks and all(m is not None for m in masks) and any(r.lesion_mask for r in records)
                     else None),
    )


def read_image(rec: Record) -> np.ndarray:
    """A record's image as uint8 grey or RGB."""
    px = cv2.imread(str(rec.image), cv2.IMREAD_UNCHANGED)
    if px is None:
        raise DataError(f"line {rec.line}: cannot read image {rec.image} (corrupt or unsupported)")
    if px.ndim == 3:
        px = cv2.cvtColor(px, cv2.COLOR_BGRA2RGB if px.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    if px.dtype != np.uint8:
        px = cv2.normalize(px, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return px


def given_region(rec: Record) -> ScanRegion | None:
    """The record's scan region when it names one (else the preprocessing detects it)."""
    return ScanRegion(tuple(int(v) for v in rec.region), None, rec.spacing_mm) if rec.region else None


def read_lesion_mask(rec: Record, shape: tuple[int, int]) -> np.ndarray | None:
    """The record's lesion mask as 0/1 uint8 of the image's size, or None without one."""
    if rec.lesion_mask is None:
        return None
    m = cv2.imread(str(rec.lesion_mask), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise DataError(f"line {rec.line}: cannot read lesion mask {rec.lesion_mask} (corrupt or unsupported)")
    if m.shape[:2] != tuple(shape):
        raise DataError(f"line {rec.line}: lesion mask {rec.lesion_mask.name} is {m.shape[1]}x{m.shape[0]}, "
                        f"its image {shape[1]}x{shape[0]}; masks must match their image pixel for pixel")
    return (m > 0).astype(np.uint8)
