"""Config of prune (implementation: accelc/passes/prune.py)."""
from __future__ import annotations

from fnmatch import fnmatch
from typing import Annotated, Literal

from pydantic import Field, model_validator

from accelc.passes.configs.base import PassConfig
from accelc.passes.configs.finetune import FinetuneConfig

Amount = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


class PruneConfig(PassConfig):
    kind: Literal["prune"] = Field(description="Remove channels (structured) or zero weights (magnitude).")
    method: Literal["l1_structured", "l2_structured", "magnitude"] = Field(
        description="l1/l2_structured: drop the output channels of Linear/Conv with the smallest L1/L2 weight "
                    "norm, shrinking every dependent tensor; magnitude: zero the smallest weights (no speed-up).")
    amount: Amount | None = Field(None, description="Fraction in [0, 1) of channels (structured) or weights "
                                  "(magnitude) to remove from every layer no `layers` glob matches.")
    layers: dict[str, Amount] = Field(default_factory=dict, description="{glob: amount} over module paths "
                                      "(e.g. 'layer2.*'); the first matching glob wins over `amount`.")
    skip: list[str] = Field(default_factory=list, description="Globs over module paths of layers never to "
                            "prune; layers coupled with them are kept too.")
    round_to: int = Field(1, ge=1, le=1024, description="Keep a multiple of this many channels per layer "
                          "(e.g. 8 for the vector width); structured methods only.")
    finetune: FinetuneConfig | None = Field(None, description="Fine-tune after pruning on the training data.")

    @model_validator(mode="after")
    def _consistent(self):
        if self.amount is None and not self.layers:
            raise ValueError("give 'amount' (for all layers) or 'layers' ({glob: amount})")
        if self.method == "magnitude" and self.round_to != 1:
            raise ValueError("round_to applies to the structured methods only")
        return self

    def amount_for(self, name: str) -> float | None:
        """The fraction for a layer, or None when a skip glob matches it."""
        if any(fnmatch(name, glob) for glob in self.skip):
            return None
        return next((a for glob, a in self.layers.items() if fnmatch(name, glob)), self.amount or 0.0)
