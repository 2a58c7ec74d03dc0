"""`accelc build RECIPE`: compile a recipe into a verified artifact (progress on stderr)."""
from __future__ import annotations

import argparse

from accelc.errors import EXIT_OK, EXIT_VERIFY_FAILED


def add_arguments(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("build", help="compile a recipe into a verified artifact")
    p.add_argument("recipe")
    p.add_argument("--target", help="target name or alias (overrides the recipe)")
    p.add_argument("--output", help="artifact directory (overrides the recipe)")
    p.add_argument("--no-cache", action="store_true", help="build even if these inputs were built before")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from accelc import build
    result = build(args.recipe, args.target, output=args.output, cache=not args.no_cache)
    return EXIT_OK if result.report["status"] != "failed" else EXIT_VERIFY_FAILED
