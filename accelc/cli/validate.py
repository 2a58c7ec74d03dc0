"""`accelc validate RECIPE...`: check recipes (and their targets) without building."""
from __future__ import annotations

import argparse
import json
import sys

from accelc.errors import EXIT_OK, EXIT_USER_ERROR, AccelcError


def add_arguments(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("validate", help="check recipes without building")
    p.add_argument("recipes", nargs="+")
    p.add_argument("--target", help="target name or alias (overrides the recipes')")
    p.add_argument("--json", action="store_true", help="one result per recipe as JSON on stdout")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from accelc.config import resolve
    results, code = [], EXIT_OK
    for path in args.recipes:
        try:
            resolve.recipe_and_target(path, args.target)
        except AccelcError as exc:  # every recipe is checked: report this one and go on
            code = EXIT_USER_ERROR
            results.append({"recipe": path, "ok": False, "errors": [p.__dict__ for p in exc.problems]})
            if not args.json:
                print(exc.format(), file=sys.stderr)
            continue
        results.append({"recipe": path, "ok": True, "errors": []})
        if not args.json:
            print(f"{path}: ok")
    if args.json:
        print(json.dumps(results, indent=2))
    return code
