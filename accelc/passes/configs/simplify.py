"""Config of simplify (implementation: accelc/passes/simplify.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from accelc.passes.configs.base import PassConfig


class SimplifyConfig(PassConfig):
    kind: Literal["simplify"] = Field(description="Remove no-ops, collapse reshape chains, drop dead code.")
