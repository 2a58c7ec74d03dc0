"""accelc: a declarative, config-driven model compiler (PyTorch -> torch.fx -> TVM).

    result = accelc.build("recipes/edu_churn.yaml")          # or a Recipe object; -> BuildResult
    predictor = accelc.load(result.output)                   # -> Predictor (TVM runtime only)

The public API is imported lazily so that `import accelc.runtime` in a server
pulls in neither torch nor the compiler. The library reports through `logging`
(logger "accelc"); it prints nothing unless the application configures logging.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from accelc.errors import (AccelcError, ArtifactError, DataError, InputError, ModelError,  # noqa: F401
                           PassError, RecipeError, TargetError, ToolchainError, UnsupportedOpError,
                           VerificationError)

__version__ = "0.1.0"

# no last-resort printing of accelc's warnings to stderr: the application decides where records go
logging.getLogger("accelc").addHandler(logging.NullHandler())

# name -> (module, attribute): resolved on first use
_LAZY = {"build": ("accelc.compile", "build"), "tune": ("accelc.compile", "tune_recipe"),
         "BuildResult": ("accelc.compile", "BuildResult"), "load": ("accelc.runtime.predictor", "load"),
         "Predictor": ("accelc.runtime.predictor", "Predictor"), "Recipe": ("accelc.config.recipe", "Recipe"),
         "Target": ("accelc.config.targets", "Target"), "load_recipe": ("accelc.config.recipe", "load")}

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports on first use
    from accelc.compile import BuildResult, build  # noqa: F401
    from accelc.compile import tune_recipe as tune  # noqa: F401
    from accelc.config.recipe import Recipe  # noqa: F401
    from accelc.config.recipe import load as load_recipe  # noqa: F401
    from accelc.config.targets import Target  # noqa: F401
    from accelc.runtime.predictor import Predictor, load  # noqa: F401

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
