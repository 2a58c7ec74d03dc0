"""Shared timing helpers for benchmarks: warm-up, then p50/p99 of many calls."""
from __future__ import annotations

import time

import numpy as np


def time_calls(fn, calls: int = 2000, warmup: int = 100) -> dict:
    """p50/p99 in microseconds of `fn()` over `calls` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    samples = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        fn()
        samples[i] = time.perf_counter() - start
    return {"p50_us": float(np.percentile(samples, 50) * 1e6), "p99_us": float(np.percentile(samples, 99) * 1e6)}


def print_table(header: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in header]] + [[f"{c:.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
