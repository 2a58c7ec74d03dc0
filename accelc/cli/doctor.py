"""`accelc doctor`: which targets this machine can build and verify, and what is missing."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from accelc.errors import EXIT_OK


def add_arguments(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("doctor", help="which targets can be built and verified here, and what is missing")
    p.add_argument("--setup-arm", action="store_true", help="first make the arm64 emulation root (once, cached)")
    p.add_argument("--force", action="store_true", help="with --setup-arm: rebuild the root even if it is ready")
    p.add_argument("--json", action="store_true", help="the findings as JSON on stdout")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from accelc import doctor, emulate
    if args.setup_arm:
        emulate.setup(force=args.force)
    findings = doctor.report(Path.cwd())
    print(json.dumps(doctor.as_json(findings), indent=2) if args.json else doctor.format_findings(findings))
    return EXIT_OK
