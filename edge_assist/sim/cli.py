"""`edge-assist sim ...`: datasets, single frames and a render benchmark.

  edge-assist sim dataset --preset liver --seeds 0-99 --frames-per-seed 20 --out DIR
  edge-assist sim show --preset liver --seed 3 --out frame.png [--artefact no_contact] [--moves slide_left,rotate_cw]
  edge-assist sim tolerances [--preset all] [--seeds 1000-1011]
  edge-assist sim bench [--preset all] [--frames 200]

Errors a user can cause raise EdgeAssistError subclasses; the main CLI prints
them on one line and exits 2 (main() here does the same when run alone).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from edge_assist.sim.artefacts import ARTEFACTS, apply_artefact
from edge_assist.sim.dataset import parse_presets, parse_seeds, write_dataset
from edge_assist.sim.geometry import PROBES
from edge_assist.sim.patient import SimError, VirtualPatient
from edge_assist.sim.presets import ALL_PRESETS, PRESETS


def _size(text: str) -> tuple[int, int]:
    from edge_assist.sources.sim import parse_size

    return parse_size(text, "--size")


def register(subparsers) -> None:
    p = subparsers.add_parser("sim", help="virtual patient: datasets, single frames, render benchmark")
    sp = p.add_subparsers(dest="sim_command", metavar="SIMCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    d = sp.add_parser("dataset", help="write a training dataset (images/ + manifest.jsonl)")
    d.add_argument("--preset", default="liver", help=f"{', '.join(PRESETS)}, a comma list, or all (default liver)")
    d.add_argument("--seeds", default="0-99", help="patients, e.g. 0-99 or 1,5,7-9 (default 0-99)")
    d.add_argument("--frames-per-seed", type=int, default=20, help="frames per patient and preset (default 20)")
    d.add_argument("--out", type=Path, required=True, help="output folder")
    d.add_argument("--rng-seed", type=int, default=0, help="seed of the scenario mix and noise (default 0)")
    d.add_argument("--size", default="256x256", help="image HxW (default 256x256)")
    d.add_argument("--probe", choices=sorted(PROBES), help="override the preset's probe")
    d.add_argument("--masks", action="store_true", help="also write label masks (masks/NNNNNN.png)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_dataset)

    s = sp.add_parser("show", help="render one frame to a PNG and print its ground truth")
    s.add_argument("--preset", default="liver", help=f"{', '.join(ALL_PRESETS)} (default liver)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--probe", choices=sorted(PROBES))
    s.add_argument("--size", default="256x256")
    s.add_argument("--out", type=Path, required=True, help="PNG to write")
    s.add_argument("--mask", type=Path, help="also write the label mask PNG")
    s.add_argument("--start", choices=("target", "random"), default="target", help="probe at the target view or a random start")
    s.add_argument("--moves", default="", help="comma-separated actions applied before rendering")
    s.add_argument("--artefact", choices=ARTEFACTS, help="apply one artefact (random severity)")
    s.add_argument("--depth", type=float, help="depth in mm")
    s.add_argument("--rng-seed", type=int, default=0)
    s.set_defaults(func=cmd_show)

    t = sp.add_parser("tolerances", help="measure each preset's target-view tolerances (sim/tolerance.py)")
    t.add_argument("--preset", default="all", help=f"{', '.join(PRESETS)}, a comma list, or all (default all)")
    t.add_argument("--seeds", default="1000-1011", help="patients to measure on (default 1000-1011)")
    t.set_defaults(func=cmd_tolerances)

    b = sp.add_parser("bench", help="render speed per preset (one core, perf_counter_ns)")
    b.add_argument("--preset", default="all")
    b.add_argument("--frames", type=int, default=200)
    b.add_argument("--json", type=Path, help="write the results here")
    b.set_defaults(func=cmd_bench)


def cmd_dataset(args) -> int:
    if args.frames_per_seed < 1:
        raise SimError("--frames-per-seed must be at least 1")
    presets = parse_presets(args.preset)
    seeds = parse_seeds(args.seeds)
    total = len(presets) * len(seeds) * args.frames_per_seed
    t0 = time.perf_counter()

    def progress(n, tot):
        if not args.quiet and (n % 200 == 0 or n == tot):
            print(f"\r{n}/{tot} frames", end="" if n < tot else "\n", file=sys.stderr, flush=True)

    summary = write_dataset(args.out, presets, seeds, args.frames_per_seed, args.rng_seed, image_size=_size(args.size),
                            probe=args.probe, masks=args.masks, overwrite=args.overwrite, progress=progress)
    dt = time.perf_counter() - t0
    print(f"wrote {summary['frames']} frames to {args.out} in {dt:.1f} s ({total / max(dt, 1e-9):.0f} frames/s); "
          f"good quality {summary['good_fraction']:.0%}, lesion in view {summary['lesion_fraction']:.0%}")
    print(json.dumps({"reasons": summary["reason_counts"], "actions": summary["action_counts"]}))
    return 0


def cmd_show(args) -> int:
    vp = VirtualPatient(args.preset, args.seed, args.probe, _size(args.size))
    rng = np.random.default_rng(args.rng_seed)
    if args.start == "random":
        vp.randomize_pose(rng)
    if args.depth is not None:
        vp.apply_degradations({"depth_mm": args.depth})
    if args.artefact:
        apply_artefact(vp, args.artefact, rng, from_target=args.start == "target")
    for a in [m.strip() for m in args.moves.split(",") if m.strip()]:
        vp.move(a)
    image, truth, mask = vp.render(return_mask=True)
    import cv2

    args.out.parent.mkdir(parents=True, exist_ok=True) if str(args.out.parent) else None
    if not cv2.imwrite(str(args.out), image):
        raise SimError(f"cannot write {args.out}; use a .png path in a writable folder")
    if args.mask and not cv2.imwrite(str(args.mask), mask):
        raise SimError(f"cannot write {args.mask}; use a .png path in a writable folder")
    print(json.dumps(truth, ensure_ascii=False, indent=1))
    return 0


def cmd_tolerances(args) -> int:
    from edge_assist.sim.patient import tolerances
    from edge_assist.sim.tolerance import OUT_OF_PLANE, measure_tolerances

    seeds = parse_seeds(args.seeds)
    for preset in parse_presets(args.preset):
        measured = measure_tolerances(preset, seeds)
        used = tolerances(preset)
        print(f"{preset:8s} " + "  ".join(f"{k} {measured[k]:g} (in use {used[k]:g})" for k in OUT_OF_PLANE))
    return 0


def bench(presets, frames: int = 200) -> dict:
    """Median render time with the probe moving every frame (full render) and
    still (cached beam), single-threaded OpenCV."""
    import cv2

    prev = cv2.getNumThreads()
    cv2.setNumThreads(1)
    out = {}
    try:
        moves = ["slide_left", "slide_head", "rotate_cw", "fan_toward", "slide_right", "slide_feet", "rotate_ccw", "fan_away"]
        for preset in presets:
            vp = VirtualPatient(preset, 1)
            vp.render()
            moving, still = [], []
            for i in range(frames):
                vp.move(moves[i % len(moves)])
                t = time.perf_counter_ns()
                vp.render()
                moving.append(time.perf_counter_ns() - t)
            for _ in range(max(10, frames // 4)):
                t = time.perf_counter_ns()
                vp.render()
                still.append(time.perf_counter_ns() - t)
            m, s = np.median(moving) / 1e6, np.median(still) / 1e6
            out[preset] = {"moving_ms_p50": round(m, 2), "moving_ms_p95": round(float(np.percentile(moving, 95)) / 1e6, 2),
                           "moving_fps": round(1000 / m, 1), "still_ms_p50": round(s, 2), "still_fps": round(1000 / s, 1)}
    finally:
        cv2.setNumThreads(prev)
    return out


def cmd_bench(args) -> int:
    if args.frames < 1:
        raise SimError("--frames must be at least 1")
    res = bench(parse_presets(args.preset), args.frames)
    for k, v in res.items():
        print(f"{k:8s} moving {v['moving_ms_p50']:6.2f} ms ({v['moving_fps']:6.1f} fps)   still {v['still_ms_p50']:6.2f} ms ({v['still_fps']:6.1f} fps)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0
