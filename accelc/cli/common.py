"""What the command modules share: argparse types that refuse bad values before any work, table
printing, and the console: the library's logging records shown on stderr (-v, -q)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from accelc import logs

WIDTH = 100  # columns for tables meant to be read in a terminal
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}  # -q, default, -v


# ---- argparse types --------------------------------------------------------------------------

def positive(text: str) -> int:
    """argparse type: an integer >= 1 (0 samples would verify nothing and pass)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def batch_sizes(text: str) -> list[int]:
    """argparse type: comma-separated batch sizes, each >= 1."""
    return [positive(part.strip()) for part in text.split(",")]


def output_file(text: str) -> str:
    """argparse type: a file that can be written, checked now rather than after minutes of work."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent} is not an existing directory")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text} cannot be written here: permission denied")
    return text


def add_verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    """-v / -q, before the command (`accelc -q build ...`) or after it; a command's parser gets
    default=SUPPRESS so that it does not undo what was given before the command."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, default=default,
                       help="also show details (per-layer tables, graph repairs)")
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=default,
                       help="show warnings and errors only, no progress")


# ---- printing --------------------------------------------------------------------------------

def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Left-aligned columns under a header and a rule, on stdout."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


# ---- the console: logging records on stderr --------------------------------------------------

class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (tests and callers swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(_for_this_stream)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # StreamHandler.__init__ sets one; ours is always the current sys.stderr


def _for_this_stream(record: logging.LogRecord) -> bool:
    """Ticks (progress-bar steps) only on a terminal: a CI log keeps the summaries."""
    if not logs.is_tick(record):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Lines(logging.Formatter):
    """Progress as the bare message, as the build has always printed it; warnings and errors say
    so after the message's own indentation ('  warning: prune: ...')."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            body = text.lstrip(" ")
            text = f"{text[:len(text) - len(body)]}{record.levelname.lower()}: {body}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@contextlib.contextmanager
def console(verbosity: int = 0) -> Iterator[None]:
    """Show accelc's records on stderr at the level -v/-q ask for, for the duration of one command;
    the logger is left as it was (main() may run many times in one process: tests, notebooks)."""
    logger = logging.getLogger(logs.ROOT)
    handler = _Stderr()
    handler.setFormatter(_Lines())
    before = logger.level
    logger.setLevel(LEVELS[max(-1, min(1, verbosity))])
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
