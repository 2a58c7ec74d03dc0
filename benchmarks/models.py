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

import numpy as np  # noqa: E402
import yaml  # noqa: E402

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
NAIVE = "none (TVM's naive loops)"
SEARCHED = "MetaSchedule record"
OUTSIDE = "rest of the call (VM builtins, interpreter, colder caches)"
PEERS = ("onnxruntime", "torch.compile", "pytorch eager")
_LOG = logging.getLogger("benchmarks.models")


def families() -> dict[str, tuple]:
    """The family suite in FULL's shape (tests/fixtures/families.py holds YAML flow strings)."""
    from tests.fixtures.families import FAMILIES
    return {name: (source, [yaml.safe_load(spec) for spec in inputs]) for name, (source, inputs, _) in FAMILIES.items()}


def recipe(name: str, source: dict | str, inputs: list[dict], batches: list[int], tuning: dict | None = None):
    """An accelc.Recipe: random weights for a Hugging Face source, one verification sample per size."""
    import accelc
    model = {"entrypoint": source} if isinstance(source, str) else {"huggingface": {**source, "random_weights": True}}
    data = {"version": 1, "name": name, "model": {**model, "inputs": inputs, "batch": sorted(set(batches))},
            "verify": {"samples": 1}}
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


def rule_label(rule) -> str:
    inner = getattr(rule, "rule", None)  # Tolerant(...) wraps one of TVM's own rules
    return f"{type(rule).__name__}({type(inner).__name__})" if inner is not None else type(rule).__name__


def kernel_rules(loaded_recipe, target: str) -> dict[str, dict]:
    """kernel name -> {rule, tags}: the build's kernels (legalized and fused as its pipeline does,
    same names as the library's symbols) and the rule of RULES that gives each its default schedule."""
    import tvm

    from accelc import compile as compile_mod
    from accelc.backends.tvm import intrin
    from accelc.backends.tvm.kernels import isa
    from accelc.backends.tvm.pipeline import fusion_passes
    from accelc.backends.tvm.schedules import choose
    from accelc.backends.tvm.schedules.rule import kernel_tags
    from accelc.config import resolve
    loaded, spec = resolve.recipe_and_target(loaded_recipe, target)
    lowered = compile_mod._lower(loaded, spec, lambda *_: None, None)[-1]
    tvm_target = spec.tvm_target()
    intrin.register_for(isa.of(tvm_target))  # as the pipeline does before its rules run
    with tvm_target:
        fused = tvm.transform.Sequential(fusion_passes(tvm_target))(lowered.mod)
    rules = {}
    for var, func in fused.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            chosen = choose(func, tvm_target)
            rules[var.name_hint] = {"rule": rule_label(chosen[0]) if chosen else NAIVE,
                                    "tags": sorted(set(kernel_tags(func)) - {""})}
    return rules


def searched_kernels(manifest) -> set[str]:
    """Kernels of a tuned build that run a schedule MetaSchedule found (not the default rule's)."""
    rows = manifest.tuning.kernels or ()
    return {row.kernel for row in rows if row.status in ("tuned", "reused") and row.schedule == "searched"}


def profile_kernels(folder: Path, batch: int, inputs: list[np.ndarray], repeat: int = 5) -> dict:
    """Seconds per kernel in one call of the artifact's function for `batch`. The kernel calls of
    one inference are recorded through the Relax VM's instrument hook (TVM 0.27 has no VM
    profiler), then each is timed again on its own arguments by TVM's time evaluator, in C++: a
    Python timer around each call would add ~5 us, more than whole kernels of small models. Each
    kernel counts its quickest of `repeat` runs of at least 2 ms (a busy neighbour only ever adds
    time). The call itself, timed without the hook, holds the rest: the VM's builtins (allocation,
    shape checks), its interpreter, and what kernels lose in sequence to caches their predecessors
    filled (timed alone, they find theirs warm)."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from accelc.artifact import store as artifact
    manifest = artifact.load_manifest(folder)
    library = tvm.runtime.load_module(str(folder / artifact.LIBRARY))
    vm = VirtualMachine(library, tvm.cpu())
    params = tvm.runtime.load_param_dict((folder / artifact.PARAMS).read_bytes())
    weights = list(vm["transform_params"]([tvm.runtime.tensor(params[n].numpy()) for n in manifest.params])) \
        if manifest.params else []
    function, args = vm[manifest.by_batch[batch]], [tvm.runtime.tensor(a) for a in inputs]
    function(*args, *weights)
    plain = []
    for _ in range(repeat):
        start = time.perf_counter()
        function(*args, *weights)
        plain.append(time.perf_counter() - start)
    calls: list[tuple] = []

    def record(func, symbol, before, _ret, *call_args):
        if before and not str(symbol).startswith("vm.builtin."):
            calls.append((str(symbol), func, call_args))
        return 0
    vm.set_instrument(record)
    function(*args, *weights)  # replaying the calls in order later sees the same values in every buffer
    spent: dict[str, list] = {}  # symbol -> [seconds, calls]
    for symbol, func, call_args in calls:
        entry = spent.setdefault(symbol, [0.0, 0])
        entry[0], entry[1] = entry[0] + kernel_seconds(library, symbol, func, call_args, repeat), entry[1] + 1
    return {"call_ms": min(plain) * 1e3, "spent": {k: tuple(v) for k, v in spent.items()}}


def kernel_seconds(library, symbol: str, func, args: tuple, repeat: int) -> float:
    """One kernel call's quickest time: TVM's time evaluator on the module that holds the kernel (the
    library's top module is the VM executable), else a Python timer (a function of no module)."""
    import tvm
    holder = next((m for m in library.imports if m.implements_function(symbol)), None)
    if holder is not None:
        return min(holder.time_evaluator(symbol, tvm.cpu(), repeat=repeat, min_repeat_ms=2)(*args).results)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def breakdown(profile: dict, rules: dict[str, dict], searched: set[str] = frozenset()) -> list[dict]:
    """Rows {kernel, rule, tags, calls, ms, share} by time, and a last row for the time outside the
    kernels: the shares add up to 100% of the call (or of the kernels' sum, where timing them one
    by one came out above the call)."""
    rows = []
    for symbol, (seconds, count) in profile["spent"].items():
        known = rules.get(symbol, {"rule": "?", "tags": []})
        rows.append({"kernel": symbol, "rule": SEARCHED if symbol in searched else known["rule"],
                     "tags": known["tags"], "calls": count, "ms": seconds * 1e3})
    rows.sort(key=lambda row: -row["ms"])
    inside = sum(row["ms"] for row in rows)
    rows.append({"kernel": OUTSIDE, "rule": "-", "tags": [], "calls": 0, "ms": max(0.0, profile["call_ms"] - inside)})
    whole = max(profile["call_ms"], inside)
    for row in rows:
        row["share"] = 100 * row["ms"] / whole if whole > 0 else 0.0
    return rows


def by_rule(rows: list[dict]) -> dict[str, float]:
    """Share of the profiled call per rule, largest first."""
    shares: dict[str, float] = {}
    for row in rows:
        label = row["rule"] if row["rule"] != "-" else "rest of the call"
        shares[label] = shares.get(label, 0.0) + row["share"]
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def ratios(rows: list[dict]) -> dict:
    """accelc's p50 over ONNX Runtime's and over the best peer's (None where a peer was skipped)."""
    p50 = {row["system"]: row["p50_us"] for row in rows if "p50_us" in row}
    ours = p50.get("accelc")
    peers = [name for name in PEERS if name in p50]
    best = min(peers, key=p50.get) if peers else None
    return {"vs_ort": ours / p50["onnxruntime"] if ours and "onnxruntime" in p50 else None,
            "best_peer": best, "vs_best": ours / p50[best] if ours and best else None}


def build(name: str, source, inputs: list[dict], args, target: str, tuned: bool = False):
    """(BuildResult, seconds, the Recipe) of one model for `target` at all of `args.batch`."""
    import accelc
    tuning = {"trials": args.trials, "time_budget": args.time_budget, "database": args.database} if tuned else None
    made = recipe(name, source, inputs, args.batch, tuning)
    start = time.perf_counter()
    built = accelc.build(made, target=target, output=Path(args.out) / f"{name}-{target}{'-tuned' * tuned}")
    return built, time.perf_counter() - start, made


def label(target: str, first: str, tuned: bool) -> str:
    """The system's name: "accelc" for the first target (the one the ratios are of)."""
    return "accelc" + " tuned" * tuned + (f" {target}" if target != first else "")


def measure(name: str, source, inputs: list[dict], args) -> dict:
    """Build for each target (untuned, and tuned with --tuned), then time every system and profile
    accelc's kernels at every batch size x thread count."""
    from accelc.capture import export as capture
    from accelc.config import resolve
    result, systems = {"model": name, "targets": args.targets, "build_s": {}, "configs": []}, {}
    for target in args.targets:
        rules = None
        for tuned in (False, True) if args.tuned else (False,):
            built, seconds, made = build(name, source, inputs, args, target, tuned)
            rules = rules or kernel_rules(made, target)
            system = label(target, args.targets[0], tuned)
            systems[system], result["build_s"][system] = (built.output, rules), round(seconds, 1)
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
    from accelc.artifact import store as artifact
    from accelc.bench.run import compare
    from accelc.capture import export as capture
    set_threads(threads)
    inputs = list(capture.random_inputs(made.model.inputs, batch, seed=batch))
    predictors = {system: accelc.load(folder) for system, (folder, _) in systems.items()}
    callables = {system: (lambda p=p: p(*inputs)) for system, p in predictors.items()}
    rows = compare(model, inputs, callables, threads, args.calls, rounds=args.rounds, warmup=args.warmup)
    kernels = {}
    for system, (folder, rules) in systems.items():
        profile = profile_kernels(folder, batch, inputs, args.profile_repeat)
        kernels[system] = {"call_ms": profile["call_ms"], "repeat": args.profile_repeat,
                           "rows": breakdown(profile, rules, searched_kernels(artifact.load_manifest(folder)))}
    return {"batch": batch, "threads": threads, "rows": rows, **ratios(rows), "kernels": kernels}


def format_config(name: str, config: dict, top: int = 12) -> str:
    from accelc.bench.run import format_rows, title
    lines = [format_rows(config["rows"], title(name, config["batch"], config["threads"]))]
    if config["vs_ort"] is not None:
        lines.append(f"  accelc / ONNX Runtime: {config['vs_ort']:.2f}x")
    if config["vs_best"] is not None:
        lines.append(f"  accelc / best peer ({config['best_peer']}): {config['vs_best']:.2f}x")
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
    lines.append("    by rule: " + ", ".join(f"{rule} {share:.1f}%" for rule, share in by_rule(rows).items()))
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
