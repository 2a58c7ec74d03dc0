"""Soak: many threads call one predictor many times; every answer must equal the single-threaded
answer for the same input, bad inputs mixed in must each get their coded error, and RSS must stay
bounded.

    python benchmarks/soak.py [ARTIFACT] [--threads 8] [--calls 10000] [--bad-every 10]

Without ARTIFACT it builds the shared test artifact (two float32 inputs [batch, 3]). Prints calls
made, mismatches, errors and RSS at the start (after warm-up) and the end; exits 1 on any mismatch
or unexpected error. tests/integration/test_soak.py runs a short version.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from accelc.artifact.manifest import Manifest  # noqa: E402
from accelc.runtime import predictor as runtime  # noqa: E402
from accelc.errors import InputError  # noqa: E402


def rss_mib() -> float | None:
    """This process's resident set size (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def random_inputs(manifest: Manifest, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Inputs that fit the artifact: normal floats, integers inside their range."""
    arrays = []
    for spec in manifest.inputs:
        shape = [batch if d is None else d for d in spec.dims]
        dtype = np.dtype(spec.dtype)
        if dtype.kind in "iu":
            low, high = spec.range or (0, 2)
            arrays.append(rng.integers(int(low), int(high), shape).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def bad_inputs(good: list[np.ndarray], kind: int) -> tuple[list[np.ndarray], str]:
    """A hostile variant of `good` and the code it must get: wrong dtype, wrong shape, wrong count."""
    if kind == 0:
        return [good[0].astype(np.float64 if good[0].dtype != np.float64 else np.float32), *good[1:]], "E803"
    if kind == 1:
        return [good[0][..., :-1] if good[0].ndim > 1 else good[0][None], *good[1:]], "E802"
    return [*good, good[0]], "E801"


@dataclass
class Report:
    calls: int = 0
    bad_calls: int = 0
    mismatches: int = 0
    errors: list[str] = field(default_factory=list)
    rss_start: float | None = None
    rss_end: float | None = None


def soak(predictor, threads: int = 8, calls: int = 10_000, bad_every: int = 10, distinct: int = 64,
         seed: int = 0) -> Report:
    """`threads` threads x `calls` calls; answers compared with a single-threaded reference."""
    rng = np.random.default_rng(seed)
    sizes = predictor.sizes or [1]
    batches = sorted({1, *sizes, sizes[-1] + 1})  # built, padded and split sizes
    inputs = [random_inputs(predictor.manifest, batches[i % len(batches)], rng) for i in range(distinct)]
    reference = [[o.copy() for o in predictor.predict(*args)] for args in inputs]
    report = Report(rss_start=rss_mib())

    def worker(index: int) -> tuple[int, int, int, list[str]]:
        made = bad = wrong = 0
        errors = []
        for step in range(calls):
            case = (index * 7919 + step) % distinct
            if bad_every and step % bad_every == bad_every - 1:
                args, code = bad_inputs(inputs[case], step // bad_every % 3)
                try:
                    predictor.predict(*args)
                    errors.append(f"bad input accepted (expected {code})")
                except InputError as exc:
                    if exc.code != code:
                        errors.append(f"bad input got {exc.code}, expected {code}")
                bad += 1
                continue
            try:
                outputs = predictor.predict(*inputs[case])
            except Exception as exc:  # counted and shown, never fatal: the soak finishes
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            made += 1
            wrong += not all(np.array_equal(o, r, equal_nan=True) for o, r in zip(outputs, reference[case]))
        return made, bad, wrong, errors

    with ThreadPoolExecutor(threads) as pool:
        for made, bad, wrong, errors in pool.map(worker, range(threads)):
            report.calls += made
            report.bad_calls += bad
            report.mismatches += wrong
            report.errors += errors
    report.rss_end = rss_mib()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", nargs="?")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--calls", type=int, default=10_000, help="calls per thread")
    parser.add_argument("--bad-every", type=int, default=10, help="every Nth call is a hostile input (0: none)")
    args = parser.parse_args(argv)
    if args.artifact:
        path = Path(args.artifact)
    else:
        from tests.fixtures.helpers import shared_artifact
        path = shared_artifact()
    predictor = runtime.load(path)
    soak(predictor, args.threads, 200, args.bad_every)  # warm-up: VMs, staging buffers, allocator pools
    report = soak(predictor, args.threads, args.calls, args.bad_every)
    print(f"artifact {path} ({predictor.manifest.name}), {args.threads} threads x {args.calls} calls")
    print(f"good calls made: {report.calls}, mismatches vs single-threaded answers: {report.mismatches}")
    print(f"hostile calls made: {report.bad_calls}, each refused with its code: "
          f"{'yes' if not any('bad input' in e for e in report.errors) else 'NO'}")
    print(f"unexpected errors: {len(report.errors)}" + "".join(f"\n  {e}" for e in report.errors[:10]))
    if report.rss_start is not None:
        print(f"RSS after warm-up {report.rss_start:.1f} MiB, at the end {report.rss_end:.1f} MiB "
              f"({report.rss_end - report.rss_start:+.1f})")
    return 1 if report.mismatches or report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
