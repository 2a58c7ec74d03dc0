"""accelc: a declarative, config-driven model compiler (PyTorch -> torch.fx -> TVM).

The public API is imported lazily so that `import accelc.runtime` in a server
pulls in neither torch nor the compiler.
"""
from __future__ import annotations

__version__ = "0.1.0"

from accelc.errors import (AccelcError, ArtifactError, DataError, InputError, ModelError,  # noqa: F401
                           PassError, RecipeError, TargetError, ToolchainError, UnsupportedOpError,
                           VerificationError)

# name -> (module, attribute): resolved on first use
_LAZY = {"build": ("accelc.compile", "build"), "tune": ("accelc.compile", "tune_recipe"),
         "BuildResult": ("accelc.compile", "BuildResult"), "load": ("accelc.runtime.predictor", "load"),
         "Predictor": ("accelc.runtime.predictor", "Predictor"), "Recipe": ("accelc.config.recipe", "Recipe"),
         "Target": ("accelc.config.targets", "Target"), "load_recipe": ("accelc.config.recipe", "load")}

__all__ = ["__version__", "AccelcError", "ArtifactError", "DataError", "InputError", "ModelError", "PassError",
           "RecipeError", "TargetError", "ToolchainError", "UnsupportedOpError", "VerificationError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'accelc' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
