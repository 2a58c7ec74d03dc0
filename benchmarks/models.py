"""Real models against ONNX Runtime, torch.compile and eager PyTorch (issue #20, item 1).

Full-size ResNet-50 (224x224), BERT-base (seq 128) and ViT-B/16 (224x224) from `transformers`
configs with seeded random weights (no download), or with `--families` the small family suite of
tests/fixtures/families.py. Each is built by `accelc.build` from a Recipe made
here (untuned; `--tuned` adds a MetaSchedule build), then every system is timed on the same inputs
in interleaved rounds (accelc.bench.run.compare) at each batch size and thread count, and accelc's
time is split per kernel with the rule of schedules.RULES that scheduled it.

    python benchmarks/models.py --batch 1 --threads 1 [--models resnet50,bert-base,vit-b16]
    python benchmarks/models.py --families --batch 1 --threads 1,all [--tuned --time-budget 600]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/models.py`: accelc and tests.fixtures from this checkout
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from accelc.bench import kernels as per_kernel  # noqa: E402

IMAGE_224 = [{"name": "pixel_values", "shape": ["batch", 3, 224, 224], "dtype": "float32"}]
TEXT_128 = [{"name": "input_ids", "shape": ["batch", 128], "dtype": "int64", "range": [0, 30522]},
            {"name": "attention_mask", "shape": ["batch", 128], "dtype": "int64", "range": [0, 2]}]

# name -> (model source: a huggingface section or an entrypoint, inputs); the configs' defaults are
# the full-size architectures (ResNetConfig is ResNet-50, BertConfig BERT-base, ViTConfig ViT-B/16)
FULL = {
    "resnet50": ({"task": "image-classification", "config": {"model_type": "resnet", "num_labels": 1000}},
                 IMAGE_224),
    "bert-base": ({"task": "feature-extraction", "outputs": ["last_hidden_state"], "config": {"model_type": "bert"}},
                  TEXT_128),
    "vit-b16": ({"task": "image-classification", "config": {"model_type": "vit", "num_labels": 1000}}, IMAGE_224),
}
# the passes of each model's float build: what its recipe would list (ONNX Runtime folds BatchNorm on its own)
FLOAT = {"resnet50": [{"kind": "fold_batchnorm"}]}
# --int8: the passes of each model's int8 build (its fp32 build: FLOAT's, the same without quantize)
INT8 = {"resnet50": [{"kind": "fold_batchnorm"}, {"kind": "quantize", "mode": "static", "samples": 8,
                                                   "data": "benchmarks.models:calibration_images"}],
        "bert-base": [{"kind": "quantize", "mode": "dynamic"}], "vit-b16": [{"kind": "quantize", "mode": "dynamic"}]}
# Dynamic int8 through 12 encoder layers: a one-ulp float difference (LayerNorm, softmax, GELU) before a
# per-row quantize moves a value or a row's scale by one quantum, and the flips compound (max abs 0.07 on
# BERT-base's output; 7e-7 with 2 layers), so the compiled-vs-rewritten tier gets a quantum-sized tolerance
INT8_TOLERANCE = {"bert-base": {"atol": 0.25, "rtol": 0.01}, "vit-b16": {"atol": 0.25, "rtol": 0.01}}
OUTSIDE = per_kernel.OUTSIDE
PEERS = ("onnxruntime", "torch.compile", "pytorch eager")
_LOG = logging.getLogger("benchmarks.models")


def families() -> dict[str, tuple]:
    """The family suite in FULL's shape (tests/fixtures/families.py holds YAML flow strings)."""
    from tests.fixtures.families import FAMILIES
    return {name: (source, [yaml.safe_load(spec) for spec in inputs]) for name, (source, inputs, _) in FAMILIES.items()}


def calibration_images():
    """Seeded random 224x224 images: static int8 calibration of the random-weight CNNs (speed, not accuracy)."""
    import numpy as np
    return np.random.default_rng(0).standard_normal((16, 3, 224, 224), dtype=np.float32)


def recipe(name: str, source: dict | str, inputs: list[dict], batches: list[int], tuning: dict | None = None,
           passes: list[dict] | None = None):
    """An accelc.Recipe: random weights for a Hugging Face source, one verification sample per size."""
    import accelc
    model = {"entrypoint": source} if isinstance(source, str) else {"huggingface": {**source, "random_weights": True}}
    data = {"version": 1, "name": name, "model": {**model, "inputs": inputs, "batch": sorted(set(batches))},
            "verify": {"samples": 1, **({"tolerance": INT8_TOLERANCE[name]} if name in INT8_TOLERANCE and any(
                p["kind"] == "quantize" for p in passes or []) else {})}, **({"passes": passes} if passes else {})}
    return accelc.Recipe.model_validate({**data, "tuning": tuning} if tuning else data)


def thread_pool(max_threads: int) -> None:
    """Before TVM's thread pool exists: its size at creation caps every later setting (the default
    is half the logical CPUs), and binding would pin the main thread, and with it the threads that
    torch and ONNX Runtime start from it, to one core."""
    os.environ["TVM_NUM_THREADS"] = str(max_threads)
    os.environ.setdefault("TVM_BIND_THREADS", "0")


def set_threads(threads: int) -> None:
    """TVM's parallel loops on `threads` threads from now on (the peers get theirs in compare)."""
    import tvm
    tvm.get_global_func("runtime.config_threadpool")(1, threads)


def ratios(rows: list[dict]) -> dict:
    """accelc's p50 over ONNX Runtime's and over the best peer's (None where a peer was skipped)."""
    p50 = {row["system"]: row["p50_us"] for row in rows if "p50_us" in row}
    ours = p50.get("accelc")
    peers = [name for name in PEERS if name in p50]
    best = min(peers, key=p50.get) if peers else None
    return {"vs_ort": ours / p50["onnxruntime"] if ours and "onnxruntime" in p50 else None,
            "best_peer": best, "vs_best": ours / p50[best] if ours and best else None}


def build(name: str, source, inputs: list[dict], args, target: str, tuned: bool = False, int8: bool = False):
    """(BuildResult, seconds, the Recipe) of one model for `target` at all of `args.batch`."""
    import accelc
    # scheduled and measured for the most threads timed (the recipe's default is every core)
    tuning = {"trials": args.trials, "time_budget": args.time_budget, "database": args.database,
              "threads": max(args.threads)} if tuned else None
    made = recipe(name, source, inputs, args.batch, tuning, INT8.get(name) if int8 else FLOAT.get(name))
    start = time.perf_counter()
    built = accelc.build(made, target=target, output=Path(args.out) / f"{name}-{target}{'-tuned' * tuned}"
                         f"{'-int8' * int8}")
    return built, time.perf_counter() - start, made


def label(target: str, first: str, tuned: bool, int8: bool = False) -> str:
    """The system's name: "accelc" for the first target (the one the ratios are of)."""
    return "accelc" + " tuned" * tuned + " int8" * int8 + (f" {target}" if target != first else "")


def measure(name: str, source, inputs: list[dict], args) -> dict:
    """Build for each target (untuned, and tuned with --tuned), then time every system and profile
    accelc's kernels at every batch size x thread count."""
    from accelc.capture import export as capture
    from accelc.config import resolve
    result, systems = {"model": name, "targets": args.targets, "build_s": {}, "configs": []}, {}
    for target in args.targets:
        for tuned, int8 in [(t, q) for t in ((False, True) if args.tuned else (False,))
                            for q in ((False, True) if args.int8 else (False,))]:
            built, seconds, made = build(name, source, inputs, args, target, tuned, int8)
            system = label(target, args.targets[0], tuned, int8)  # each kernel's rule as the build recorded it
            systems[system], result["build_s"][system] = (built.output, per_kernel.origins(built.manifest)), \
                round(seconds, 1)
            if tuned:  # what tuning did per kernel: shares, default and best times, which schedule won
                from accelc.backends.tvm.tune.driver import format_summary
                result.setdefault("tuning", {})[system] = built.manifest.tuning.to_json()
                print(f"\n{name}: {system} built in {seconds:.0f} s\n{format_summary(result['tuning'][system])}")
    made = recipe(name, source, inputs, args.batch)
    model = capture.build_model(resolve.load(made))
    for batch in args.batch:
        for threads in args.threads:
            _LOG.info(f"timing {name} at batch {batch}, {threads} thread(s) ...")
            result["configs"].append(measure_config(model, made, systems, batch, threads, args))
    return result


def measure_config(model, made, systems: dict[str, tuple], batch: int, threads: int, args) -> dict:
    """Every system timed on the same inputs in interleaved rounds, then each accelc build profiled."""
    import accelc
    from accelc.bench.run import compare
    from accelc.capture import export as capture
    set_threads(threads)
    inputs = list(capture.random_inputs(made.model.inputs, batch, seed=batch))
    predictors = {system: accelc.load(folder) for system, (folder, _) in systems.items()}
    callables = {system: (lambda p=p: p(*inputs)) for system, p in predictors.items()}
    rows = compare(model, inputs, callables, threads, args.calls, peers=not args.no_peers, rounds=args.rounds,
                   warmup=args.warmup)
    profiles = {}
    for system, (folder, rules) in systems.items():
        manifest = predictors[system].manifest
        profile = per_kernel.profile_kernels(predictors[system], per_kernel.function_for(manifest, batch), inputs,
                                          args.profile_repeat)
        profiles[system] = {"call_ms": profile["call_ms"], "repeat": args.profile_repeat,
                            "rows": per_kernel.breakdown(profile, rules, per_kernel.searched_kernels(manifest))}
    return {"batch": batch, "threads": threads, "rows": rows, **ratios(rows), "kernels": profiles}


def format_config(name: str, config: dict, top: int = 12) -> str:
    from accelc.bench.run import format_rows, title
    lines = [format_rows(config["rows"], title(name, config["batch"], config["threads"]))]
    if config["vs_ort"] is not None:
        lines.append(f"  accelc / ONNX Runtime: {config['vs_ort']:.2f}x")
    if config["vs_best"] is not None:
        lines.append(f"  accelc / best peer ({config['best_peer']}): {config['vs_best']:.2f}x")
    p50 = {row["system"]: row["p50_us"] for row in config["rows"] if "p50_us" in row}
    for system in (s for s in p50 if " int8" in s and s.replace(" int8", "") in p50):
        lines.append(f"  {system} speedup over {system.replace(' int8', '')}: "
                     f"{p50[system.replace(' int8', '')] / p50[system]:.2f}x")
    for label, profile in config["kernels"].items():
        lines.append(f"  {label} per kernel (VM call {profile['call_ms']:.3f} ms; each kernel and the call: "
                     f"quickest of {profile['repeat']} runs):")
        lines += kernel_table(profile["rows"], top)
    return "\n".join(lines)


def kernel_table(rows: list[dict], top: int) -> list[str]:
    """The `top` largest kernels, the others in one line, the rest of the call, and the shares by rule."""
    kernels = [r for r in rows if r["kernel"] != OUTSIDE]
    shown, rest = kernels[:top], kernels[top:]
    if rest:
        shown.append({"kernel": f"{len(rest)} other kernels", "rule": "-", "tags": [],
                      "calls": sum(r["calls"] for r in rest), "ms": sum(r["ms"] for r in rest),
                      "share": sum(r["share"] for r in rest)})
    lines = [f"    {'share':>6} {'us':>10} {'calls':>5}  {'rule':<26} {'tags':<10} kernel"]
    for row in shown + [r for r in rows if r["kernel"] == OUTSIDE]:
        lines.append(f"    {row['share']:>5.1f}% {row['ms'] * 1e3:>10.1f} {row['calls']:>5g}  {row['rule'][:26]:<26} "
                     f"{','.join(row['tags'])[:10]:<10} {row['kernel'][:60]}")
    shares = per_kernel.by_rule(rows).items()
    lines.append("    by rule: " + ", ".join(f"{rule} {share:.1f}%" for rule, share in shares))
    return lines


def markdown(results: list[dict]) -> str:
    """One table row per model x batch x threads (p50), for benchmarks/RESULTS.md: a column per
    accelc build, then the peers, the ratio and the kernel breakdown of the first build."""
    ours = [row["system"] for row in results[0]["configs"][0]["rows"] if row["system"].startswith("accelc")] \
        if results and results[0]["configs"] else ["accelc"]
    systems = ours + ["onnxruntime", "torch.compile", "pytorch eager"]
    lines = [f"| model | batch | threads | {' | '.join(systems)} | accelc ÷ ORT | accelc GFLOP/s (% of bound) "
             "| accelc's largest kernels (rule, share) |", "| --- " * (len(systems) + 6) + "|"]
    for result in results:
        for config in result["configs"]:
            rows = {row["system"]: row for row in config["rows"]}
            cells = [_ms(rows[s]["p50_us"]) if "p50_us" in rows.get(s, {}) else "skipped" for s in systems]
            first, ratio = rows.get("accelc", {}), config["vs_ort"]
            kernels = [r for r in config["kernels"]["accelc"]["rows"] if r["kernel"] != OUTSIDE][:3]
            top = "; ".join(f"{r['kernel'][:40]} ({r['rule']}, {r['share']:.0f}%)" for r in kernels)
            lines.append(f"| {result['model']} | {config['batch']} | {config['threads']} | {' | '.join(cells)} | "
                         f"{f'{ratio:.2f}×' if ratio else '-'} | "
                         f"{first.get('gflops', 0):.1f} ({first.get('bound_pct', 0):.0f}%) | {top} |")
    return "\n".join(lines)


def _ms(us: float) -> str:
    return f"{us / 1e3:.1f} ms" if us >= 1e4 else f"{us / 1e3:.3f} ms"


def machine() -> str:
    """CPU model, whether it has AVX-512 / VNNI, logical CPUs and the load average."""
    from accelc.config.host_cpu import cpu_flags
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    flags = cpu_flags()
    isa = ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in
                    (("AVX2", "avx2"), ("FMA", "fma"), ("AVX-512", "avx512f"), ("VNNI", "avx512_vnni")))
    return f"{model}, {os.cpu_count()} logical CPUs; {isa}; load average {os.getloadavg()[0]:.2f}"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help=f"comma-separated, of {', '.join(FULL)} (default: all), or with "
                        "--families of the family suite")
    parser.add_argument("--families", action="store_true", help="the small family suite (tests/fixtures/families.py)")
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes (e.g. 1,8)")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts; 'all' is every CPU")
    parser.add_argument("--target", default="x86", help="comma-separated accelc targets, each a system of its own "
                        "(x86: AVX2; x86-avx512 where the CPU has it); ratios are of the first")
    parser.add_argument("--tuned", action="store_true", help="also a MetaSchedule-tuned build (takes long)")
    parser.add_argument("--int8", action="store_true", help="also an int8 build of each (INT8: static ResNet-50, "
                        "dynamic BERT/ViT), timed against the same recipe in float32")
    parser.add_argument("--no-peers", action="store_true", help="time accelc's builds only")
    parser.add_argument("--trials", type=int, default=512, help="tuning trials per model (with --tuned)")
    parser.add_argument("--time-budget", type=float, default=600, help="tuning seconds per model (with --tuned)")
    parser.add_argument("--database", default="build/bench-models/tuning",
                        help="tuning database, relative to the repository (with --tuned)")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per system (split over the rounds)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median round is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per system before the first round")
    parser.add_argument("--profile-repeat", type=int, default=5, help="timings per kernel (the quickest counts) "
                        "in the profile")
    parser.add_argument("--out", default=str(ROOT / "build" / "bench-models"), help="where the artifacts go")
    parser.add_argument("--json", help="write every row and kernel as JSON here")
    args = parser.parse_args(argv)
    args.batch, args.targets = [int(b) for b in args.batch.split(",")], args.target.split(",")
    cpus = len(os.sched_getaffinity(0))
    args.threads = [cpus if t == "all" else int(t) for t in args.threads.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    from accelc.errors import AccelcError
    args = parse(argv)
    args.out, args.json = Path(args.out).resolve(), args.json and Path(args.json).resolve()
    os.chdir(ROOT)  # the Recipes made here resolve entrypoints and the tuning database from the repository
    thread_pool(max(args.threads))
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)  # builds: only problems
    _LOG.setLevel(logging.INFO)  # progress
    table = families() if args.families else FULL
    unknown = [name for name in (args.models or "").split(",") if name and name not in table]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(table)}", file=sys.stderr)
        return 2
    chosen = {name: table[name] for name in (args.models.split(",") if args.models else table)}
    print(f"machine: {machine()}\ncommand: python benchmarks/models.py {' '.join(argv or sys.argv[1:])}")
    results = []
    for name, (source, inputs) in chosen.items():
        _LOG.info(f"building {name} for {', '.join(args.targets)} at batch {args.batch} ...")
        try:
            result = measure(name, source, inputs, args)
        except AccelcError as exc:  # one model that does not build is a row of the report, not the end
            print(f"\n{name}: not measured: {exc.code}: {str(exc).splitlines()[0][:200]}")
            continue
        results.append(result)
        print(f"\n{name}: built in {result['build_s']} s")
        for config in result["configs"]:
            print(format_config(name, config))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}\n\n{markdown(results)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
