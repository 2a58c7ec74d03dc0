"""Layering rule: the runtime side (runtime, artifact with its typed manifest, errors, host)
imports neither torch nor the compiler side, so that a production server needs neither. Checked in
a fresh interpreter."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.helpers import ROOT

FORBIDDEN = ("torch", "tvm", "accelc.capture.export", "accelc.passes", "accelc.backends", "accelc.compile",
             "accelc.config.recipe", "accelc.verify.compare", "pydantic")

PROBE = """
import json, sys
import {modules}
print(json.dumps(sorted(m for m in sys.modules if sys.modules[m] is not None)))
"""


def imported_by(*modules: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(modules=", ".join(modules))], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("module", ["accelc.runtime", "accelc.runtime.server", "accelc.artifact",
                                    "accelc.artifact.manifest", "accelc.artifact.store", "accelc.errors",
                                    "accelc.config.host_cpu", "accelc"])
def test_runtime_side_imports_nothing_from_the_compiler_side(module):
    loaded = imported_by(module)
    assert module in loaded
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert bad == [], f"importing {module} pulled in {bad}"


def test_the_probe_sees_the_compiler_side():
    """Control: the same probe does see torch when the compiler side is imported."""
    loaded = imported_by("accelc.capture.export")
    assert "torch" in loaded and "accelc.config.recipe" in loaded
