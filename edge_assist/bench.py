"""`edge-assist bench`: the latency benchmark harness.

For every run (a scenario, or one variant of it), in one process:
  1. the real Pipeline on the scenario's source, warm-up frames not counted;
  2. the limit: bare session.run of the three heads on a ready-made tensor,
     with the same sessions, right after the pipeline run;
  3. the baseline: a naive loop (every head on every frame, no slot, no
     gating) on the same source, for the same time.
It reports per-stage and end-to-end percentiles, throughput, budget misses,
drops, CPU, memory and the machine; as JSON, a markdown table and PNG plots.

Scenarios are TOML files in benchmarks/scenarios/ (see benchmarks/README.md);
definitions of e2e, limit and overhead are in edge_assist/bench_measure.py.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_assist.errors import EdgeAssistError, SourceError

SCHEMA = "edge-assist-bench/1"
DEFAULT_OUT = Path("out/bench")

# Keys a scenario may set (and their defaults); a variant may override the
# ones in VARIANT_KEYS. Unknown keys are an error (typos must not pass).
DEFAULTS = {
    "description": "",
    "source": None,
    "fps": None,  # replay rate; default: the source's nominal fps (0 = as fast as possible)
    "prerender": 120,  # frames rendered/decoded up front and replayed on a clock; 0 = read the source itself
    "loop": True,  # restart a finite source at its end (prerender = 0)
    "buffer": 4,  # the replay source's FIFO for late readers (frames)
    "mode": "live",  # "live" (latest-frame slot, drops) or "every_frame" (back-pressure, no drops)
    "interpreter": None,  # "async" / "sync"; default: the pipeline's (async live, sync every_frame)
    "budget_ms": None,  # default: one source frame interval (1000 / fps)
    "duration_s": 10.0,
    "warmup_s": 1.0,
    "warmup_frames": None,  # overrides warmup_s
    "overload_factor": None,  # source fps = factor x the pipeline's capacity measured in the same run
    "calibrate_s": 2.0,  # how long capacity is measured for (overload)
    "baseline": True,
    "limit_s": 3.0,  # at most this long for the limit (at least as many runs as frames counted, >= 50)
    "backend": "ort",
    "precision": "fp32",
    "threads": 1,
    "spinning": False,
    "device": "cpu",  # ort only: cpu, cuda or tensorrt (execution provider)
    "headline": False,
    "repeat": 1,
    "parallel_heads": None,  # quality and guidance at the same time; default: the pipeline's (on for CPU sessions with the cores)
    "prime": None,  # prime the caches before each paced frame; default: the pipeline's (adaptive)
    "inline_capture": True,  # paced sources: the capture thread processes a frame itself while the loop is idle
    # Load all three heads: the interpreter model runs on every frame it is free for, whatever the quality
    # score (its result still abstains below the manifest's gate). Default: only where the gate lets it.
    "interpreter_always": False,
}
VARIANT_KEYS = {"label", "precision", "threads", "spinning", "device", "backend", "interpreter", "budget_ms", "fps", "mode",
                "description", "parallel_heads", "prime", "inline_capture"}
SCENARIO_KEYS = set(DEFAULTS) | {"name", "targets", "variants"}


def scenarios_dir() -> Path:
    """benchmarks/scenarios next to the package (a source checkout), else the CWD's."""
    here = Path(__file__).resolve().parent.parent / "benchmarks" / "scenarios"
    return here if here.is_dir() else Path("benchmarks") / "scenarios"


@dataclass
class Scenario:
    name: str
    path: Path | None
    cfg: dict
    targets: dict = field(default_factory=dict)
    variants: list[dict] = field(default_factory=list)


def _toml_load(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError as exc:
            raise EdgeAssistError("scenario files need Python 3.11+ (tomllib) or `pip install tomli`") from exc
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise EdgeAssistError(f"cannot read scenario {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise EdgeAssistError(f"scenario {path} is not valid TOML: {exc}") from exc


def load_scenario(path: Path) -> Scenario:
    from edge_assist.bench_report import TARGET_KEYS

    raw = _toml_load(path)
    where = f"scenario {path}"
    unknown = sorted(set(raw) - SCENARIO_KEYS)
    if unknown:
        raise EdgeAssistError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(SCENARIO_KEYS))}")
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update({k: v for k, v in raw.items() if k in DEFAULTS})
    if not cfg["source"] or not isinstance(cfg["source"], str):
        raise EdgeAssistError(f"{where}: `source` (a source URI such as \"sim:liver?fps=60\") is required")
    if cfg["mode"] not in ("live", "every_frame"):
        raise EdgeAssistError(f"{where}: mode must be \"live\" or \"every_frame\", not {cfg['mode']!r}")
    for k in ("duration_s", "warmup_s", "calibrate_s", "limit_s"):
        if not isinstance(cfg[k], (int, float)) or cfg[k] < 0:
            raise EdgeAssistError(f"{where}: {k} must be a non-negative number")
    if cfg["overload_factor"] is not None and (not isinstance(cfg["overload_factor"], (int, float)) or cfg["overload_factor"] <= 1):
        raise EdgeAssistError(f"{where}: overload_factor must be a number above 1")
    if cfg["parallel_heads"] is not None and not isinstance(cfg["parallel_heads"], bool):
        raise EdgeAssistError(f"{where}: parallel_heads must be true or false (leave it out for the pipeline's default)")
    if cfg["prime"] is not None and not isinstance(cfg["prime"], bool):
        raise EdgeAssistError(f"{where}: prime must be true or false (leave it out for the pipeline's default)")
    if not isinstance(cfg["inline_capture"], bool):
        raise EdgeAssistError(f"{where}: inline_capture must be true or false")
    if not isinstance(cfg["interpreter_always"], bool):
        raise EdgeAssistError(f"{where}: interpreter_always must be true or false")
    if cfg["overload_factor"] and not cfg["prerender"]:
        raise EdgeAssistError(f"{where}: overload needs prerender > 0 (the replay source sets the rate)")
    targets = raw.get("targets", {})
    if not isinstance(targets, dict) or set(targets) - set(TARGET_KEYS):
        bad = sorted(set(targets) - set(TARGET_KEYS)) if isinstance(targets, dict) else targets
        raise EdgeAssistError(f"{where}: unknown target(s) {bad}; known: {', '.join(TARGET_KEYS)}")
    variants = raw.get("variants", [])
    if not isinstance(variants, list):
        raise EdgeAssistError(f"{where}: `variants` must be an array of tables ([[variants]])")
    for i, v in enumerate(variants):
        bad = sorted(set(v) - VARIANT_KEYS) if isinstance(v, dict) else ["(not a table)"]
        if bad:
            raise EdgeAssistError(f"{where}: variant {i + 1} has unknown key(s) {', '.join(bad)}; known: {', '.join(sorted(VARIANT_KEYS))}")
        if "label" not in v:
            raise EdgeAssistError(f"{where}: variant {i + 1} needs a `label`")
    return Scenario(str(raw.get("name") or path.stem), path, cfg, dict(targets), list(variants))


def available_scenarios() -> dict[str, Path]:
    d = scenarios_dir()
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def resolve_scenarios(names: list[str] | None) -> list[Scenario]:
    avail = available_scenarios()
    if not names or names == ["all"]:
        if not avail:
            raise EdgeAssistError(f"no scenarios found in {scenarios_dir()}; give --scenario FILE.toml")
        return [load_scenario(p) for p in avail.values()]
    out = []
    for n in names:
        p = Path(n)
        if p.suffix == ".toml" or p.is_file():
            if not p.is_file():
                raise EdgeAssistError(f"scenario file {p} does not exist")
            out.append(load_scenario(p))
        elif n in avail:
            out.append(load_scenario(avail[n]))
        else:
            raise EdgeAssistError(f"unknown scenario {n!r}; known: {', '.join(avail) or '(none)'}, or give a FILE.toml")
    return out


def expand_source(uri: str) -> str:
    """`{pydicom}` in a URI becomes pydicom's bundled test-files folder."""
    if "{pydicom}" in uri:
        try:
            import pydicom.data
        except ImportError as exc:
            raise SourceError(f"{uri} needs pydicom; pip install pydicom") from exc
        uri = uri.replace("{pydicom}", str(Path(pydicom.data.__file__).parent / "test_files"))
    return uri


# --------------------------------------------------------------------------- one run


class _Cache:
    def __init__(self):
        self.frames: dict[tuple, tuple] = {}


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _open_heads(manifest, cfg):
    from edge_assist.heads import HeadSet

    opts = {}
    if cfg["backend"] == "ort":
        opts = {"threads": int(cfg["threads"]), "spinning": bool(cfg["spinning"]), "device": str(cfg["device"])}
    return HeadSet(manifest, backend=cfg["backend"], precision=cfg["precision"], **opts)


def _skip_reason(manifest, cfg) -> str | None:
    from edge_assist.backends import available_backends

    st = available_backends().get(cfg["backend"])
    if st is None:
        return f"unknown backend {cfg['backend']!r}"
    if not st.available:
        return f"backend {cfg['backend']} unavailable: {st.reason}"
    if cfg["precision"] == "int8" and not any(h.int8_path is not None for h in manifest.heads.values()):
        return "no INT8 model in the manifest: `edge-assist calibrate` keeps one only where it is faster and as accurate; `--keep all` keeps them to compare"
    return None


def _source_factory(cfg, cache: _Cache):
    """Returns (make(fps) -> FrameSource, nominal fps, description)."""
    from edge_assist.bench_sources import LoopingSource, ReplaySource, collect_frames

    from edge_assist.bench_sources import SYNTHETIC_PREFIX

    uri = expand_source(cfg["source"])
    if cfg["prerender"] or uri.startswith(SYNTHETIC_PREFIX):  # synthetic frames exist only in memory
        key = (uri, int(cfg["prerender"] or 0))
        if key not in cache.frames:
            t0 = time.perf_counter()
            cache.frames[key] = collect_frames(uri, int(cfg["prerender"]))
            _log(f"pre-rendered {len(cache.frames[key][0])} frames of {uri} in {time.perf_counter() - t0:.1f} s")
        frames, nominal = cache.frames[key]
        desc = f"replay of {len(frames)} pre-rendered frames of {uri}, FIFO {cfg['buffer']}"

        def make(fps, _frames=frames):
            return ReplaySource(_frames, fps, buffer=int(cfg["buffer"]), uri=f"replay:{uri}")

        return make, nominal, desc
    from edge_assist.sources import open_source

    with open_source(uri) as probe:
        nominal, finite = probe.nominal_fps, probe.frame_count is not None

    def make(fps):
        if fps and nominal and abs(fps - nominal) > 1e-6:
            raise EdgeAssistError(f"{uri}: with prerender = 0 the source runs at its own {nominal:.1f} fps; drop `fps` or pre-render")
        if finite and cfg["loop"]:
            return LoopingSource(lambda: open_source(uri), uri=uri)
        return open_source(uri)

    return make, nominal, f"{uri} read live" + (" (looped)" if finite and cfg["loop"] else "")


def breakdown(rec: dict, on_path: list[str]) -> dict:
    """Where the mean end-to-end time goes (means add up; percentiles do not):
    the bare inference of the heads on the path, what running them through
    the heads costs beyond that (input checks, output dicts, decoding, and
    any slowdown from threads beside the loop), capture hand-off and slot
    wait, preprocessing, hint smoothing, and the rest (gaps between stages)."""
    st = rec["stages_ms"]
    mean = lambda k: st.get(k, {}).get("mean", 0.0)  # noqa: E731
    lim = rec["limit_heads_ms"]
    bare = sum(lim[k]["mean"] for k in on_path)
    heads = sum(mean(k) for k in on_path)
    if rec["interpreter_mode"] == "sync" and rec.get("limit_interpreter_on_path") is not None:
        # the interpreter ran only on some frames: weigh its bare time by that share
        bare = sum(lim[k]["mean"] for k in on_path if k != "interpreter") + \
            lim["interpreter"]["mean"] * rec["limit_interpreter_on_path"]
        heads = sum(mean(k) for k in on_path if k != "interpreter") + \
            mean("interpreter") * st.get("interpreter", {}).get("n", 0) / max(1, rec["e2e_ms"]["n"])
    e2e = rec["e2e_ms"]["mean"]
    parts = {
        "bare_inference": bare,
        "head_overhead": heads - bare,
        "capture_and_slot": mean("capture"),
        "preprocess": mean("preprocess"),
        "hints": mean("hints"),
    }
    if "guidance_wait" in st:
        # parallel heads: guidance ran beside quality; only the wait for it
        # after quality is on the path. The time the overlap saved (negative).
        parts["parallel_overlap"] = mean("guidance_wait") - mean("guidance")
    parts["other"] = e2e - sum(parts.values())
    out = {k: round(v, 4) for k, v in parts.items()}
    out["e2e_mean"] = round(e2e, 4)
    out["share"] = {k: round(v / e2e, 3) if e2e else 0.0 for k, v in parts.items()}
    out["heads_on_path"] = on_path
    return out


def _median_by(recs: list[dict], key) -> dict:
    order = sorted(range(len(recs)), key=lambda i: key(recs[i]))
    return recs[order[(len(order) - 1) // 2]], order[(len(order) - 1) // 2]


def _limit_before(make, fps: float, heads, sets: int, max_s: float) -> dict | None:
    """The paced limit's first half, before the pipeline runs: its raw sets
    (measure_limit's "limit_raw"), on a tensor preprocessed as the pipeline
    does from the source's first frame. None when the source gives no frame."""
    from edge_assist.bench_measure import measure_limit

    with make(fps) as src:
        frame = src.read(timeout_s=2.0)
    if frame is None:
        return None
    return measure_limit(heads, heads.preprocessor()(frame).tensor, iterations=sets, max_s=max_s, pace_fps=fps)["limit_raw"]


def run_one(sc: Scenario, cfg: dict, manifest, cache: _Cache, run_id: str) -> tuple[dict, dict]:
    """One measured run; returns (record, phases for plots)."""
    from edge_assist.bench_measure import measure_limit, run_naive_phase, run_pipeline_phase
    from edge_assist.bench_report import evaluate_targets

    base = {"scenario": sc.name, "run_id": run_id, "variant": cfg.get("label"), "description": cfg["description"],
            "backend": cfg["backend"], "precision": cfg["precision"], "threads": cfg["threads"], "spinning": cfg["spinning"],
            "device": cfg["device"] if cfg["backend"] == "ort" else None}
    reason = _skip_reason(manifest, cfg)
    if reason:
        return base | {"skipped": reason}, {}
    make, nominal, src_desc = _source_factory(cfg, cache)
    every = cfg["mode"] == "every_frame"
    fps = cfg["fps"] if cfg["fps"] is not None else (nominal or 30.0)
    if every:
        fps = 0.0
    budget = cfg["budget_ms"] or (1000.0 / fps if fps else None)
    if budget is None:
        raise EdgeAssistError(f"scenario {sc.name}: an every-frame run needs budget_ms")
    duration = float(cfg["duration_s"])
    phases: dict = {}
    rec = dict(base)
    with _open_heads(manifest, cfg) as heads:
        overload = None
        if cfg["overload_factor"]:
            # Capacity: the pipeline in the same interpreter mode, every frame, no pacing.
            with make(0.0) as src:
                cal = run_pipeline_phase(src, heads, budget_ms=budget, every_frame=True,
                                         interpreter_mode=cfg["interpreter"] or "async", warmup_frames=30,
                                         duration_s=float(cfg["calibrate_s"]), capacity_hint=20000,
                                         parallel_heads=cfg["parallel_heads"], interpreter_always=cfg["interpreter_always"])
            capacity = cal.frames["counted"] / cal.window_s
            fps = float(cfg["overload_factor"]) * capacity
            overload = {"capacity_fps": round(capacity, 2), "factor": cfg["overload_factor"], "source_fps": round(fps, 2),
                        "capacity_measured": "pipeline, every frame, no pacing, same interpreter mode, same run"}
            _log(f"{run_id}: capacity {capacity:.0f} fps -> source at {fps:.0f} fps")
        if cfg["warmup_frames"] is not None:
            warm = max(1, int(cfg["warmup_frames"]))
        elif overload:
            warm = max(5, round(cfg["warmup_s"] * overload["capacity_fps"]))
        else:
            warm = max(5, round(cfg["warmup_s"] * (fps or 100.0)))
        hint = int((duration + cfg["warmup_s"] + 10) * min(max(fps, 60.0) if fps else 3000.0, 3000.0) * 1.2)
        paced_live = bool(fps) and not every and not overload
        n_half = max(25, int(float(cfg["limit_s"]) * fps / 2)) if paced_live else 0
        # Paced runs: half the limit's sets before the pipeline run, half after
        # (pooled), so that the VM's speed, which drifts over minutes, weighs
        # on the limit as on the pipeline.
        before = _limit_before(make, fps, heads, n_half, float(cfg["limit_s"]) / 2) if paced_live else None
        _log(f"{run_id}: pipeline {duration:g} s on {src_desc} at {fps:g} fps" if fps else f"{run_id}: pipeline {duration:g} s, every frame, as fast as possible")
        with make(fps) as src:
            ph = run_pipeline_phase(src, heads, budget_ms=budget, every_frame=every, interpreter_mode=cfg["interpreter"],
                                    warmup_frames=warm, duration_s=duration, capacity_hint=hint,
                                    parallel_heads=cfg["parallel_heads"], interpreter_always=cfg["interpreter_always"],
                                    prime=cfg["prime"], inline_capture=cfg["inline_capture"])
        phases["pipeline"] = ph
        tensor = ph.recorder.last_tensor
        if tensor is None:
            raise EdgeAssistError(f"scenario {sc.name}: the pipeline processed no frame; check the source {cfg['source']}")
        n_lim = max(200, ph.frames["counted"])
        v = ph.recorder.view()
        sync = ph.extra["interpreter_mode"] == "sync"
        on_path = (v["interp"][-max(1, ph.frames["counted"]):] > 0) if sync else None
        hot = measure_limit(heads, tensor, iterations=n_lim, max_s=min(1.5, float(cfg["limit_s"])), on_path=on_path)
        lim = hot
        if paced_live:
            # The pipeline idles between frames; so does the limit, on the same clock.
            lim = measure_limit(heads, tensor, iterations=n_half if before else n_lim,
                                max_s=float(cfg["limit_s"]) / (2 if before else 1), pace_fps=fps, on_path=on_path,
                                earlier=before)
        lim.pop("limit_raw", None)
        hot.pop("limit_raw", None)
        phases["limit"] = lim.pop("limit_samples")
        phases["limit_all"] = lim.pop("limit_all_samples")
        if paced_live:
            phases["limit_hot"] = hot.pop("limit_samples")
        naive = None
        if cfg["baseline"]:
            _log(f"{run_id}: naive loop {duration:g} s")
            with make(fps) as src:
                nph = run_naive_phase(src, heads, budget_ms=budget, warmup_frames=warm, duration_s=duration, capacity_hint=hint)
            phases["naive"] = nph
            naive = nph.summary()
            # the naive loop runs all three heads on every frame: its limit is all three
            naive["overhead_ratio"] = round(naive["e2e_ms"]["p50"] / lim["limit_all_ms"]["p50"], 4) if lim["limit_all_ms"]["p50"] else None
        models = heads.model_info()
    s = ph.summary()
    s.pop("mode", None)
    rec.update({
        "source": cfg["source"],
        "source_kind": src_desc,
        "source_fps": round(fps, 3) if fps else None,
        "mode": cfg["mode"],
        "slot": "every frame (back-pressure)" if every else "latest frame (newest wins)",
        "interpreter_mode": s.pop("interpreter_mode"),
        "models": models,
        "warmup_frames": warm,
    })
    s.pop("kind", None)
    rec.update(s)
    rec.update(lim)
    rec["limit_hot_ms"] = hot["limit_ms"]
    rec["limit_hot_all_ms"] = hot["limit_all_ms"]
    rec["limit_hot_heads_ms"] = hot["limit_heads_ms"]

    def ratio(a, b):
        return round(a / b, 4) if b else None

    e50 = rec["e2e_ms"]["p50"]
    rec["overhead_ratio"] = ratio(e50, lim["limit_ms"]["p50"])
    rec["overhead_ratio_all"] = ratio(e50, lim["limit_all_ms"]["p50"])
    rec["overhead_ratio_hot"] = ratio(e50, hot["limit_ms"]["p50"])
    rec["overhead_ratio_service"] = ratio(rec["service_ms"]["p50"], lim["limit_ms"]["p50"])
    # The limit is the heads back to back; with parallel heads the pipeline
    # overlaps two of them, so also say in ms what it costs beyond the limit.
    rec["overhead_ms"] = round(e50 - lim["limit_ms"]["p50"], 4)
    on_path = ["quality", "guidance"] + (["interpreter"] if rec["interpreter_mode"] == "sync" else [])
    rec["overhead_breakdown_ms"] = breakdown(rec, on_path)
    if overload:
        rec["overload"] = overload
    rec["baseline"] = naive
    rec["targets"] = evaluate_targets(rec, sc.targets)
    return rec, phases


def run_scenario(sc: Scenario, args, manifest, cache: _Cache) -> list[tuple[dict, dict]]:
    from edge_assist.bench_report import evaluate_targets_over_repeats

    cfg0 = copy.deepcopy(sc.cfg)
    for k in ("precision", "threads", "device", "duration_s", "warmup_s", "repeat"):
        v = getattr(args, k, None)
        if v is not None:
            cfg0[k] = v
    if args.source:
        cfg0["source"] = args.source
    if args.fps is not None:
        cfg0["fps"] = args.fps
    if args.no_baseline:
        cfg0["baseline"] = False
    backends = args.backend.split(",") if args.backend else [cfg0["backend"]]
    variants = sc.variants or [{}]
    out = []
    for backend in backends:
        for v in variants:
            cfg = dict(cfg0) | {k: val for k, val in v.items()} | {"backend": backend}
            run_id = sc.name + (f"-{v['label']}" if v else "") + (f"-{backend}" if len(backends) > 1 else "")
            reps = max(1, int(cfg["repeat"]))
            results = [run_one(sc, cfg, manifest, cache, run_id) for _ in range(reps)]
            if reps > 1 and not results[0][0].get("skipped"):
                recs = [r for r, _ in results]
                rec, i = _median_by(recs, lambda r: r["e2e_ms"]["p99"])
                med = lambda f: round(statistics.median(f(r) for r in recs), 4)  # noqa: E731
                rec["repeats"] = {
                    "n": reps,
                    "chosen": i,
                    "rule": "the run with the median e2e p99 is reported in full; medians of key figures below",
                    "median": {
                        "e2e_p50": med(lambda r: r["e2e_ms"]["p50"]),
                        "e2e_p99": med(lambda r: r["e2e_ms"]["p99"]),
                        "miss_rate": med(lambda r: r["miss_rate"]),
                        "drop_rate": med(lambda r: r["drop_rate"]),
                        "fps": med(lambda r: r["fps"]),
                        "limit_p50": med(lambda r: r["limit_ms"]["p50"]),
                        "overhead_ratio": med(lambda r: r["overhead_ratio"] or 0.0),
                        "overhead_ms": med(lambda r: r["overhead_ms"]),
                        "rss_growth_mb": med(lambda r: r["rss"]["growth_mb"]),
                    },
                    "each": [{"e2e_p50": r["e2e_ms"]["p50"], "e2e_p99": r["e2e_ms"]["p99"], "miss_rate": r["miss_rate"],
                              "overhead_ratio": r["overhead_ratio"], "overhead_ms": r["overhead_ms"],
                              "limit_p50": r["limit_ms"]["p50"], "heads_parallel_share": r.get("heads_parallel_share"),
                              "others_cores": r["cpu"]["others_cores"]} for r in recs],
                }
                rec["targets"] = evaluate_targets_over_repeats(rec, recs, sc.targets)
                out.append((rec, results[i][1]))
            else:
                out.append(results[0])
            r = out[-1][0]
            if r.get("skipped"):
                _log(f"{run_id}: skipped ({r['skipped']})")
            else:
                _log(f"{run_id}: e2e p50 {r['e2e_ms']['p50']:.2f} p99 {r['e2e_ms']['p99']:.2f} ms, miss {100 * r['miss_rate']:.2f} %, "
                     f"drop {100 * r['drop_rate']:.1f} %, {r['fps']:.0f} fps, limit p50 {r['limit_ms']['p50']:.2f} ms, "
                     f"overhead {r['overhead_ratio']} ({r['overhead_ms']:+.2f} ms; heads {r.get('heads_mode')}, "
                     f"{100 * (r.get('heads_parallel_share') or 0):.0f} % parallel, "
                     f"{100 * ((r.get('prime') or {}).get('share') or 0):.0f} % primed, "
                     f"{100 * ((r.get('capture_inline') or {}).get('inline_share') or 0):.0f} % inline), "
                     f"others' CPU {r['cpu']['others_cores']} cores")
                drift = r.get("limit_drift") or {}
                if drift.get("warn"):
                    _log(f"{run_id}: the machine's speed moved during the run: bare quality + guidance p50 "
                         f"{drift['before_p50']:.2f} ms before the pipeline ran, {drift['after_p50']:.2f} ms after "
                         f"({100 * drift['change']:+.0f} %); the overhead ratio is uncertain by about as much")
    return out


def run_bench(args) -> dict:
    from edge_assist.bench_measure import machine_info
    from edge_assist.manifest import load_manifest

    scenarios = resolve_scenarios(args.scenario)
    manifest = load_manifest(args.engines)
    machine = machine_info()
    cache = _Cache()
    t0 = time.monotonic()
    runs: list[tuple[dict, dict]] = []
    for sc in scenarios:
        try:
            runs.extend(run_scenario(sc, args, manifest, cache))
        except SourceError as exc:
            if len(scenarios) == 1:
                raise
            _log(f"{sc.name}: skipped, source unavailable ({exc})")
            runs.append(({"scenario": sc.name, "run_id": sc.name, "skipped": f"source unavailable: {exc}"}, {}))
    records = [r for r, _ in runs]
    measured = [r for r in records if not r.get("skipped")]
    if not measured:
        raise EdgeAssistError("no run could be measured: " + "; ".join(f"{r['run_id']}: {r['skipped']}" for r in records))
    head_names = {sc.name for sc in scenarios if sc.cfg.get("headline")}
    headline = next((r for r in measured if r["scenario"] in head_names), measured[0])
    machine["loadavg_after"] = [round(v, 2) for v in __import__("os").getloadavg()]
    doc = {"schema": SCHEMA}
    doc.update({k: v for k, v in headline.items()})
    doc["headline"] = headline["run_id"]
    doc["machine"] = machine
    doc["engines"] = {"dir": str(manifest.root), "input_size": list(manifest.input_size),
                      "versions": {k: h.version for k, h in manifest.heads.items()}}
    doc["wall_s"] = round(time.monotonic() - t0, 1)
    doc["targets_all"] = [{"run_id": r["run_id"], "target": k, **v} for r in measured for k, v in (r.get("targets") or {}).items()]
    doc["runs"] = records
    doc["_phases"] = {r["run_id"]: ph for r, ph in runs}
    return doc


def write_outputs(doc: dict, out: Path, plots: bool) -> list[Path]:
    from edge_assist.bench_report import markdown, plot_run, plot_summary
    from edge_assist.record import write_json

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeAssistError(f"cannot create output folder {out}: {exc.strerror}") from exc
    phases = doc.pop("_phases", {})
    written = [out / "results.json", out / "results.md"]
    write_json(out / "results.json", doc)
    (out / "results.md").write_text(markdown(doc), encoding="utf-8")
    if plots:
        for r in doc["runs"]:
            if not r.get("skipped") and r["run_id"] in phases:
                written.append(plot_run(out / f"{r['run_id']}.png", r, phases[r["run_id"]]))
        p = plot_summary(out / "summary.png", doc)
        if p:
            written.append(p)
    return written


def cmd_bench(args) -> int:
    if args.list:
        for name, path in available_scenarios().items():
            sc = load_scenario(path)
            print(f"{name:16s} {sc.cfg['description']}")
        return 0
    if args.duration is not None and args.duration <= 0:
        raise EdgeAssistError("--duration must be positive")
    if args.repeat is not None and args.repeat < 1:
        raise EdgeAssistError("--repeat must be at least 1")
    args.duration_s, args.warmup_s = args.duration, args.warmup
    if args.scenario:
        args.scenario = [n for s in args.scenario for n in s.split(",") if n]
    doc = run_bench(args)
    out = None if args.no_out else (args.out or DEFAULT_OUT)
    if out is not None:
        files = write_outputs(doc, out, plots=not args.no_plots)
        _log("wrote " + ", ".join(str(p) for p in files))
    else:
        doc.pop("_phases", None)
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from edge_assist.bench_report import markdown

        sys.stdout.write(markdown(doc))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="latency benchmark: per-stage and end-to-end percentiles, the bare-inference limit, a naive baseline",
        description="Runs benchmark scenarios (benchmarks/scenarios/*.toml; all of them by default) and reports "
        "latency percentiles per stage and end to end, throughput, budget misses, drops, CPU, memory, the bare "
        "session.run limit and the naive-loop baseline, with the machine they ran on.",
    )
    p.add_argument("--scenario", action="append", metavar="NAME|FILE",
                   help="scenario name (see --list) or a TOML file; repeat or comma-separate; default: all")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--backend", help="inference backend(s), comma-separated (e.g. ort,trt); default: the scenario's (ort)")
    p.add_argument("--precision", choices=("fp32", "int8"), help="override the scenarios' precision (variants still win)")
    p.add_argument("--threads", type=int, help="override intra-op threads per model (variants still win)")
    p.add_argument("--device", choices=("cpu", "cuda", "tensorrt"), help="ONNX Runtime execution provider (ort backend; default cpu)")
    p.add_argument("--engines", type=Path, help="folder with manifest.json and the models (default engines/)")
    p.add_argument("--source", help="run the scenarios on this source URI instead of their own")
    p.add_argument("--fps", type=float, help="replay rate for --source (default its nominal fps)")
    p.add_argument("--duration", type=float, metavar="S", help="measured seconds per run after warm-up (default: the scenario's, 10)")
    p.add_argument("--warmup", type=float, metavar="S", help="warm-up seconds not counted (default: the scenario's, 1)")
    p.add_argument("--repeat", type=int, help="repeat each run N times; the median run is reported, with medians")
    p.add_argument("--no-baseline", action="store_true", help="skip the naive-loop baseline")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout (progress goes to stderr)")
    p.add_argument("--out", type=Path, help=f"folder for results.json, results.md and PNG plots (default {DEFAULT_OUT})")
    p.add_argument("--no-out", action="store_true", help="write no files")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.set_defaults(func=cmd_bench)
