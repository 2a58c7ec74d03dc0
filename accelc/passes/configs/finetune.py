"""Config of the fine-tuning that prune may run after it (implementation: accelc/passes/finetune.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from accelc.passes.configs.base import ENTRYPOINT, PassConfig


class FinetuneConfig(PassConfig):
    steps: int = Field(ge=1, le=1_000_000, description="Optimizer steps; each sums the gradients of "
                       "`accumulate` micro-batches.")
    lr: float = Field(1e-3, gt=0, le=1, allow_inf_nan=False, description="Adam learning rate.")
    accumulate: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step (gradient "
                            "accumulation: effective batch = accumulate x batch_size).")
    batch_size: int = Field(64, ge=1, le=65536, description="Examples per micro-batch.")
    loss: Literal["auto", "bce", "cross_entropy", "mse"] = Field(
        "auto", description="auto: BCE for one output column, cross-entropy for several (integer labels).")
    data: str | None = Field(None, pattern=ENTRYPOINT, description="Callable returning (inputs, labels) to "
                             "train on; default: the recipe's data.train source.")
    seed: int = Field(0, ge=0, description="Seed for the order of the training examples.")
