"""Coverage matrix (issue #19): every family of the suite (tests/fixtures/families.py) built and
verified by accelc in float32, in each int8 mode (dynamic, static, weight-only) and, with --arm, in
float32 for aarch64 verified under user-mode emulation. Prints the README's table: each cell is the
build's outcome (verified, with its largest error against the reference; or the coded error).

    python benchmarks/family_matrix.py [--families bert,resnet] [--arm] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/family_matrix.py`: accelc and tests.fixtures from this checkout
    sys.path.insert(0, str(ROOT))

from accelc import compile as compile_mod  # noqa: E402
from accelc.errors import AccelcError  # noqa: E402
from tests.fixtures.families import FAMILIES, MODES, quantize, recipe  # noqa: E402
from tests.fixtures.helpers import make_repo, write_recipe  # noqa: E402

COLUMNS = ("fp32", *MODES)


def build_cell(repo: Path, family: str, column: str, target: str | None = None) -> dict:
    """One build: its outcome, seconds, the worst error row and (int8) how many layers went int8."""
    passes = "[]" if column == "fp32" else quantize(family, column)
    tag = f"{family}-{column}-{target or 'x86'}"
    path = write_recipe(repo, recipe(family, "[2]", passes), f"{tag}.yaml")
    start, quiet = time.perf_counter(), logging.getLogger(f"matrix.{tag}")
    quiet.setLevel(logging.WARNING)
    try:
        built = compile_mod.build(path, target=target, output=repo / tag, logger=quiet)
    except AccelcError as exc:
        problem = exc.problems[0]
        return {"outcome": problem.code, "message": problem.message[:160], "seconds": time.perf_counter() - start}
    report = built.report
    rows = report.get("rows") or []
    cell = {"outcome": report["status"], "seconds": time.perf_counter() - start,
            "max_abs": max((r["max_abs"] for r in rows), default=None),
            "runner": report.get("runner")}
    if column != "fp32":
        layers = built.manifest.passes[0].stats["layers"]
        cell["int8_layers"] = sum(row["dtype"] != "float32" for row in layers)
        cell["layers"] = len(layers)
    return cell


def describe(cell: dict) -> str:
    if cell["outcome"] != "passed":
        return cell["outcome"] if cell["outcome"].startswith("E") else "FAILED"
    text = "verified"
    if "int8_layers" in cell:
        text += f" ({cell['int8_layers']}/{cell['layers']} layers int8)"
    return text


def table(results: dict, columns: list[str]) -> str:
    lines = ["| family | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for family, cells in results.items():
        lines.append(f"| {family} | " + " | ".join(describe(cells[c]) for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", help=f"comma-separated, of {', '.join(FAMILIES)} (default: all)")
    parser.add_argument("--arm", action="store_true", help="also float32 for aarch64, verified under emulation")
    parser.add_argument("--json", help="write every cell as JSON here")
    args = parser.parse_args(argv)
    chosen = args.families.split(",") if args.families else list(FAMILIES)
    unknown = set(chosen) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families: {', '.join(sorted(unknown))}")
    columns = [*COLUMNS, *(["ARM fp32"] if args.arm else [])]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="accelc-matrix-") as tmp:
        repo = make_repo(Path(tmp))
        for family in chosen:
            cells = results.setdefault(family, {})
            for column in columns:
                arm = column == "ARM fp32"
                cells[column] = build_cell(repo, family, "fp32" if arm else column, "arm" if arm else None)
                print(f"{family:<14} {column:<12} {describe(cells[column]):<32} "
                      f"{cells[column]['seconds']:6.1f} s  {cells[column].get('message', '')}", flush=True)
    print()
    print(table(results, columns))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0 if all(c["outcome"] == "passed" for cells in results.values() for c in cells.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
