"""The `edge-assist` command.

Every error a user can cause ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
from pathlib import Path

from edge_assist import DISCLAIMER, __version__
from edge_assist.errors import EdgeAssistError

# Optional subcommand groups: module -> register(subparsers). A missing one
# (e.g. training code without torch) simply does not appear.
PLUGINS = (
    "edge_assist.sim.cli",
    "edge_assist.training.cli",
    "edge_assist.bench",
    "edge_assist.trt_cli",
)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="folder for hints.jsonl, annotated.mp4, summary.json")
    p.add_argument("--backend", default="ort", help="inference backend (see `edge-assist backends`); default ort")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"), help="fp32; int8 where calibrated models exist; fp16 with --backend trt")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per model (default 1)")
    p.add_argument("--budget-ms", type=float, help="per-frame latency budget (default: one frame interval of the source)")
    p.add_argument("--every-frame", action="store_true", help="process every frame of a file (offline), no pacing, no drops")
    p.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    p.add_argument("--engines", type=Path, help="folder with manifest.json and the models (default engines/)")
    p.add_argument("--no-video", action="store_true", help="do not write annotated.mp4")
    p.add_argument("--prime", choices=("auto", "on", "off"), default="auto",
                   help="prime the caches before each paced frame (one more pass of the heads per frame, off the "
                        "frame's path): auto keeps it where it measures faster (default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-assist",
        description="Real-time ultrasound scanning assistant. " + DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"edge-assist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the live pipeline on a source and write hints")
    p.add_argument("--source", required=True, help="sim:liver, file:clip.mp4, dicom:cine.dcm, folder:DIR, device:0, igtl://HOST:PORT")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the main job on the embedded default source")
    p.add_argument("--source", help="override the default source")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to run headless (default 10)")
    p.add_argument("--headless", action="store_true", help="never open the UI")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sources", help="list source kinds and the capture devices visible here")
    p.set_defaults(func=cmd_sources)

    p = sub.add_parser("backends", help="which inference backends can run here, and why not")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("ui", help="the bedside overlay (needs the ui extra and a display)")
    p.add_argument("--source", help="source URI (default: the simulator)")
    p.add_argument("--compact", action="store_true", help="small-screen layout")
    p.add_argument("--screenshot", type=Path, help="save a PNG of the window after --frames frames and exit")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--backend", default="ort")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    p.add_argument("--engines", type=Path)
    p.add_argument("--out", type=Path, help="folder for exams: captures, recordings, reports (default out/ui)")
    p.set_defaults(func=cmd_ui)

    for mod in PLUGINS:
        try:
            module = importlib.import_module(mod)
        except ImportError:
            continue
        module.register(sub)
    return parser


def _open_heads(args):
    from edge_assist.heads import HeadSet
    from edge_assist.manifest import load_manifest

    manifest = load_manifest(args.engines)
    return HeadSet(manifest, backend=args.backend, precision=args.precision, threads=args.threads)


def run_pipeline(args, source_uri: str) -> dict:
    """Open source, heads and sinks; run; write summary.json. Returns the summary."""
    from edge_assist.pipeline import Pipeline
    from edge_assist.record import AnnotatedVideoSink, JsonlSink, write_json
    from edge_assist.sources import open_source

    if args.max_frames is not None and args.max_frames < 1:
        raise EdgeAssistError("--max-frames must be at least 1")
    if args.budget_ms is not None and args.budget_ms <= 0:
        raise EdgeAssistError("--budget-ms must be positive")
    out: Path | None = args.out
    with contextlib.ExitStack() as stack:
        heads = stack.enter_context(_open_heads(args))
        source = stack.enter_context(open_source(source_uri, every_frame=args.every_frame))
        sinks = []
        if out is not None:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EdgeAssistError(f"cannot create output folder {out}: {exc.strerror}") from exc
            sinks.append(stack.enter_context(JsonlSink(out / "hints.jsonl")))
            if not args.no_video:
                sinks.append(stack.enter_context(AnnotatedVideoSink(out / "annotated.mp4", source.nominal_fps or 30.0)))
        pipe = Pipeline(
            source, heads, sinks, budget_ms=args.budget_ms, every_frame=args.every_frame, max_frames=args.max_frames,
            prime={"auto": None, "on": True, "off": False}[args.prime],
        )
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, lambda *_: pipe.stop())  # Ctrl-C ends cleanly, outputs kept
        try:
            summary = pipe.run()
        finally:
            signal.signal(signal.SIGINT, previous)
            if out is not None:
                write_json(out / "summary.json", pipe.summary())
    return summary


def _print_summary(s: dict, out: Path | None) -> None:
    e = s["e2e_ms"]
    print(
        f"{s['frames_processed']} frames processed ({s['frames_in']} in, {s['frames_dropped']} dropped, "
        f"{s['frames_skipped']} skipped); end-to-end p50 {e['p50']:.1f} ms, p99 {e['p99']:.1f} ms, "
        f"max {e['max']:.1f} ms; {s['misses']} over the {s['budget_ms']:.1f} ms budget ({s['backend']})"
    )
    if out is not None:
        print(f"outputs: {out}/hints.jsonl, {out}/summary.json" + ("" if not (out / "annotated.mp4").exists() else f", {out}/annotated.mp4"))


def cmd_run(args) -> int:
    summary = run_pipeline(args, args.source)
    _print_summary(summary, args.out)
    return 0


def default_demo_source() -> str:
    try:
        importlib.import_module("edge_assist.sources.sim")
        return "sim:liver?mode=novice&seed=7"
    except ImportError:
        from pydicom.data import get_testdata_file

        return "dicom:" + str(get_testdata_file("examples_ybr_color.dcm"))


def _can_show_ui() -> tuple[bool, str]:
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display"
    try:
        importlib.import_module("PyQt6.QtWidgets")
        importlib.import_module("edge_assist.ui.app")
    except ImportError as exc:
        return False, f"the UI is not installed ({exc.name}); pip install 'edge-assist[ui]'"
    return True, ""


def cmd_demo(args) -> int:
    source = args.source or default_demo_source()
    print(DISCLAIMER)
    ok, why = _can_show_ui()
    if ok and not args.headless:
        from edge_assist.ui.app import main as ui_main

        return ui_main(["--source", source])
    if args.out is None:
        args.out = Path("out/demo")
    if args.max_frames is None and not source.startswith(("dicom:", "file:", "folder:")):
        args.max_frames = max(1, int(args.seconds * 30))
    print(f"running headless ({why or 'asked for'}) on {source}")
    summary = run_pipeline(args, source)
    _print_summary(summary, args.out)
    return 0


def cmd_sources(args) -> int:
    from edge_assist.sources import SOURCE_KINDS

    for k in SOURCE_KINDS.values():
        print(f"{k.scheme:7s} {k.example:28s} {k.description}")
    try:
        from edge_assist.sources.device import list_devices

        devices = list_devices()
    except ImportError:
        devices = []
    print("capture devices: " + (", ".join(d.get("uri", str(d)) for d in devices) if devices else "none found"))
    return 0


def cmd_backends(args) -> int:
    from edge_assist.backends import available_backends

    st = available_backends()
    if args.json:
        print(json.dumps({k: {"available": v.available, "reason": v.reason, "devices": list(v.devices)} for k, v in st.items()}, indent=2))
    else:
        for v in st.values():
            print(f"{v.name:4s} {'yes' if v.available else 'no ':3s}  {v.reason}")
    return 0


def cmd_ui(args) -> int:
    try:
        from edge_assist.ui.app import main as ui_main
    except ImportError as exc:
        raise EdgeAssistError(f"the UI needs PyQt6 ({exc.name} is missing); pip install 'edge-assist[ui]'") from exc
    argv = []
    if args.source:
        argv += ["--source", args.source]
    if args.compact:
        argv.append("--compact")
    if args.screenshot:
        argv += ["--screenshot", str(args.screenshot), "--frames", str(args.frames)]
    argv += ["--backend", args.backend, "--precision", args.precision]
    if args.engines:
        argv += ["--engines", str(args.engines)]
    if args.out:
        argv += ["--out", str(args.out)]
    return ui_main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader that went away is then caught below
        return rc
    except EdgeAssistError as exc:
        print(f"edge-assist: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader closed the pipe (`edge-assist eval --json | head`): stop quietly, as `cat` would,
        # and point stdout at /dev/null so the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the closed pipe


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
