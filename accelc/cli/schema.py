"""`accelc schema`: the recipe JSON Schema, for editors."""
from __future__ import annotations

import argparse
import json

from accelc.errors import EXIT_OK


def add_arguments(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("schema", help="print the recipe JSON Schema (for editors)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from accelc.config.recipe import json_schema
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK
