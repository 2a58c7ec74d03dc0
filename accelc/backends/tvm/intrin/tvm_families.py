"""TVM's own tensor-intrinsic modules (tvm/s_tir/tensor_intrin/<family>.py), loaded one at a time.

Importing the package `tvm.s_tir.tensor_intrin` runs its __init__, which imports every family,
CUDA's included: ~50 s here. A family module needs only `tvm.s_tir`, so it is loaded on its own,
under its usual name: a later import of the package (MetaSchedule's TuneContext does one) finds it
in sys.modules and does not register its intrinsics twice.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "tvm.s_tir.tensor_intrin"


def family(name: str) -> ModuleType:
    """The module tvm.s_tir.tensor_intrin.<name> (x86, arm_cpu, ...), imported without its package."""
    qualified = f"{PACKAGE}.{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    if PACKAGE in sys.modules:  # the package (or tune/metaschedule's CPU-only stand-in) is there
        return importlib.import_module(qualified)
    folder = Path(next(iter(importlib.util.find_spec(PACKAGE).submodule_search_locations)))
    spec = importlib.util.spec_from_file_location(qualified, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[qualified]
        raise
    return module
