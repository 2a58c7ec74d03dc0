"""Config of merge_linear (implementation: accelc/passes/merge_linear.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from accelc.passes.configs.base import PassConfig


class MergeLinearConfig(PassConfig):
    kind: Literal["merge_linear"] = Field(description="Merge consecutive Linear layers with nothing non-linear "
                                          "between them (when that does not add MACs).")
