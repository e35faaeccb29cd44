"""Reports for `edge-assist bench`: target checks, a markdown table and PNG
plots (matplotlib, Agg backend, imported only when a plot is drawn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------- targets

TARGET_KEYS = {
    "e2e_p99_ms": "end-to-end p99 (ms) at most; a number, or \"budget+frame\" (the budget plus one source frame interval)",
    "miss_rate": "budget miss rate at most (0.01 = 1 %)",
    "overhead_ratio": "end-to-end p50 / limit p50 at most",
    "rss_growth_mb": "fitted RSS growth over the measured window (MB) at most: memory is flat",
    "drops_counted": "true: dropped frames must be counted (drops > 0 under overload, and offered = processed + dropped + skipped)",
}


# Where a run is repeated, these targets are judged on the median over the
# repeats (the run shown in full is one of them).
REPEATED_FIGURES = ("e2e_p99_ms", "miss_rate", "overhead_ratio", "rss_growth_mb")


def evaluate_targets_over_repeats(rec: dict, recs: list[dict], targets: dict) -> dict:
    """The targets judged on the median over repeated runs (`rec` is the one
    shown in full, `recs` all of them; rec["repeats"]["median"] holds the
    medians): a single run of a noisy machine can land on either side of a
    target, so the verdict must not depend on which run is shown. Each
    repeat's own value is kept beside the verdict."""
    med = rec["repeats"]["median"]
    judged = {**rec, "e2e_ms": {**rec["e2e_ms"], "p99": med["e2e_p99"]}, "miss_rate": med["miss_rate"],
              "overhead_ratio": med["overhead_ratio"], "rss": {**rec["rss"], "growth_mb": med["rss_growth_mb"]}}
    out = evaluate_targets(judged, targets)
    for key, v in out.items():
        if key in REPEATED_FIGURES:
            each = [evaluate_targets(r, {key: targets[key]})[key]["value"] for r in recs]
            v.update(basis=f"median of {len(recs)} repeats", each=each)
    return out


def evaluate_targets(rec: dict, targets: dict) -> dict:
    out = {}
    for key, want in targets.items():
        if key == "e2e_p99_ms":
            if want == "budget+frame":
                fps = rec.get("source_fps") or 0
                limit = rec["budget_ms"] + (1000.0 / fps if fps else 0.0)
            else:
                limit = float(want)
            value = rec["e2e_ms"]["p99"]
            out[key] = {"value": value, "target": round(limit, 3), "op": "<=", "ok": value <= limit}
        elif key in ("miss_rate", "overhead_ratio"):
            value = rec.get(key)
            out[key] = {"value": value, "target": float(want), "op": "<=", "ok": value is not None and value <= float(want)}
        elif key == "rss_growth_mb":
            value = rec["rss"]["growth_mb"]
            out[key] = {"value": value, "target": float(want), "op": "<=", "ok": value <= float(want)}
        elif key == "drops_counted":
            f = rec["frames"]
            dropped = f["dropped_slot"] + f["dropped_source"]
            adds_up = f["offered"] == f["processed"] + f["skipped"] + dropped
            ok = adds_up and (dropped > 0) == bool(want)
            out[key] = {"value": dropped, "target": bool(want), "op": "counted", "ok": ok}
    return out


# --------------------------------------------------------------------------- markdown


def _f(v, nd=2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _pc(v) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


def _overhead(r: dict) -> str:
    """ratio (+ms), with ∥ when the heads ran in parallel and ⚡ when frames were primed."""
    out = _f(r.get("overhead_ratio"))
    if r.get("overhead_ms") is not None:
        out += f" ({r['overhead_ms']:+.2f} ms)"
    share = r.get("heads_parallel_share")
    if r.get("heads_parallel") and share:
        out += f" ∥{100 * share:.0f}%"
    primed = (r.get("prime") or {}).get("share")
    if primed:
        out += f" ⚡{100 * primed:.0f}%"
    drift = r.get("limit_drift") or {}
    if drift.get("warn"):
        out += f" ↕{100 * drift['change']:+.0f}%"
    return out


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = []
    lines.append(f"Machine: {m['cpu_model']}, {m['cores_usable']} usable cores ({m['cores_logical']} logical), "
                 f"{m.get('memory_gb')} GB, GPU: {m.get('gpu') or 'none'}; "
                 + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
                 + f"; Python {m['python']}; commit {m.get('commit') or '?'}; load before {m.get('loadavg')}.")
    lines.append("")
    lines.append("| run | source | budget ms | e2e p50 | p95 | p99 | p99.9 | max | miss | drop | fps | limit p50 | overhead | naive e2e p50 / p99 | naive miss | naive fps | CPU cores (others) | RSS MB (growth) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in doc["runs"]:
        if r.get("skipped"):
            lines.append(f"| {r['run_id']} | skipped: {r['skipped']} |" + " |" * 16)
            continue
        e = r["e2e_ms"]
        b = r.get("baseline") or {}
        be = b.get("e2e_ms", {})
        src = f"{_f(r.get('source_fps'), 0)} fps" if r.get("source_fps") else "every frame"
        cpu = r.get("cpu", {})
        lines.append(
            f"| {r['run_id']} | {src} | {_f(r['budget_ms'], 1)} | {_f(e['p50'])} | {_f(e['p95'])} | {_f(e['p99'])} | {_f(e['p999'])} | {_f(e['max'])} "
            f"| {_pc(r['miss_rate'])} | {_pc(r['drop_rate'])} | {_f(r['fps'], 1)} | {_f(r['limit_ms']['p50'])} | {_overhead(r)} "
            f"| {(_f(be.get('p50')) + ' / ' + _f(be.get('p99'))) if be else '–'} | {_pc(b.get('miss_rate')) if b else '–'} | {_f(b.get('fps'), 1) if b else '–'} "
            f"| {_f(cpu.get('process_cores'))} ({_f(cpu.get('others_cores'))}) | {_f(r['rss_mb'], 0)} ({_f(r['rss']['growth_mb'], 1)}) |"
        )
    lines.append("")
    lines.append("Latencies in ms, after warm-up. e2e: capture time → hints ready. limit: bare session.run of the heads on the "
                 "e2e path (quality + guidance; + interpreter when it runs inside the loop), same sessions, same run, paced like the "
                 "source for live runs. overhead = e2e p50 / limit p50 (in brackets: e2e p50 − limit p50 in ms; ∥N% = on N % of the "
                 "frames quality and guidance ran at the same time in two threads; the limit still runs them one after the other; "
                 "⚡N% = N % of the frames came after a priming pass that ran the last frame's preprocessing and heads again "
                 "shortly before it was due, off its path; the limit is not primed; ↕N% = the limit's sets after the pipeline "
                 "ran took N % more (or less) than those before it: the machine's speed moved during the run, and the ratio is "
                 "uncertain by about as much). "
                 "Naive: every head on every frame, in order, one thread.")
    reps = [r for r in doc["runs"] if r.get("repeats")]
    if reps:
        lines.append("")
        lines.append(f"Medians over {reps[0]['repeats']['n']} repeats of each run (the table above shows the run with the median e2e p99):")
        lines.append("")
        lines.append("| run | e2e p50 | e2e p99 | miss | drop | fps | limit p50 | overhead | RSS growth MB | others' CPU (cores, each repeat) |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in reps:
            m = r["repeats"]["median"]
            others = ", ".join(_f(e.get("others_cores")) for e in r["repeats"]["each"])
            lines.append(f"| {r['run_id']} | {_f(m['e2e_p50'])} | {_f(m['e2e_p99'])} | {_pc(m['miss_rate'])} | {_pc(m['drop_rate'])} | {_f(m['fps'], 1)} "
                         f"| {_f(m['limit_p50'])} | {_f(m['overhead_ratio'])} | {_f(m['rss_growth_mb'], 2)} | {others} |")
    head = next((r for r in doc["runs"] if r["run_id"] == doc.get("run_id") and not r.get("skipped")), None)
    if head is not None:
        lines.append("")
        lines.append(f"Stages of `{head['run_id']}` (pipeline vs naive loop vs bare limit), ms:")
        lines.append("")
        lines.append("| stage | p50 | p99 | max | naive p50 | naive p99 | bare p50 (limit run) |")
        lines.append("|---|---|---|---|---|---|---|")
        bst = (head.get("baseline") or {}).get("stages_ms", {})
        lim = head.get("limit_heads_ms", {})
        for k, v in head["stages_ms"].items():
            nb = bst.get(k, {})
            lines.append(f"| {k} | {_f(v['p50'], 3)} | {_f(v['p99'], 3)} | {_f(v['max'], 3)} | {_f(nb.get('p50'), 3)} | {_f(nb.get('p99'), 3)} | {_f(lim.get(k, {}).get('p50'), 3)} |")
        e, s = head["e2e_ms"], head["service_ms"]
        lines.append(f"| **e2e** | {_f(e['p50'], 3)} | {_f(e['p99'], 3)} | {_f(e['max'], 3)} | {_f((head.get('baseline') or {}).get('e2e_ms', {}).get('p50'), 3)} | {_f((head.get('baseline') or {}).get('e2e_ms', {}).get('p99'), 3)} | {_f(head['limit_ms']['p50'], 3)} (all three {_f(head['limit_all_ms']['p50'], 3)}) |")
        lines.append(f"| service (e2e − capture) | {_f(s['p50'], 3)} | {_f(s['p99'], 3)} | {_f(s['max'], 3)} | | | |")
    checks = [(r["run_id"], k, v) for r in doc["runs"] for k, v in (r.get("targets") or {}).items()]
    if checks:
        lines.append("")
        lines.append("| run | target | value | limit | met |")
        lines.append("|---|---|---|---|---|")
        for run_id, k, v in checks:
            value = _f(v["value"], 4)
            if v.get("each"):
                value += f" (median of {len(v['each'])}: " + ", ".join(_f(x, 4) for x in v["each"]) + ")"
            lines.append(f"| {run_id} | {k} | {value} | {v['op']} {v['target']} | {'yes' if v['ok'] else '**no**'} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _cdf(ax, samples, label, **kw):
    a = np.sort(np.asarray(samples, dtype=np.float64))
    if a.size == 0:
        return
    y = np.arange(1, a.size + 1) / a.size
    ax.plot(a, y, label=f"{label} (p50 {np.median(a):.2f}, p99 {np.percentile(a, 99):.2f})", **kw)


def plot_run(path: Path, rec: dict, phases: dict) -> Path:
    """Latency CDF, per-frame timeline (with drops) and RSS over time."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    pipe, naive, limit = phases.get("pipeline"), phases.get("naive"), phases.get("limit")
    budget = rec["budget_ms"]
    fig, axes = plt.subplots(3, 1, figsize=(10, 11), gridspec_kw={"height_ratios": [3, 3, 1.6]})
    ax = axes[0]
    if pipe is not None:
        _cdf(ax, pipe.e2e, "pipeline e2e", color="C0", lw=2)
        _cdf(ax, pipe.service, "pipeline service (e2e − capture)", color="C0", ls="--")
    if naive is not None:
        _cdf(ax, naive.e2e, "naive loop e2e", color="C3", lw=1.5)
    if limit is not None:
        paced = "limit_hot" in phases
        how = ", paced like the source" if paced else ""
        _cdf(ax, limit, f"limit: bare session.run of the heads on the e2e path{how}", color="k", ls=":")
        if phases.get("limit_all") is not None and rec.get("limit_interpreter_on_path", 1.0) < 1.0:
            _cdf(ax, phases["limit_all"], f"limit, all three heads{how}", color="0.35", ls="-.")
        if paced:
            _cdf(ax, phases["limit_hot"], "limit on the path, back to back (hot)", color="0.6", ls=":")
    ax.axvline(budget, color="C2", lw=1)
    ax.text(budget, 0.02, f" budget {budget:.1f} ms", color="C2", va="bottom")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plain)
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of frames")
    ax.set_title(f"{rec['run_id']}: latency CDF after warm-up ({rec.get('backend')}, {rec.get('precision')})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[1]
    ax2 = None
    for ph, color, name in ((pipe, "C0", "pipeline"), (naive, "C3", "naive loop")):
        if ph is None or ph.recorder.n == 0:
            continue
        v = ph.recorder.view()
        t0 = ph.t_window_ns[0]
        t = (v["t_done_ns"] - t0) / 1e9
        ax.plot(t, v["e2e_ms"], ".", ms=2, color=color, alpha=0.6, label=f"{name} e2e per frame")
        idx = v["index"]
        gaps = np.diff(idx) - 1
        where = np.nonzero(gaps > 0)[0]
        if where.size:
            ax2 = ax2 or ax.twinx()
            ax2.step(t[1:], np.cumsum(np.clip(gaps, 0, None)), where="post", color=color, lw=1, alpha=0.8, ls="--",
                     label=f"{name} dropped frames (cumulative)")
            ax2.set_ylabel("dropped frames (cumulative, dashed)")
    ax.axhline(budget, color="C2", lw=1, label="budget")
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("time since the end of warm-up (s); frames left of 0 are warm-up, not counted")
    ax.set_ylabel("end-to-end latency (ms, log)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[2]
    for ph, color, name in ((pipe, "C0", "pipeline"), (naive, "C3", "naive loop")):
        if ph is None:
            continue
        t, m = ph.monitor.timeline(ph.t_window_ns[0])
        ax.plot(t, m, color=color, label=f"{name} RSS")
    ax.set_xlabel("time since the end of warm-up (s)")
    ax.set_ylabel("RSS (MB)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_summary(path: Path, doc: dict) -> Path | None:
    """One bar group per run: e2e p50 / p99 (pipeline and naive) and limit p50, with budgets."""
    runs = [r for r in doc["runs"] if not r.get("skipped")]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    x = np.arange(len(runs))
    w = 0.18
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(runs)), 5))
    ax.bar(x - 1.5 * w, [r["limit_ms"]["p50"] for r in runs], w, label="limit p50 (bare session.run)", color="0.3")
    ax.bar(x - 0.5 * w, [r["e2e_ms"]["p50"] for r in runs], w, label="pipeline e2e p50", color="C0")
    ax.bar(x + 0.5 * w, [r["e2e_ms"]["p99"] for r in runs], w, label="pipeline e2e p99", color="C0", alpha=0.5)
    ax.bar(x + 1.5 * w, [(r.get("baseline") or {}).get("e2e_ms", {}).get("p99", 0) for r in runs], w,
           label="naive loop e2e p99", color="C3", alpha=0.6)
    for i, r in enumerate(runs):
        ax.hlines(r["budget_ms"], i - 2 * w, i + 2 * w, color="C2", lw=2, label="budget" if i == 0 else None)
    ax.set_xticks(x, [r["run_id"] for r in runs], rotation=25, ha="right")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("ms (log)")
    ax.set_title("edge-assist bench: latency per scenario")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
