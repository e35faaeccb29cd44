"""Subcommands: train, export, calibrate, eval (registered into `edge-assist`).

torch is imported only when train / export / calibrate run; `eval` needs
only ONNX Runtime (it uses the run-time path).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge_assist.errors import EdgeAssistError
from edge_assist.training.common import DEFAULT_SEED

HEADS = ("quality", "guidance", "teacher", "interpreter", "lesion")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a head (or everything: `train all`, what `make models` runs)",
                       description="Train on a manifest dataset (docs/DATA.md). Progress bars on stderr, a checkpoint "
                                   "after every epoch, resumed automatically when the data and settings match. "
                                   "Multi-GPU / multi-node: run under torchrun (docs/TRAINING.md).")
    p.add_argument("head", choices=(*HEADS, "all", "self-imitation", "move-check"),
                   help="a head; all (what `make models` runs); self-imitation: refine the guidance head in the "
                        "engines folder --out by practising with the hints; move-check: train the move check on "
                        "the guidance head of the engines folder --out and add it there (docs/TRAINING.md)")
    p.add_argument("--data", type=Path, help="dataset folder with manifest.jsonl (or a .npz cache from `train all`)")
    p.add_argument("--val", type=Path, help="validation dataset (default: 10%% of the patients/frames of --data)")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints; for `all`: the engines folder)")
    p.add_argument("--epochs", type=int, help="epochs (default: per head)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, help="peak learning rate (quality/guidance/lesion)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a matching checkpoint exists")
    p.add_argument("--teacher", type=Path, help="interpreter: the teacher checkpoint (default OUT/../teacher/teacher.pt or OUT/teacher.pt)")
    p.add_argument("--limit", type=int, help="use only the first N records of --data")
    p.add_argument("--plan", default="full", help="train all: full (the committed models) or tiny (a smoke run)")
    p.add_argument("--work", type=Path, default=Path("data/run"),
                   help="train all / self-imitation / move-check: checkpoints and logs (default data/run; "
                        "self-imitation: WORK/self-imitation; move-check: WORK/move_check)")
    p.add_argument("--rounds", type=int, help="self-imitation: rounds of practice and fine-tuning (default 1)")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="train all: simulator data cache (default data/)")
    p.add_argument("--calibration", type=Path, default=Path("calibration"), help="train all: calibration frames folder")
    p.add_argument("--workers", type=int, default=2, help="train all: rendering processes (default 2)")
    p.add_argument("--skip-eval", action="store_true", help="train all: stop after calibration")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="export trained heads to ONNX with manifest.json and MODEL_CARD.md")
    p.add_argument("--from", dest="run_dir", type=Path, help="folder with quality.pt, guidance.pt, interpreter.pt (or per-head subfolders)")
    p.add_argument("--quality", type=Path)
    p.add_argument("--guidance", type=Path)
    p.add_argument("--interpreter", type=Path)
    p.add_argument("--lesion", type=Path, help="the lesion head's checkpoint (optional; found under --from when there)")
    p.add_argument("--out", type=Path, default=Path("engines"))
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("calibrate", help="INT8 QDQ models by static quantisation; kept only where faster and as accurate")
    p.add_argument("--engines", type=Path, default=Path("engines"))
    p.add_argument("--calibration", type=Path, default=Path("calibration"), help="folder with frames.npz")
    p.add_argument("--rebuild-frames", action="store_true", help="render calibration/frames.npz afresh first")
    p.add_argument("--keep", choices=("auto", "all", "none"), default="auto")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("eval", help="evaluate the exported heads on held-out virtual patients (ONNX, run-time path)")
    p.add_argument("--quick", action="store_true", help="a small run (under a minute)")
    p.add_argument("--backend", default="ort")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--engines", type=Path)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 figures")
    p.add_argument("--write", action="store_true", help="store the figures in manifest.json and MODEL_CARD.md")
    p.add_argument("--closed-loop", metavar="POOL:START:STOP",
                   help="only the closed loop, on patients START..STOP-1 of POOL (held-out, validation, training): "
                        "judge a retrained guidance head on validation patients, e.g. validation:500:640")
    p.add_argument("--until-hold", action="store_true",
                   help="with --closed-loop: also run the same starts with the operator stopping where the hints "
                        "first say hold, and report how often that is the target view")
    p.set_defaults(func=cmd_eval)


def _fail_on_value_error(fn):
    """Errors from the training code that a user can cause -> one line, exit 2."""
    def wrapped(args):
        try:
            return fn(args)
        except (ValueError, FileNotFoundError) as exc:
            raise EdgeAssistError(" ".join(str(exc).split()) or exc.__class__.__name__) from exc
    return wrapped


def load_any(path: Path, limit: int | None = None):
    """A manifest dataset folder / JSONL (docs/DATA.md) or an .npz array cache."""
    from edge_assist.training.data import DataError, load_dataset

    if path is None:
        raise DataError("--data is required (a folder with manifest.jsonl; see docs/DATA.md)")
    if path.suffix == ".npz":
        from edge_assist.training.make_models import load_arrays

        if not path.is_file():
            raise DataError(f"{path} not found")
        ds = load_arrays(path)
        return ds.subset(range(min(len(ds), limit))) if limit else ds
    ds = load_dataset(path, limit=limit)
    # Keep the simulator's pose errors where a manifest has them (guidance soft targets).
    from edge_assist.training.data import read_manifest

    pose = {r.line: r.labels.get("pose_error") for r in read_manifest(path)}
    for m in ds.meta:
        if isinstance(pose.get(m.get("line")), dict):
            m["pose_error"] = pose[m["line"]]
    return ds


def split_val(ds, fraction: float = 0.1, seed: int = 0):
    """Hold out ~fraction of the patients (by (preset, seed) in the labels) or, lacking those, of the frames."""
    import numpy as np

    keys = [(m.get("preset"), m.get("seed")) for m in ds.meta] if ds.meta else []
    rng = np.random.default_rng(seed)
    if keys and all(k[1] is not None for k in keys) and len(set(keys)) >= 5:
        uniq = sorted(set(keys), key=str)
        val_keys = set(map(tuple, [uniq[i] for i in rng.choice(len(uniq), max(1, int(round(len(uniq) * fraction))), replace=False)]))
        is_val = np.array([k in val_keys for k in keys])
    else:
        is_val = np.zeros(len(ds), bool)
        is_val[rng.choice(len(ds), max(1, int(round(len(ds) * fraction))), replace=False)] = True
    if is_val.all() or len(ds) < 2:
        return ds, ds.subset([])
    return ds.subset(np.flatnonzero(~is_val)), ds.subset(np.flatnonzero(is_val))


@_fail_on_value_error
def cmd_train(args) -> int:
    if args.head == "all":
        from edge_assist.training.make_models import PLANS, train_all

        if args.plan not in PLANS:
            raise EdgeAssistError(f"unknown plan {args.plan!r}; use one of {', '.join(PLANS)}")
        train_all(args.out, plan=PLANS[args.plan], work=args.work, data_dir=args.data_dir, calibration=args.calibration,
                  seed=args.seed, resume=not args.no_resume, workers=args.workers, run_eval=not args.skip_eval)
        return 0
    if args.head == "self-imitation":
        return _self_imitation(args)
    if args.head == "move-check":
        return _move_check(args)
    if args.head == "lesion":
        return _train_lesion(args)
    ds = load_any(args.data, args.limit)
    if args.val is not None:
        train, val = ds, load_any(args.val)
    else:
        train, val = split_val(ds, seed=args.seed)
    kw = dict(seed=args.seed, batch_size=args.batch_size, resume=not args.no_resume)
    out = args.out
    if args.head in ("quality", "guidance"):
        from edge_assist.training import train as T

        extra = {"lr": args.lr} if args.lr else {}
        if args.head == "quality":
            path = T.train_quality(train, val, out, epochs=args.epochs or 12, **kw, **extra)
        else:
            from edge_assist.training.make_models import guidance_targets

            if any("pose_error" in m for m in train.meta):
                extra["soft_targets"], extra["pose_targets"] = guidance_targets(train)
            path = T.train_guidance(train, val, out, epochs=args.epochs or 12, **kw, **extra)
    elif args.head == "teacher":
        from edge_assist.training.teacher import train_teacher

        if not any(r for r in train.reports):
            raise EdgeAssistError(f"{args.data}: no record has a \"report\"; the teacher learns from image-report pairs (docs/DATA.md)")
        path = train_teacher(train, val, out, epochs=args.epochs or 6, **kw)
    else:
        from edge_assist.training.interpreter import train_interpreter

        teacher = args.teacher or next((p for p in (out.parent / "teacher" / "teacher.pt", out / "teacher.pt") if p.is_file()), None)
        if teacher is None or not Path(teacher).is_file():
            raise EdgeAssistError("interpreter: no teacher checkpoint; train one (`edge-assist train teacher ...`) and pass --teacher PATH")
        path = train_interpreter(train, val, Path(teacher), out, epochs=args.epochs or 10, **kw)
    print(path)
    return 0


def _self_imitation(args) -> int:
    """Refine the guidance head in --out in place (training/self_imitation.py)."""
    from dataclasses import replace

    from edge_assist.manifest import load_manifest
    from edge_assist.training.common import TRAIN_SEEDS
    from edge_assist.training.make_models import PLANS
    from edge_assist.training.self_imitation import SelfImitation, refine_guidance

    load_manifest(args.out)  # a readable engines folder, or a one-line error
    plan = PLANS["full"]
    cfg = plan.self_imitation or SelfImitation()  # the full plan leaves the stage off (docs/TRAINING.md)
    cfg = replace(cfg, **{k: v for k, v in (("rounds", args.rounds), ("epochs", args.epochs), ("lr", args.lr)) if v is not None})
    if cfg.rounds < 1 or cfg.epochs < 1:
        raise EdgeAssistError("self-imitation: --rounds and --epochs must be at least 1")
    report = refine_guidance(args.out, args.work / "self-imitation", list(TRAIN_SEEDS)[: plan.train_seeds], cfg, seed=args.seed,
                             workers=args.workers, batch_size=args.batch_size, centre_depth=plan.centre_depth, centre_view=plan.centre_view)
    for r in report["rounds"]:
        print(f"round {r['round']}: {r['episodes']} practice episodes, {r['reached']} reached the view "
              f"(the head's best move {r['best_move_reached']:.1%}); fine-tuned on {r['frames']} frames, "
              f"{r['imitated_frames']} of them from episodes that reached the view")
    print(f"refined {args.out / 'guidance.onnx'}; run `edge-assist calibrate --engines {args.out}` and "
          f"`edge-assist eval --engines {args.out} --write` for its figures")
    return 0


def _move_check(args) -> int:
    """Train the move check on the guidance head in --out and add it there (training/move_check.py)."""
    from dataclasses import replace

    from edge_assist.manifest import load_manifest
    from edge_assist.training.move_check import MoveCheckPlan, make_move_check

    load_manifest(args.out)  # a readable engines folder, or a one-line error
    plan = replace(MoveCheckPlan(), **{k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None},
                   batch_size=args.batch_size)
    if plan.epochs < 1:
        raise EdgeAssistError("move-check: --epochs must be at least 1")
    entry = make_move_check(args.out, args.work, args.data_dir, seed=args.seed, plan=plan, workers=args.workers,
                            resume=not args.no_resume)
    print(f"added {args.out / entry['file']} (validation: {entry['metrics'].get('val')}); run "
          f"`edge-assist eval --engines {args.out} --write` for its figures")
    return 0


def _load_lesions(path: Path | None, limit: int | None = None):
    from edge_assist.training.data import DataError
    from edge_assist.training.lesion import LesionFrames, lesion_frames_from_manifest

    if path is None:
        raise DataError("--data is required (a folder with manifest.jsonl whose records carry lesion_mask; see docs/DATA.md)")
    if path.suffix == ".npz":  # a lesions-*.npz cache of `train all`
        if not path.is_file():
            raise DataError(f"{path} not found")
        data = LesionFrames.load(path)
        return data.subset(range(min(len(data), limit))) if limit else data
    return lesion_frames_from_manifest(path, limit)


def _train_lesion(args) -> int:
    """The lesion head on records with a lesion_mask (docs/DATA.md), or on a lesions-*.npz cache."""
    import numpy as np

    from edge_assist.training.lesion import train_lesion

    data = _load_lesions(args.data, args.limit)
    if len(data) < 2:
        raise EdgeAssistError(f"{args.data}: {len(data)} usable lesion record(s); the lesion head needs records whose labels "
                              "report a lesion and that carry a lesion_mask (docs/DATA.md)")
    if args.val is not None:
        train, val = data, _load_lesions(args.val)
    else:  # ~10 % of the frames
        rng = np.random.default_rng(args.seed)
        is_val = np.zeros(len(data), bool)
        is_val[rng.choice(len(data), max(1, round(len(data) * 0.1)), replace=False)] = True
        train, val = data.subset(np.flatnonzero(~is_val)), data.subset(np.flatnonzero(is_val))
    path = train_lesion(train, val, args.out, epochs=args.epochs or 30, seed=args.seed, batch_size=args.batch_size,
                        resume=not args.no_resume, **({"lr": args.lr} if args.lr else {}))
    print(path)
    return 0


@_fail_on_value_error
def cmd_export(args) -> int:
    from edge_assist.training.export import export_all, find_checkpoints

    ckpts = find_checkpoints(args.run_dir, args.quality, args.guidance, args.interpreter, args.lesion)
    path = export_all(ckpts, args.out)
    print(path)
    return 0


@_fail_on_value_error
def cmd_calibrate(args) -> int:
    from edge_assist.training.calibrate import build_calibration_frames, calibrate

    if args.rebuild_frames or not (args.calibration / "frames.npz").is_file():
        build_calibration_frames(args.calibration)
    report = calibrate(args.engines, args.calibration, keep=args.keep)
    for head, r in report["heads"].items():
        print(f"{head}: fp32 {r['fp32_ms']:.3f} ms, int8 {r['int8_ms']:.3f} ms ({r['speedup']:.2f}x); "
              f"{r['metric']} {r['fp32_value']} -> {r['int8_value']}; " + ("kept" if r["kept"] else f"not kept: {r['why']}"))
    return 0


@_fail_on_value_error
def cmd_eval(args) -> int:
    from edge_assist.training.evaluate import closed_loop_lines, closed_loop_only, evaluate, summary_lines

    if args.until_hold and not args.closed_loop:
        raise EdgeAssistError("--until-hold goes with --closed-loop POOL:START:STOP "
                              "(the whole evaluation always reports it, as closed_loop_settled)")
    if args.closed_loop:
        if args.write or args.quick:
            raise EdgeAssistError("--closed-loop runs the closed loop alone: drop --write / --quick "
                                  "(the model card's figures come from the whole held-out evaluation)")
        result = closed_loop_only(args.engines, args.closed_loop, backend=args.backend, threads=args.threads, until_hold=args.until_hold)
        print(json.dumps(result, indent=2) if args.json else "\n".join(closed_loop_lines(result)))
        return 0
    result = evaluate(args.engines, quick=args.quick, backend=args.backend, threads=args.threads, int8=not args.no_int8)
    if args.write:
        from edge_assist.training.make_models import store_evaluation

        store_evaluation(args.engines, result)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print("\n".join(summary_lines(result)))
    return 0
