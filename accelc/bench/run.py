"""Side-by-side timings: compiled artifacts against PyTorch eager, torch.compile and
ONNX Runtime on the same inputs, same thread count, in one run. Peers that are not
installed are skipped with a note."""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from accelc import logs

_LOG = logging.getLogger(__name__)


def time_calls(fn: Callable, calls: int = 2000, warmup: int = 100, budget_s: float = 20.0) -> dict:
    """p50/p99 in microseconds over `calls` calls after warm-up (fewer if `budget_s` runs out)."""
    for _ in range(warmup):
        fn()
    samples, deadline = [], time.perf_counter() + budget_s
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
        if start > deadline and len(samples) >= 50:
            break
    arr = np.asarray(samples)
    return {"p50_us": float(np.percentile(arr, 50) * 1e6), "p99_us": float(np.percentile(arr, 99) * 1e6),
            "calls": len(samples)}


def model_flops(model, inputs: list[np.ndarray]) -> int:
    """FLOPs of one forward pass (multiply-adds count 2), from PyTorch's flop counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*[torch.from_numpy(a) for a in inputs])
    return int(counter.get_total_flops())


def fma_bound_gflops(threads: int) -> float:
    """Peak fp32 GFLOP/s of this machine: threads x 2 FMA units x lanes x 2 flops x clock, with 16
    lanes where the CPU has AVX-512 (PyTorch and ONNX Runtime use it whatever accelc targets)."""
    return threads * 2 * fma_lanes() * 2 * cpu_ghz()


ZEN4_FAMILY = 25  # AMD family 19h with AVX-512 (Zen 4): 512-bit FMAs run on two 256-bit pipes


def fma_lanes(cpuinfo: str | None = None) -> int:
    """float32 lanes each FMA unit retires per cycle: 16 with AVX-512, except on Zen 4, which
    splits a 512-bit FMA over its 256-bit pipes (the same peak as AVX2)."""
    from accelc.config.host_cpu import cpu_flags
    if "avx512f" not in cpu_flags():
        return 8
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    fields = dict(line.split(":", 1) for line in text.splitlines()[:30] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    amd_zen4 = fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == str(ZEN4_FAMILY)
    return 8 if amd_zen4 else 16


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_ghz() -> float:
    """The clock the bound assumes: $ACCELC_CPU_GHZ when set (VMs often report their base clock
    while running at turbo: kernels here measured above a bound taken from /proc/cpuinfo), else
    cpufreq's maximum, else the largest 'cpu MHz' in /proc/cpuinfo, else 2.6."""
    if os.environ.get("ACCELC_CPU_GHZ"):
        return float(os.environ["ACCELC_CPU_GHZ"])
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    mhz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = max(mhz, float(line.split(":")[1]))
    except (OSError, ValueError):
        pass
    return mhz / 1000.0 or 2.6


def peer_callables(model, inputs: list[np.ndarray], threads: int) -> dict[str, Callable | str]:
    """name -> zero-argument callable, or a string saying why the peer was skipped."""
    import torch

    from accelc.capture.export import flatten  # every output, as the artifact returns them (dicts, ModelOutputs)
    torch.set_num_threads(threads)
    tensors = [torch.from_numpy(a) for a in inputs]
    peers: dict[str, Callable | str] = {}

    def eager():
        with torch.no_grad():
            return [t.numpy() for t in flatten(model(*tensors))]
    peers["pytorch eager"] = eager
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(*tensors)

        def run_compiled():
            with torch.no_grad():
                return [t.numpy() for t in flatten(compiled(*tensors))]
        peers["torch.compile"] = run_compiled
    except Exception as exc:  # no C++ compiler, unsupported model: a peer, not our failure
        peers["torch.compile"] = f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    peers["onnxruntime"] = _onnxruntime(model, inputs, threads)
    return peers


def _onnxruntime(model, inputs, threads):
    try:
        import onnxruntime as ort
        import torch
    except ImportError:
        return "skipped: onnxruntime is not installed"
    names = [f"input{i}" for i in range(len(inputs))]
    failures = []
    # torch.export's exporter first: the TorchScript one fails on decoder LMs (aten::diff in their
    # causal masks), so ONNX Runtime would be "skipped" exactly where the comparison matters
    for dynamo in (True, False):
        try:
            # the session holds the model (and any external weights) once made: the file can go
            with tempfile.TemporaryDirectory(prefix="accelc-bench-") as folder, _quiet():
                path = Path(folder) / "model.onnx"
                torch.onnx.export(model, tuple(torch.from_numpy(a) for a in inputs), str(path), input_names=names,
                                  dynamo=dynamo, **({"verbose": False} if dynamo else {}))
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            failures.append(f"{'dynamo' if dynamo else 'torchscript'}: {first[:60]}")
            continue
        feed = dict(zip([spec.name for spec in session.get_inputs()], inputs))
        return lambda: session.run(None, feed)
    return f"skipped: ONNX export/session failed ({'; '.join(failures)})"


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings on stdout/stderr: not the benchmark's output."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def compare(model, inputs: list[np.ndarray], systems: dict[str, Callable], threads: int, calls: int = 2000,
            peers: bool = True, rounds: int = 5, warmup: int = 100) -> list[dict]:
    """Rows of {system, p50_us, p99_us, gflops, bound_pct} (or a skip note), same inputs for all.
    Each system gets `warmup` untimed calls before its first round and up to 10 before the others
    (full-size models take ~1 s a call: benchmarks/models.py asks for fewer).
    Systems take turns: `rounds` rounds of calls / rounds calls each, reporting the median of the
    rounds' p50 and p99, so that a busy neighbour on a shared machine slows every system alike
    instead of whichever ran while it was busy. Each round starts one system later than the last:
    in a fixed order the first system always ran after the same other one (with its caches) and
    first after any pause."""
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    candidates = {**systems, **(peer_callables(model, inputs, threads) if peers else {})}
    flops, bound = model_flops(model, inputs), fma_bound_gflops(threads)
    runnable = {name: fn for name, fn in candidates.items() if not isinstance(fn, str)}
    timings: dict[str, list[dict]] = {name: [] for name in runnable}
    rounds = max(1, rounds)
    names = list(runnable)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            first = warmup if round_ == 0 else min(10, warmup)
            timings[name].append(time_calls(runnable[name], max(1, calls // rounds), warmup=first))
    rows = []
    for name, fn in candidates.items():
        if isinstance(fn, str):
            rows.append({"system": name, "note": fn})
            continue
        p50 = float(np.median([t["p50_us"] for t in timings[name]]))
        p99 = float(np.median([t["p99_us"] for t in timings[name]]))
        # the quietest round's p50: what the code achieves when the neighbours leave the core alone
        best = float(min(t["p50_us"] for t in timings[name]))
        gflops = flops / (p50 * 1e3)
        rows.append({"system": name, "p50_us": p50, "p99_us": p99, "calls": sum(t["calls"] for t in timings[name]),
                     "rounds": len(timings[name]), "gflops": gflops, "bound_pct": 100 * gflops / bound,
                     "best_round_p50_us": best, "best_round_bound_pct": 100 * flops / (best * 1e3) / bound})
    return rows


def title(name: str, batch: int | str, threads: int) -> str:
    return f"\n{name} batch {batch}, {threads} thread(s), numpy in / numpy out"


def format_rows(rows: list[dict], title: str) -> str:
    lines = [title, f"  {'system':<22} {'p50 us':>10} {'p99 us':>10} {'GFLOP/s':>9} {'% FMA bound':>12} "
                    f"{'quietest round: p50 us':>23} {'% bound':>8}"]
    for row in rows:
        if "note" in row:
            lines.append(f"  {row['system']:<22} {row['note']}")
        else:
            lines.append(f"  {row['system']:<22} {row['p50_us']:>10.1f} {row['p99_us']:>10.1f} "
                         f"{row['gflops']:>9.2f} {row['bound_pct']:>11.1f}% "
                         f"{row['best_round_p50_us']:>23.1f} {row['best_round_bound_pct']:>7.1f}%")
    return "\n".join(lines)


def bench_artifact(folder: Path, batches: list[int] | None = None, threads: int = 1, calls: int = 2000,
                   rounds: int = 5, logger: logs.Logger | None = None) -> dict:
    """Time an artifact against its own original model's peers at each batch size (format_results
    prints them); a progress line per batch size, since a whole run takes minutes."""
    log = logger or _LOG
    from accelc.artifact import store as artifact
    from accelc.capture import export as capture
    from accelc.runtime import predictor as runtime
    from accelc.bench.kernels import sample_inputs
    from accelc.verify.artifact_check import stored_recipe
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    manifest = artifact.load_manifest(folder)
    loaded = stored_recipe(Path(folder), manifest)
    model = capture.build_model(loaded)
    predictor = runtime.load(folder)
    results = {"artifact": str(folder), "name": manifest.name, "threads": threads,
               "fma_bound_gflops": fma_bound_gflops(threads), "batches": {}}
    for batch in batches or manifest.batch:
        log.info(f"timing {manifest.name} at batch {batch}: {rounds} round(s), {calls} calls per system ...")
        inputs = sample_inputs(manifest, batch)
        rows = compare(model, inputs, {"accelc": lambda: predictor(*inputs)}, threads, calls, rounds=rounds)
        results["batches"][batch] = rows
    return results


def format_results(results: dict) -> str:
    """bench_artifact's results as one table per batch size."""
    return "\n".join(format_rows(rows, title(results["name"], batch, results["threads"]))
                     for batch, rows in results["batches"].items())


def plot(results: dict, path: Path) -> str | None:
    """Latency vs batch size per system as a PNG; None if matplotlib is missing (a note, not an error)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed"
    series: dict[str, list[tuple[int, float]]] = {}
    for batch, rows in results["batches"].items():
        for row in rows:
            if "p50_us" in row:
                series.setdefault(row["system"], []).append((int(batch), row["p50_us"]))
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for system, points in series.items():
        points.sort()
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=system)
    axes.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency (µs)",
             title=f"{results['name']}: latency vs batch ({results['threads']} thread(s))")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return None
