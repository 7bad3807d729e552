"""Timing calls: warm-up, a time budget per row, the device synchronised before every clock read,
latencies as percentiles."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

MIN_TIMED_ITERS = 3  # a row's time budget never cuts it below this many timed calls (or --iters if fewer)


def percentile_ms(times_s: Sequence[float]) -> dict[str, float]:
    t = np.asarray(times_s, np.float64) * 1e3
    return {"p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)), "p99": float(np.percentile(t, 99)),
            "mean": float(t.mean()), "min": float(t.min()), "max": float(t.max())}


def time_calls(fn: Callable[[], Any], sync: Callable[[], None], *, warmup: int, iters: int,
               max_time_s: float) -> tuple[list[float], int]:
    """Per-call wall times (s) of `fn` after warm-up, the device synchronised before every clock read.

    Warm-up stops early (after at least one call) once it has used half the time budget; timing
    stops once `max_time_s` is used, after at least MIN_TIMED_ITERS calls (or `iters` if fewer).
    Returns (times, warm-up calls made).
    """
    t_start = time.perf_counter()
    n_warm = 0
    for _ in range(warmup):
        fn()
        sync()
        n_warm += 1
        if time.perf_counter() - t_start > max_time_s / 2:
            break
    times: list[float] = []
    floor = min(iters, MIN_TIMED_ITERS)
    t_timed = time.perf_counter()
    while len(times) < iters:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= floor and time.perf_counter() - t_timed > max_time_s:
            break
    return times, n_warm

