"""`accelc profile ARTIFACT`: where one call of an artifact spends its time, kernel by kernel, with
the rule that scheduled each kernel and the model modules and source lines it computes."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from accelc.cli.common import output_file, positive, table
from accelc.errors import EXIT_OK, InputError


def add_arguments(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("profile", help="time each compiled kernel of an artifact and show the rule and "
                              "model modules behind it")
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--batch", type=positive, metavar="N", help="a built batch size (default: the smallest)")
    p.add_argument("--calls", type=positive, default=5, metavar="N",
                   help="timed runs of the call and of each kernel, the quickest counts (default 5)")
    p.add_argument("--threads", type=positive, metavar="N", help="threads for TVM's parallel loops "
                   "(default: TVM's own, half the CPUs)")
    p.add_argument("--top", type=positive, default=15, metavar="N",
                   help="kernels shown one by one, the others in one row (default 15)")
    p.add_argument("--png", type=output_file, metavar="FILE", help="write a bar chart of the shares here")
    p.add_argument("--json", action="store_true", help="print every kernel as JSON on stdout, nothing else")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    from accelc.bench import kernels
    from accelc.runtime import predictor as runtime
    folder = Path(args.artifact)
    predictor = runtime.load(folder)  # E700-E712: no artifact, a bad manifest, modified files, another target
    manifest = predictor.manifest
    batch = args.batch or (min(manifest.batch) if manifest.batch else None)
    function = kernels.function_for(manifest, batch)
    if function is None:
        built = ", ".join(map(str, manifest.batch))
        raise InputError(f"batch size {batch} was not built; this artifact has {built}", code="E804",
                         field="--batch", hint=f"profile one of {built}")
    profile = kernels.profile_kernels(predictor, function, kernels.sample_inputs(manifest, batch), args.calls)
    rows = kernels.breakdown(profile, kernels.origins(manifest), kernels.searched_kernels(manifest))
    result = {"artifact": str(folder), "name": manifest.name, "batch": batch, "function": function,
              "call_ms": profile["call_ms"], "calls": args.calls, "recorded": manifest.kernels is not None,
              "rows": rows, "by_rule": kernels.by_rule(rows)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result, args.top)
    if args.png:
        title = f"{manifest.name}, batch {batch}: {profile['call_ms'] * 1e3:.1f} us a call"
        note = kernels.plot(kernels.top(rows, args.top), Path(args.png), title)
        print(note or f"chart: {args.png}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK


def print_table(result: dict, count: int) -> None:
    from accelc.bench import kernels
    print(f"{result['name']} at batch {result['batch']} ({result['function']}): {result['call_ms'] * 1e3:.1f} us a "
          f"call; each kernel and the call: the quickest of {result['calls']} runs")
    rows = kernels.top(result["rows"], count)
    table(["share", "us", "calls", "kernel", "rule", "tags", "modules", "source"],
          [(f"{r['share']:5.1f}%", _us(r["ms"]), r["calls"] or "", _kernel(r["kernel"]), r["rule"],
            ",".join(r["tags"]) or "-", kernels.summarize(r["modules"], 72) if r["modules"] else "-",
            _sources(r["sources"])) for r in rows])
    print("by rule: " + ", ".join(f"{rule} {share:.1f}%" for rule, share in result["by_rule"].items()))
    if not result["recorded"]:
        print("this artifact was built before accelc recorded kernel origins: rebuild it to see the rules "
              "and modules")


def _us(ms: float) -> str:
    return f"{ms * 1e3:.2f}" if ms < 0.01 else f"{ms * 1e3:.1f}"


def _kernel(name: str) -> str:
    from accelc.bench.kernels import OUTSIDE
    return name if name == OUTSIDE or len(name) <= 48 else name[:45] + "..."


def _sources(sources: list[str]) -> str:
    """file:line, file:line2 -> file:line,line2 (the first file's lines), '-' for none."""
    if not sources:
        return "-"
    file = sources[0].rsplit(":", 1)[0]
    lines = [s.rsplit(":", 1)[1] for s in sources if s.rsplit(":", 1)[0] == file]
    more = len(sources) - len(lines)
    return f"{Path(file).name}:{','.join(lines[:4])}{'...' if len(lines) > 4 else ''}" + (f" +{more}" if more else "")
