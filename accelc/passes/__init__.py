"""Graph rewrites on torch.fx, one module per pass. Importing this package loads neither torch
nor any pass: configs live in accelc.passes.configs, and each implementation is imported by
kind when it first runs (accelc.passes.registry)."""
from __future__ import annotations

import importlib

# name -> module that defines it, imported on first use
_LAZY = {"PASSES": "accelc.passes.registry", "PASS_CONFIGS": "accelc.passes.registry",
         "PassContext": "accelc.passes.base", "PassResult": "accelc.passes.base", "run_passes": "accelc.passes.base"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'accelc.passes' has no attribute '{name}'")
