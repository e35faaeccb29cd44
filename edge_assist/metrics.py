"""Latency bookkeeping: per-stage and end-to-end samples, percentiles."""

from __future__ import annotations

import threading
from array import array
from collections import deque

import numpy as np

PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


def summarize_ms(samples_ms) -> dict[str, float]:
    """p50/p95/p99/p99.9/max (and mean, n) of samples in ms; zeros when empty."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {k: 0.0 for k in (*PERCENTILES, "max", "mean")} | {"n": 0}
    out = {k: float(np.percentile(a, q)) for k, q in PERCENTILES.items()}
    out["max"] = float(a.max())
    out["mean"] = float(a.mean())
    out["n"] = int(a.size)
    return out


class LatencyLog:
    """Thread-safe per-stage sample store with a short recent window for HUDs.

    Samples are packed doubles (8 bytes each); past `cap` per stage the oldest
    half is dropped, so a pipeline that runs for days keeps flat memory and
    its percentiles describe the most recent samples.
    """

    def __init__(self, recent: int = 300, cap: int = 1 << 20):
        self._lock = threading.Lock()
        self._cap = cap
        self._stages: dict[str, array] = {}
        self._recent_e2e: deque[float] = deque(maxlen=recent)
        self._recent_t_ns: deque[int] = deque(maxlen=recent)

    def _append(self, stage: str, ms: float) -> None:
        a = self._stages.get(stage)
        if a is None:
            a = self._stages[stage] = array("d")
        if len(a) >= self._cap:
            del a[: len(a) // 2]
        a.append(ms)

    def add(self, stage: str, ms: float) -> None:
        with self._lock:
            self._append(stage, ms)

    def add_e2e(self, ms: float, t_ns: int) -> None:
        with self._lock:
            self._append("e2e", ms)
            self._recent_e2e.append(ms)
            self._recent_t_ns.append(t_ns)

    def samples(self, stage: str) -> list[float]:
        with self._lock:
            return list(self._stages.get(stage, ()))

    def median_of_last(self, stage: str, n: int) -> float:
        with self._lock:
            a = self._stages.get(stage)
            return float(np.median(a[-n:])) if a else 0.0

    def stages(self) -> list[str]:
        with self._lock:
            return [s for s in self._stages if s != "e2e"]

    def recent(self) -> dict[str, float]:
        """p50/p99 of the recent window and the frame rate it was processed at."""
        with self._lock:
            e2e = list(self._recent_e2e)
            ts = list(self._recent_t_ns)
        fps = (len(ts) - 1) / ((ts[-1] - ts[0]) / 1e9) if len(ts) > 1 and ts[-1] > ts[0] else 0.0
        s = summarize_ms(e2e)
        return {"p50": s["p50"], "p99": s["p99"], "fps": fps}

    def summary(self, skip: int = 0) -> dict[str, dict[str, float]]:
        """Per-stage summaries, ignoring the first `skip` samples (warm-up)."""
        with self._lock:
            return {k: summarize_ms(v[skip:]) for k, v in self._stages.items()}
