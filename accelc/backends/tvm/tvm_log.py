"""TVM's C++ warnings that carry no news for an accelc build, kept out of the build log.

They are written by libtvm straight to file descriptor 2, once per kernel: a decoder LM's build
printed dozens of each. The C++ logger has no level to set, so the descriptor is redirected for the
duration, the known lines go to accelc's log at DEBUG (once each, with their count) and every other
line is written back unchanged.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import sys
import tempfile

_LOG = logging.getLogger(__name__)

# Each with why it is noise here.
KNOWN = [
    # every gather: accelc refuses out-of-range ids before native code runs (runtime E805)
    re.compile(r"Fast mode segfaults when there are out-of-bounds indices"),
    # GELU's tanh approximation computes x**3; TVM warns about pow for negative bases, which it then
    # computes as x*x*x correctly for integer exponents
    re.compile(r"Detected pow\(x, y\) where y >= 3"),
]


@contextlib.contextmanager
def known_warnings_hidden():
    """Run a TVM step with its known warnings dropped from stderr; other output passes through."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (embedded interpreters): leave it alone
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            _route(capture.read().decode("utf-8", "replace").splitlines(keepends=True))


def _route(lines: list[str]) -> None:
    """Known warnings to the debug log, counted; the rest back to stderr."""
    known = collections.Counter(re.sub(r"^\[[^\]]*\]\s*", "", line).strip() for line in lines
                                if any(pattern.search(line) for pattern in KNOWN))
    for message, count in known.items():  # without libtvm's timestamp, so that repeats count as one
        _LOG.debug(f"TVM: {message}{f' (x{count})' if count > 1 else ''}")
    kept = [line for line in lines if not any(pattern.search(line) for pattern in KNOWN)]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()
