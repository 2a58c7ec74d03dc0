"""Where one call of an artifact spends its time, kernel by kernel: the time of each compiled kernel,
the rule that scheduled it and the model code it computes (the manifest's `kernels`, recorded by
the build), and the rest of the call outside the kernels. `accelc profile` and
benchmarks/models.py print it.
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from accelc.artifact.manifest import Manifest

SEARCHED = "MetaSchedule record"  # as backends/tvm/kernel_map.py records it
OUTSIDE = "rest of the call (VM builtins, interpreter, colder caches)"
_LAYER = re.compile(r"(?<=\.)\d+(?=\.|$)")  # a layer number in a module path: encoder.layer.3.output


def sample_inputs(manifest: Manifest, batch: int | None) -> list[np.ndarray]:
    """Seeded inputs of the stored recipe's input spec, as `accelc bench` makes them (seed = batch),
    with ids inside the ranges the build found (the runtime refuses others) and named dimensions
    (seq) at their largest bucket: the size a deployment is sized for."""
    from accelc.capture import export as capture
    from accelc.config import recipe as recipe_mod
    from accelc.config import yamlio
    stored = manifest.recipe
    recipe = recipe_mod.parse(yamlio.load_text(stored.text, f"{stored.path} (as stored in the manifest)"))
    ranges = {spec.name: spec.range for spec in manifest.inputs if spec.range is not None}
    sizes = capture.largest_sizes(capture.specs_dims(recipe.model.inputs), recipe.model.dims)
    return list(capture.random_inputs(recipe.model.inputs, batch or 1, seed=batch or 1, ranges=ranges, sizes=sizes))


def function_for(manifest: Manifest, batch: int | None) -> str | None:
    """The VM function of a built batch size (with named dimensions: its largest bucket, what
    sample_inputs makes; without a batch dimension: the one function); None when not built."""
    batches = {key.split(",")[0] for key in manifest.functions}
    wanted = "None" if batches == {"None"} else str(batch)
    found = [name for key, name in manifest.functions.items() if key.split(",")[0] == wanted]
    return found[-1] if found else None


def profile_kernels(predictor, function: str, inputs: list[np.ndarray], repeat: int = 5) -> dict:
    """Seconds per kernel in one call of the artifact's VM `function`. The kernel calls of one
    inference are recorded through the Relax VM's instrument hook (TVM 0.27 has no VM profiler),
    then each is timed again on its own arguments by TVM's time evaluator, in C++: a Python timer
    around each call would add ~5 us, more than whole kernels of small models. Each kernel counts
    its quickest of `repeat` runs of at least 2 ms (a busy neighbour only ever adds time). The
    call itself, timed without the hook, holds the rest: the VM's builtins (allocation, shape
    checks), its interpreter, and what kernels lose in sequence to caches their predecessors
    filled (timed alone, they find theirs warm)."""
    import tvm
    from tvm.runtime.vm import VirtualMachine
    library, weights = predictor.library()
    vm = VirtualMachine(library, predictor.device)  # its own: the instrument stays on it
    run, args = vm[function], [tvm.runtime.tensor(a, predictor.device) for a in inputs]
    run(*args, *weights)
    plain = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(*args, *weights)
        plain.append(time.perf_counter() - start)
    calls: list[tuple] = []

    def record(func, symbol, before, _ret, *call_args):
        if before and not str(symbol).startswith("vm.builtin."):
            calls.append((str(symbol), func, call_args))
        return 0
    vm.set_instrument(record)
    run(*args, *weights)  # replaying the calls in order later sees the same values in every buffer
    spent: dict[str, list] = {}  # symbol -> [seconds, calls]
    for symbol, func, call_args in calls:
        entry = spent.setdefault(symbol, [0.0, 0])
        seconds = kernel_seconds(library, symbol, func, call_args, repeat, predictor.device)
        entry[0], entry[1] = entry[0] + seconds, entry[1] + 1
    return {"call_ms": min(plain) * 1e3, "spent": {k: tuple(v) for k, v in spent.items()}}


def kernel_seconds(library, symbol: str, func, args: tuple, repeat: int, device=None) -> float:
    """One kernel call's quickest time: TVM's time evaluator on the module that holds the kernel (the
    library's top module is the VM executable), else a Python timer (a function of no module)."""
    import tvm
    holder = next((m for m in library.imports if m.implements_function(symbol)), None)
    if holder is not None:
        timer = holder.time_evaluator(symbol, device or tvm.cpu(), repeat=repeat, min_repeat_ms=2)
        return min(timer(*args).results)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def origins(manifest: Manifest) -> dict[str, dict]:
    """kernel -> {rule, tags, nodes, ops, modules, sources} as the build recorded them; empty for
    an artifact built before they were recorded."""
    return {k.kernel: k.to_json() for k in manifest.kernels or ()}


def searched_kernels(manifest: Manifest) -> set[str]:
    """Kernels of a tuned build that run a schedule MetaSchedule found (not the default rule's)."""
    rows = manifest.tuning.kernels or ()
    return {row.kernel for row in rows if row.status in ("tuned", "reused") and row.schedule == "searched"}


def breakdown(profile: dict, kernels: dict[str, dict], searched: set[str] = frozenset()) -> list[dict]:
    """Rows {kernel, rule, tags, modules, sources, calls, ms, share} by time ("-" where the build
    recorded nothing of a kernel), and a last row for the time outside the kernels: the shares add
    up to 100% of the call (or of the kernels' sum, where timing them one by one came out above
    the call)."""
    rows = []
    for symbol, (seconds, count) in profile["spent"].items():
        known = kernels.get(symbol, {})
        rows.append({"kernel": symbol, "rule": SEARCHED if symbol in searched else known.get("rule", "-"),
                     "tags": list(known.get("tags", [])), "modules": list(known.get("modules", [])),
                     "sources": list(known.get("sources", [])), "calls": count, "ms": seconds * 1e3})
    rows.sort(key=lambda row: -row["ms"])
    inside = sum(row["ms"] for row in rows)
    rows.append({"kernel": OUTSIDE, "rule": "-", "tags": [], "modules": [], "sources": [], "calls": 0,
                 "ms": max(0.0, profile["call_ms"] - inside)})
    whole = max(profile["call_ms"], inside)
    for row in rows:
        row["share"] = 100 * row["ms"] / whole if whole > 0 else 0.0
    return rows


def by_rule(rows: list[dict]) -> dict[str, float]:
    """Share of the profiled call per rule, largest first."""
    shares: dict[str, float] = {}
    for row in rows:
        label = row["rule"] if row["kernel"] != OUTSIDE else "rest of the call"
        shares[label] = shares.get(label, 0.0) + row["share"]
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def top(rows: list[dict], count: int) -> list[dict]:
    """The `count` largest kernels, the others in one row, and the row outside the kernels."""
    kernels = [r for r in rows if r["kernel"] != OUTSIDE]
    shown, rest = kernels[:count], kernels[count:]
    if rest:
        shown.append({"kernel": f"{len(rest)} other kernels", "rule": "-", "tags": [], "modules": [],
                      "sources": [], "calls": sum(r["calls"] for r in rest), "ms": sum(r["ms"] for r in rest),
                      "share": sum(r["share"] for r in rest)})
    return shown + [r for r in rows if r["kernel"] == OUTSIDE]


def summarize(paths: Sequence[str], width: int = 60) -> str:
    """Module paths in one line, those that differ only in layer numbers as one when they cover
    every combination ("encoder.layer.{0-11}.output.dense"); "-" for none."""
    groups: dict[str, list[tuple[str, ...]]] = {}
    for path in paths:
        groups.setdefault(_LAYER.sub("#", path), []).append(tuple(_LAYER.findall(path)))
    parts = []
    for template, numbers in groups.items():
        columns = [sorted(set(column), key=int) for column in zip(*numbers)]
        if len(set(numbers)) == np.prod([len(c) for c in columns], dtype=int):
            pieces = template.split("#")
            parts.append(pieces[0] + "".join(_span(c) + piece for c, piece in zip(columns, pieces[1:])))
        else:
            parts += [template.replace("#", "{}").format(*n) for n in dict.fromkeys(numbers)]
    siblings: dict[str, list[str]] = {}  # "parent." -> last parts: "attention.self.{query,key,value}"
    for part in parts:
        parent, dot, last = part.rpartition(".")
        siblings.setdefault(parent + dot, []).append(last)
    merged = [name for parent, last in siblings.items() for name in (
        last if not parent else [parent + (last[0] if len(last) == 1 else f"{{{','.join(last)}}}")])]
    text = ", ".join(merged) or "-"
    more = f" ... ({len(paths)} modules)"
    return text if len(text) <= width else text[:width - len(more)].rstrip(", ") + more


def _span(values: list[str]) -> str:
    if len(values) == 1:
        return values[0]
    ints = [int(v) for v in values]
    contiguous = ints == list(range(ints[0], ints[-1] + 1))
    return f"{{{ints[0]}-{ints[-1]}}}" if contiguous else "{" + ",".join(values) + "}"


def plot(rows: list[dict], path: Path, title: str) -> str | None:
    """The rows as a horizontal bar chart of shares (PNG); None, or a note when matplotlib is
    missing (as `accelc bench --plot`: a note, not an error)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install 'accelc[bench]')"
    labels = [f"{r['kernel'][:40]}  [{summarize(r['modules'], 50)}]" if r["modules"] else r["kernel"][:60]
              for r in rows]
    figure, axes = plt.subplots(figsize=(10, 1.2 + 0.32 * len(rows)))
    axes.barh(range(len(rows)), [r["share"] for r in rows], color="tab:blue")
    axes.set_yticks(range(len(rows)), labels, fontsize=8)
    axes.invert_yaxis()  # the largest first, at the top
    for i, row in enumerate(rows):
        us = row["ms"] * 1e3
        axes.annotate(f"{us:.{2 if us < 10 else 1}f} us", (row["share"], i), xytext=(3, 0),
                      textcoords="offset points", va="center", fontsize=7)
    axes.set(xlabel="share of one call (%)", title=title, xlim=(0, 1.15 * max([r["share"] for r in rows] + [1])))
    axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return None
