"""`accelc bench PATH`: time an artifact (or a recipe, built first) against PyTorch, torch.compile
and ONNX Runtime; the tables on stdout, progress on stderr."""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

from accelc.cli.common import batch_sizes, output_file, positive
from accelc.errors import EXIT_OK


def add_arguments(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="time an artifact (or a recipe, built first) against PyTorch, "
                              "torch.compile and ONNX Runtime")
    p.add_argument("path", help="recipe file or artifact directory")
    p.add_argument("--batch", type=batch_sizes, metavar="SIZES",
                   help="comma-separated batch sizes (default: the artifact's)")
    p.add_argument("--threads", type=positive, default=1, metavar="N", help="threads for every system (default 1)")
    p.add_argument("--calls", type=positive, default=2000, metavar="N",
                   help="timed calls per system and batch (after warm-up)")
    p.add_argument("--rounds", type=positive, default=5,
                   help="the systems take turns in this many rounds (median of the rounds; default 5)")
    p.add_argument("--json", type=output_file, metavar="FILE", help="write the results as JSON here")
    p.add_argument("--plot", type=output_file, metavar="FILE", help="write a PNG of latency vs batch size here")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from accelc.bench import run as bench
    target = Path(args.path)
    with contextlib.ExitStack() as scratch:
        if target.is_file():  # a recipe: build it first, into a temporary artifact removed when done
            from accelc import build
            folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="accelc-bench-")))
            target = build(target, output=folder / "artifact").output
        results = bench.bench_artifact(target, args.batch, args.threads, args.calls, rounds=args.rounds)
    if results["batches"]:
        print(bench.format_results(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        note = bench.plot(results, Path(args.plot))
        print(note or f"plot: {args.plot}")
    return EXIT_OK
