"""What folding the preprocessing into the artifact saves: raw vector -> churn probability.

  folded    accelc artifact of recipes/edu_churn.yaml: takes the raw vector (NaNs and all)
  unfolded  numpy preprocessing (examples/edu_churn/preprocess.py) + an artifact of the MLP alone

For context, two more rows: the preprocessing compiled on its own, and the eager torch model.
The artifacts are built here from the committed weights (into benchmarks/out/, git-ignored),
the two paths are checked to give the same probabilities, then every path is timed in turn:
p50/p99 latency over many calls at batch 1 and 1024. Usage: python benchmarks/edu_churn_preprocess.py [--calls 2000] [--reuse] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

if "--threads" in sys.argv:  # the TVM runtime reads this once, when its thread pool starts
    os.environ["TVM_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "edu_churn_preprocess"
WEIGHTS = ROOT / "examples" / "edu_churn" / "weights.safetensors"
sys.path.insert(0, str(ROOT))

from accelc.runtime import predictor as runtime  # noqa: E402
from examples.edu_churn import data, preprocess  # noqa: E402

PART_RECIPE = """\
version: 1
name: edu_churn_{part}
model:
  entrypoint: examples.edu_churn.model:{entrypoint}
  weights: {weights}
  inputs:
    - {{name: x, shape: [batch, {width}], dtype: float32}}
  batch: [1, 64, 1024]
passes:
  - {{kind: simplify}}
target: x86
verify:
  tolerance: {{atol: 1.0e-5, rtol: 1.0e-4}}
  samples: 2
"""
PARTS = {"mlp": ("build_mlp", "FEATURES"), "preprocess": ("build_preprocess", "RAW_WIDTH")}


def build_artifacts(reuse: bool) -> dict[str, Path]:
    """The folded artifact (the committed recipe), and the MLP and the preprocessing compiled
    apart from each other with the same weights and statistics."""
    from safetensors.numpy import load_file, save_file

    from accelc.compile import build
    from examples.edu_churn import schema
    folders = {name: OUT / name for name in ("folded", *PARTS)}
    if reuse and all((f / "manifest.json").exists() for f in folders.values()):
        return folders
    OUT.mkdir(parents=True, exist_ok=True)
    state = load_file(str(WEIGHTS))
    build(ROOT / "recipes" / "edu_churn.yaml", output=folders["folded"])
    for part, (entrypoint, width) in PARTS.items():
        weights = OUT / f"{part}.safetensors"
        save_file({k.removeprefix(part + "."): v for k, v in state.items() if k.startswith(part + ".")}, str(weights))
        recipe = OUT / f"{part}.yaml"
        recipe.write_text(PART_RECIPE.format(part=part, entrypoint=entrypoint, weights=weights,
                                             width=getattr(schema, width)))
        build(recipe, output=folders[part])
    return folders


def latencies(paths: dict, calls: int, warmup: int = 20) -> dict[str, np.ndarray]:
    """Microseconds per call; the paths take turns so that machine noise hits them alike."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    times = {name: np.empty(calls) for name in paths}
    for i in range(calls):
        for name, fn in paths.items():
            start = time.perf_counter_ns()
            fn()
            times[name][i] = (time.perf_counter_ns() - start) / 1e3
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls at batch 1 (batch 1024: a tenth)")
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts already in benchmarks/out/")
    parser.add_argument("--threads", type=int, help="TVM and torch threads (default: theirs)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    print(f"threads: TVM {os.environ.get('TVM_NUM_THREADS', 'default')}, torch {args.threads or 'default'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    folded, mlp, compiled_preprocess = (runtime.load(f) for f in build_artifacts(args.reuse).values())
    stats = committed_stats()
    eager = eager_model()
    rows = []
    for batch in (1, 1024):
        raw = data.sample_inputs(batch, seed=7)
        gap = np.abs(folded(raw) - mlp(preprocess.transform(raw, stats))).max()
        assert gap < 1e-5, f"the two paths disagree by {gap}"
        calls = args.calls if batch == 1 else max(args.calls // 10, 20)
        paths = {"folded: raw -> artifact": lambda: folded(raw),
                 "numpy preprocess + MLP artifact": lambda: mlp(preprocess.transform(raw, stats)),
                 "  of which numpy preprocess": lambda: preprocess.transform(raw, stats),
                 "(preprocess alone, compiled)": lambda: compiled_preprocess(raw),
                 "(torch eager, whole model)": lambda: eager(raw)}
        for name, t in latencies(paths, calls).items():
            rows.append((name, batch, calls, np.percentile(t, 50), np.percentile(t, 99), np.percentile(t, 50) / batch))
    _print(rows)
    return 0


def eager_model():
    """The original torch pipeline, for context: what serving without accelc would cost."""
    import torch
    from safetensors.torch import load_file

    from examples.edu_churn.model import build_model
    model = build_model()
    model.load_state_dict(load_file(str(WEIGHTS)))
    model.eval()

    def run(raw: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(raw)).numpy()
    return run


def committed_stats() -> dict[str, np.ndarray]:
    """The statistics the folded artifact was built with (from the committed weights)."""
    from safetensors.numpy import load_file
    state = load_file(str(WEIGHTS))
    return {k: state[f"preprocess.{k}"] for k in preprocess.STAT_KEYS}


def _print(rows) -> None:
    print(f"{'path':<34} {'batch':>5} {'calls':>6} {'p50 us':>10} {'p99 us':>10} {'p50 us/row':>11}")
    for name, batch, calls, p50, p99, per_row in rows:
        print(f"{name:<34} {batch:>5} {calls:>6} {p50:>10.1f} {p99:>10.1f} {per_row:>11.3f}")


if __name__ == "__main__":
    sys.exit(main())
