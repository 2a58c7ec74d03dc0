"""`accelc inspect ARTIFACT`: an artifact's manifest, as a table or as JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from accelc.artifact.manifest import Manifest, Tuning
from accelc.cli.common import table
from accelc.errors import EXIT_OK


def add_arguments(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help="print an artifact's manifest")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true", help="the whole manifest as JSON on stdout")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from accelc.artifact.store import MANIFEST, verified_manifest
    raw = verified_manifest(Path(args.artifact))
    manifest = Manifest.from_json(raw, str(Path(args.artifact) / MANIFEST))  # E701 naming a malformed field
    if args.json:
        print(json.dumps(raw, indent=2))
        return EXIT_OK
    table(["field", "value"], manifest_rows(manifest))
    return EXIT_OK


def manifest_rows(manifest: Manifest) -> list[tuple]:
    target = manifest.target
    return [("name", manifest.name), ("target", f"{target.name} ({target.device}, {target.arch})"),
            ("batch", list(manifest.batch)),
            *((f"input {i.name}", f"{list(i.shape)} {i.dtype}") for i in manifest.inputs),
            *((f"output {o.name}", f"{list(o.shape)} {o.dtype}") for o in manifest.outputs),
            ("parameters", f"{len(manifest.params)} tensors, {manifest.param_bytes:,} bytes"),
            ("passes", ", ".join(p.kind for p in manifest.passes) or "none"),
            ("verification", manifest.verification.status),
            ("tuning", tuning_text(manifest.tuning)),
            ("recipe sha256", manifest.recipe.sha256[:16]),
            *((f"version {k}", v) for k, v in manifest.versions.to_json().items()),
            *((f"file {k}", v[:16]) for k, v in manifest.files.items())]


def tuning_text(tuning: Tuning) -> str:
    if not tuning.tasks:
        return "untuned (default schedules)"
    return (f"{tuning.tuned_tasks}/{tuning.tasks} kernels tuned, {tuning.defaulted_tasks} on default "
            f"schedules ({tuning.trials} new trials)")
