"""How the library reports: `logging` records under the `accelc` logger, never print.

Progress (stage lines, summaries) is INFO, details (per-layer tables, graph repairs) DEBUG, things
the user should act on WARNING. A library user who configures nothing sees nothing (accelc/__init__
adds a NullHandler); the CLI shows INFO on stderr (cli/common.py). Records marked with TICK (a progress
bar's steps, tuning's line per measured batch) are meant for a terminal: the CLI drops them when
stderr is not one, so that a CI log holds the summary without a hundred bar updates.
"""
from __future__ import annotations

import logging
from typing import Union

ROOT = "accelc"
TICK = {"accelc_tick": True}  # pass as `extra=` on a record that only redraws progress

# what functions that report accept: a logger, or an adapter that adds context to every record
Logger = Union[logging.Logger, logging.LoggerAdapter]


def is_tick(record: logging.LogRecord) -> bool:
    return bool(getattr(record, "accelc_tick", False))
