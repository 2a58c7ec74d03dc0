"""Untuned vs tuned accelc builds against PyTorch eager, torch.compile and ONNX Runtime.

    python benchmarks/tuning.py [--trials 64] [--threads 1]

Builds the 32->128->64->1 MLP (examples/mlp) at batch 1, 256, 4096 and the ResNet-style CNN
(examples/resnet_small) at batch 1, untuned and tuned with the given trial budget (one shared
database under benchmarks/out/tuning), then times every system on the same inputs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"

WORKLOADS = [  # (name, entrypoint, input shape after batch, batch sizes)
    ("mlp", "examples.mlp.model:build_model", [32], [1, 256, 4096]),
    ("resnet_small", "examples.resnet_small.model:build_model", [3, 32, 32], [1]),
]


def recipe_text(name, entrypoint, shape, sizes, trials, threads) -> str:
    return (f"version: 1\nname: bench_{name}\nmodel:\n  entrypoint: {entrypoint}\n  inputs:\n"
            f"    - {{name: x, shape: [batch, {', '.join(map(str, shape))}], dtype: float32}}\n"
            f"  batch: {sizes}\ntuning: {{trials: {trials}, threads: {threads}, database: benchmarks/out/tuning}}\n"
            f"verify: {{samples: 2}}\n")


def build(name, entrypoint, shape, sizes, trials, threads) -> tuple[Path, float]:
    from accelc.compile import build as accelc_build
    OUT.mkdir(parents=True, exist_ok=True)
    recipe = ROOT / "benchmarks" / "out" / f"{name}-{trials}.yaml"
    recipe.write_text(recipe_text(name, entrypoint, shape, sizes, trials, threads))
    start = time.perf_counter()
    result = accelc_build(recipe, output=OUT / f"{name}-trials{trials}", log=lambda *_: None)
    return result.output, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import numpy as np
    from accelc import bench, runtime
    from accelc.capture import import_entrypoint
    for name, entrypoint, shape, sizes in WORKLOADS:
        untuned, t_untuned = build(name, entrypoint, shape, sizes, 0, args.threads)
        tuned, t_tuned = build(name, entrypoint, shape, sizes, args.trials, args.threads)
        model = import_entrypoint(entrypoint, ROOT, "benchmark")().eval()
        p_untuned, p_tuned = runtime.load(untuned, batching="exact"), runtime.load(tuned, batching="exact")
        for batch in sizes:
            x = np.random.default_rng(batch).standard_normal((batch, *shape), dtype=np.float32)
            rows = bench.compare(model, [x], {"accelc untuned": lambda: p_untuned(x),
                                              f"accelc tuned ({args.trials} trials)": lambda: p_tuned(x)},
                                 args.threads, args.calls)
            print(bench.format_rows(rows, f"\n{name} batch {batch}, {args.threads} thread(s), numpy in/out "
                                          f"(build: untuned {t_untuned:.0f} s, tuned {t_tuned:.0f} s)"))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
