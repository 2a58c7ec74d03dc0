"""`accelc targets`: the known targets, one row each, their description and dtypes below it."""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from accelc.cli.common import WIDTH
from accelc.errors import EXIT_OK


def add_arguments(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("targets", help="list known targets")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from accelc.config import targets
    print("\n".join(target_lines(list(targets.load_all(Path.cwd()).values()))))
    return EXIT_OK


def target_lines(specs: list, width: int = WIDTH) -> list[str]:
    """A table of the short facts, each target's description and dtypes indented below its row:
    one row of everything was ~200 columns wide."""
    rows = [(t.name, t.device, "yes" if t.runs_here()[0] else "no") for t in specs]
    header = ("target", "device", "runs here")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    indent = sum(widths) + 2 * len(widths)  # where the aliases column starts
    aliases = [textwrap.wrap(", ".join(t.aliases), max(20, width - indent)) or ["-"] for t in specs]
    alias_width = max(len("aliases"), *(len(line) for lines in aliases for line in lines))
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  aliases",
             "  ".join("-" * w for w in (*widths, alias_width))]
    for spec, row, names in zip(specs, rows, aliases):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + names[0])
        lines += [" " * indent + name for name in names[1:]]
        lines += textwrap.wrap(spec.description, width, initial_indent="    ", subsequent_indent="    ")
        lines += textwrap.wrap(", ".join(spec.dtypes), width, initial_indent="    dtypes: ",
                               subsequent_indent=" " * 12)
    return lines
