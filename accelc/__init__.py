"""accelc: a declarative, config-driven model compiler (PyTorch -> torch.fx -> TVM).

The public API is imported lazily so that `import accelc.runtime` in a server
pulls in neither torch nor the compiler.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (AccelcError, ArtifactError, DataError, InputError, ModelError,  # noqa: F401
                     PassError, RecipeError, TargetError, ToolchainError, UnsupportedOpError,
                     VerificationError)

_LAZY = {"build": ("compile", "build"), "load": ("runtime", "load"), "Recipe": ("recipe", "Recipe"),
         "Target": ("targets", "Target"), "load_recipe": ("recipe", "load")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'accelc' has no attribute '{name}'")
