"""`accelc verify ARTIFACT`: re-run an artifact's verification by the build's contract (against the
rewritten graph and the original eager model)."""
from __future__ import annotations

import argparse
from pathlib import Path

from accelc.cli.common import positive
from accelc.errors import EXIT_OK, EXIT_VERIFY_FAILED


def add_arguments(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("verify", help="re-run an artifact's verification")
    p.add_argument("artifact")
    p.add_argument("--samples", type=positive, help="sample batches per batch size (default: the recipe's)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from accelc.verify.artifact_check import reverify
    from accelc.verify.compare import failures, format_report
    report = reverify(Path(args.artifact), samples=args.samples)
    print(format_report(report))
    for line in failures(report) if report["status"] == "failed" else []:
        print(f"  {line}")
    return {"passed": EXIT_OK, "failed": EXIT_VERIFY_FAILED}.get(report["status"], EXIT_OK)
