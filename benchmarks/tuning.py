"""Untuned vs tuned accelc builds against PyTorch eager, torch.compile and ONNX Runtime.

    ACCELC_CPU_GHZ=2.6 python benchmarks/tuning.py [--trials 256] [--time-budget 300] [--rounds 3]
        [--calls 1000] [--workloads edu_churn,edu_churn_mlp,resnet_small] [--keep-database]

For each workload (the repository's recipes: the edu_churn model with its trained weights at batch
1, 256 and 4096; its MLP alone, without the folded preprocessing, at 256 and 4096; the
ResNet-style CNN at batch 1) it builds untuned and tuned artifacts (a fresh
database under benchmarks/out/tuning unless --keep-database), then times every system on the same
inputs, one thread, in `--rounds` interleaved rounds (median of the rounds' p50 and p99), with
GFLOP/s against the FMA bound. Finally it times `accelc build` twice more from the command line:
once with no cache entry yet (it tunes only kernels still without records, then compiles), once
hitting the build cache.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
DATABASE = "benchmarks/out/tuning"
WORKLOADS = {  # name -> (recipe in recipes/, batch sizes to build and time)
    "edu_churn": ("edu_churn", [1, 256, 4096]),
    "edu_churn_mlp": ("edu_churn", [256, 4096]),  # the MLP alone (39->128->64->1), on standardised features
    "resnet_small": ("resnet_small", [1]),
}


def mlp_only(data: dict) -> dict:
    """edu_churn's recipe for its MLP without the folded preprocessing (random weights: the same
    arithmetic), as the issue's peers were measured on a plain MLP."""
    data["model"] = {"entrypoint": "examples.edu_churn.model:build_mlp", "batch": data["model"]["batch"],
                     "inputs": [{"name": "features", "shape": ["batch", 39], "dtype": "float32"}]}
    data.pop("data", None)
    data["verify"].pop("metric", None)
    return data


def write_recipe(workload: str, sizes: list[int], tuning: dict | None, target: str | None = None) -> Path:
    """The repository recipe at these batch sizes, with or without a tuning budget."""
    data = yaml.safe_load((ROOT / "recipes" / f"{WORKLOADS[workload][0]}.yaml").read_text())
    data["name"] = f"bench_{workload}_{'tuned' if tuning else 'untuned'}"
    data["model"]["batch"] = sizes
    data["verify"] = {**data.get("verify", {}), "samples": 1}
    if target:
        data["target"] = target
    if workload == "edu_churn_mlp":
        data = mlp_only(data)
    data.pop("tuning", None)
    if tuning:
        data["tuning"] = tuning
    path = OUT / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build(path: Path, output: Path):
    from accelc.compile import build as accelc_build
    start = time.perf_counter()
    result = accelc_build(path, output=output, cache=False)
    return result, time.perf_counter() - start


def cli_build(path: Path, output: Path) -> tuple[float, str]:
    """`accelc build` in a fresh process, as a user runs it (imports included)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "accelc", "build", str(path), "--output", str(output)],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def inputs_for(loaded, batch: int) -> list:
    """The recipe's own sample rows when it has them (edu_churn: raw rows with NaNs), else random."""
    import numpy as np

    from accelc.capture import export as capture
    source = loaded.recipe.data.samples
    if source:
        arrays = capture.import_entrypoint(source, loaded.root, "benchmark", field="data.samples")(batch, batch)
        return [np.ascontiguousarray(a, dtype=np.float32) for a in (arrays if isinstance(arrays, (list, tuple))
                                                                    else [arrays])]
    return list(capture.random_inputs(loaded.recipe.model.inputs, batch, seed=batch))


def tuning_line(tuning: dict) -> str:
    return (f"{tuning['trials']} trials in {tuning['seconds']:.0f} s, {tuning['tuned_tasks']}/{tuning['tasks']} "
            f"kernels tuned, stopped by {tuning['stopped_by']}")


def bench_workload(name: str, args) -> None:
    from accelc.bench import run as bench
    from accelc.capture import export as capture
    from accelc.config import recipe as recipe_mod
    from accelc.runtime import predictor as runtime
    sizes = WORKLOADS[name][1]
    untuned_recipe = write_recipe(name, sizes, None, args.target)
    tuned_recipe = write_recipe(name, sizes, {"trials": args.trials, "time_budget": args.time_budget,
                                              "threads": args.threads, "database": DATABASE}, args.target)
    untuned, t_untuned = build(untuned_recipe, OUT / f"{name}-untuned")
    tuned, t_tuned = build(tuned_recipe, OUT / f"{name}-tuned")
    tuning = tuned.manifest.tuning.to_json()
    print(f"\n== {name} for {tuned.manifest.target.name}: untuned build {t_untuned:.0f} s; "
          f"tuned build {t_tuned:.0f} s ({tuning_line(tuning)})")
    from accelc.backends.tvm.tune.driver import format_summary
    print(format_summary(tuning))
    loaded = recipe_mod.load(untuned_recipe)
    model = capture.build_model(loaded).eval()
    p_untuned, p_tuned = (runtime.load(r.output, batching="exact") for r in (untuned, tuned))
    for batch in sizes:
        inputs = inputs_for(loaded, batch)
        systems = {"accelc untuned": lambda: p_untuned(*inputs), "accelc tuned": lambda: p_tuned(*inputs),
                   **bench.peer_callables(model, inputs, args.threads)}
        rows = bench.compare(model, inputs, systems, args.threads, args.calls * args.rounds, peers=False,
                             rounds=args.rounds)
        print(bench.format_rows(rows, f"\n{name} batch {batch}, {args.threads} thread(s), numpy in/out, median of "
                                      f"{args.rounds} interleaved rounds; FMA bound "
                                      f"{bench.fma_bound_gflops(args.threads):.0f} GFLOP/s "
                                      f"({bench.fma_lanes()} lanes, {bench.cpu_ghz():.2f} GHz)"))
        peers = [r["p50_us"] for r in rows if "p50_us" in r and not r["system"].startswith("accelc")]
        tuned_p50 = next(r["p50_us"] for r in rows if r["system"] == "accelc tuned")
        if peers:
            print(f"  tuned / best peer: {tuned_p50 / min(peers):.2f}x")
    rebuild, out = cli_build(tuned_recipe, OUT / f"{name}-rebuilt")
    tuned_line = next((line.strip() for line in out.splitlines() if "kernels tuned" in line), "")
    cached, out = cli_build(tuned_recipe, OUT / f"{name}-cached")
    hit = "build cache: reused" in out or "is up to date" in out  # a kept output built from the same inputs
    print(f"  accelc build again (CLI, fresh process, no cache entry yet; tunes only kernels still without "
          f"records): {rebuild:.1f} s [{tuned_line}]\n"
          f"  cached rebuild (CLI, fresh process): {cached:.1f} s ({'cache hit' if hit else 'CACHE MISS'})")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=256, help="trial budget per workload")
    parser.add_argument("--time-budget", type=float, default=300, help="tuning seconds per workload")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per system, batch and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the machine is noisy)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--target", help="build for this target instead of the recipes' (e.g. x86-avx512)")
    parser.add_argument("--keep-database", action="store_true", help="resume from earlier records")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.keep_database:  # the tuning time reported is the time it took from nothing
        shutil.rmtree(ROOT / DATABASE, ignore_errors=True)
    for name in args.workloads.split(","):
        bench_workload(name, args)


if __name__ == "__main__":
    main()
