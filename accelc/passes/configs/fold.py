"""Config of fold_batchnorm (implementation: accelc/passes/fold.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from accelc.passes.configs.base import PassConfig


class FoldBatchNormConfig(PassConfig):
    kind: Literal["fold_batchnorm"] = Field(description="Fold eval-mode BatchNorm into the preceding Conv/Linear.")
