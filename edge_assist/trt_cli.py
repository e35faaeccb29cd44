"""`edge-assist engines build|list`: the TensorRT engine cache from the command line.

Picked up by edge_assist.cli through its PLUGINS list. Importing this module
imports neither TensorRT nor CUDA; `engines list` needs neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge_assist.errors import BackendError, EdgeAssistError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class PlanItem:
    head: str
    model_path: Path
    precision: str
    note: str | None = None


def build_plan(heads: dict, precision: str, only: list[str] | None = None) -> list[PlanItem]:
    """Which model file and precision to build per head.

    INT8 comes from the QDQ model `edge-assist calibrate` wrote (int8_file);
    a head without one keeps FP32, as at run time, and that is said aloud.
    """
    if precision not in PRECISIONS:
        raise EdgeAssistError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    names = list(heads)
    if only:
        unknown = [h for h in only if h not in heads]
        if unknown:
            raise EdgeAssistError(f"unknown head(s) {', '.join(unknown)}; the manifest has {', '.join(names)}")
        names = [h for h in names if h in only]
    plan = []
    for name in names:
        spec = heads[name]
        if precision == "int8":
            if spec.int8_path is not None:
                plan.append(PlanItem(name, spec.int8_path, "int8"))
            else:
                plan.append(PlanItem(name, spec.path, "fp32",
                                     f"{name}: no INT8 model in the manifest (calibration kept it FP32): building fp32"))
        else:
            plan.append(PlanItem(name, spec.path, precision))
    if precision == "int8" and not any(p.precision == "int8" for p in plan):
        raise EdgeAssistError(
            "no head has an INT8 model in the manifest (int8_file); run `edge-assist calibrate` first, "
            "or build --precision fp16 / fp32"
        )
    return plan


def register(sub) -> None:
    p = sub.add_parser(
        "engines",
        help="build and list cached TensorRT engines (needs the gpu extra)",
        description="TensorRT engines are built from the ONNX models in engines/ and cached outside the "
        "repository, keyed by model hash, TensorRT version, GPU and precision.",
    )
    actions = p.add_subparsers(dest="engines_command", metavar="ACTION")

    b = actions.add_parser("build", help="build one engine per head (this can take minutes the first time)")
    b.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), fp16, or int8 from the QDQ models `edge-assist calibrate` writes")
    b.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT builder workspace limit (default 1024)")
    b.add_argument("--force", action="store_true", help="rebuild even when a matching cached engine exists")
    b.add_argument("--cache-dir", type=Path,
                   help="engine cache (default $EDGE_ASSIST_ENGINE_CACHE, else ~/.cache/edge-assist/engines)")
    b.add_argument("--engines", type=Path, help="folder with manifest.json and the models (default engines/)")
    b.add_argument("--heads", help="comma-separated heads to build (default: all)")
    b.add_argument("--json", action="store_true", help="print a JSON summary on stdout (progress stays on stderr)")
    b.set_defaults(func=cmd_engines_build)

    ls = actions.add_parser("list", help="list the cached engines and what they were built for")
    ls.add_argument("--cache-dir", type=Path)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_engines_list)

    def _help(args) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)


def cmd_engines_build(args) -> int:
    from edge_assist.backends.trt_build import FIRST_BUILD_NOTE, default_log
    from edge_assist.manifest import load_manifest

    if args.workspace_mb < 16:
        raise EdgeAssistError(f"--workspace-mb must be at least 16, got {args.workspace_mb}")
    manifest = load_manifest(args.engines)
    only = [h.strip() for h in args.heads.split(",") if h.strip()] if args.heads else None
    plan = build_plan(manifest.heads, args.precision, only)

    from edge_assist.backends.trt import status

    st = status()
    if not st.available:
        raise BackendError(f"cannot build TensorRT engines here: {st.reason}")

    from edge_assist.backends.trt_build import EngineBuilder

    builder = EngineBuilder(args.cache_dir, workspace_mb=args.workspace_mb)
    refusal = builder.refusal(args.precision)
    if refusal:
        raise BackendError(refusal)
    pf = builder.platform
    default_log(
        f"building {args.precision} TensorRT engines for {len(plan)} head(s) with TensorRT {pf.trt_version} on "
        f"{pf.gpu_name} (compute {pf.compute_capability}); cache: {builder.cache_dir}. {FIRST_BUILD_NOTE}."
    )
    results = []
    for item in plan:
        if item.note:
            default_log(item.note)
        rec = builder.ensure(item.model_path, item.precision, force=args.force)
        results.append({"head": item.head, **rec.as_dict()})
    if args.json:
        print(json.dumps({
            "precision": args.precision,
            "cache_dir": str(builder.cache_dir),
            "platform": {
                "trt_version": pf.trt_version, "gpu": pf.gpu_name, "compute_capability": pf.compute_capability,
                "integrated": pf.integrated,
            },
            "engines": results,
        }, indent=2))
    else:
        for r in results:
            how = f"built in {r['build_seconds']:.1f} s" if r["built"] else "cached"
            print(f"{r['head']:12s} {r['precision']:5s} {how:18s} {r['engine']}")
    return 0


def cmd_engines_list(args) -> int:
    from edge_assist.backends.trt_cache import list_entries, resolve_cache_dir

    cache = resolve_cache_dir(args.cache_dir)
    entries = list_entries(cache) if cache.is_dir() else []
    timing = sorted(p.name for p in cache.glob("timing.*.cache")) if cache.is_dir() else []
    if args.json:
        print(json.dumps({"cache_dir": str(cache), "engines": entries, "timing_caches": timing}, indent=2))
        return 0
    print(f"engine cache: {cache}" + ("" if cache.is_dir() else " (does not exist yet)"))
    if not entries:
        print("no cached engines; build them with `edge-assist engines build`")
    for e in entries:
        if "error" in e:
            print(f"  {e['sidecar']}: unusable ({e['error']}); it will be rebuilt when needed")
            continue
        k = e["key"]
        missing = "" if e.get("engine_present") else "  (engine file missing)"
        print(
            f"  {e.get('model_name', '?'):24s} {k['precision']:5s} TensorRT {k['trt_version']}, {k['gpu_name']} "
            f"(compute {k['compute_capability']}), built {e.get('built_at', '?')}{missing}"
        )
    for t in timing:
        print(f"  timing cache: {t}")
    return 0

