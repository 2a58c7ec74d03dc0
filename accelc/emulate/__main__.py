"""python -m accelc.emulate setup [--root DIR] [--force]"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from accelc.emulate.root import root_dir, setup
from accelc.errors import AccelcError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accelc.emulate", description="Set up the cached arm64 root that verifies ARM artifacts under emulation.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="make the cached arm64 emulation root (once)")
    p.add_argument("--root", type=Path, help=f"where (default {root_dir()})")
    p.add_argument("--force", action="store_true", help="rebuild it even if it is ready")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # progress on stderr
    try:
        setup(root=args.root, force=args.force)
    except AccelcError as exc:
        print(exc.format(), file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
