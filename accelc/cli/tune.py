"""`accelc tune RECIPE`: spend a recipe's tuning budget into its database (no artifact);
`accelc tune --merge DB... -o OUT`: merge tuning databases."""
from __future__ import annotations

import argparse
from pathlib import Path

from accelc.errors import EXIT_OK, TuningError


def add_arguments(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tune", help="tune a recipe's kernels into the tuning database (no artifact), or merge "
                              "databases")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("recipe", nargs="?", help="recipe whose tuning budget to spend")
    which.add_argument("--merge", nargs="+", metavar="DB", help="tuning databases to merge into -o OUT")
    p.add_argument("-o", "--output", help="with --merge: the database to merge into (created if absent)")
    p.add_argument("--target", help="target name or alias (overrides the recipe)")
    p.add_argument("--resume", action="store_true", help="top kernels up to their budget (records already in the "
                   "database count) instead of spending the whole budget again")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.merge:
        if not args.output:
            raise TuningError("--merge needs -o OUT, the database to merge into", code="E617")
        from accelc.backends.tvm.tune import database as tune_db
        tune_db.merge([Path(p) for p in args.merge], Path(args.output))
        return EXIT_OK
    from accelc import tune
    tune(args.recipe, args.target, resume=args.resume)
    return EXIT_OK
