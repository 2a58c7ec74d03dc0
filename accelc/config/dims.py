"""model.dims: named dimensions besides batch (a sequence length), built as buckets and padded
with stated values, one input marking real positions. Torch-free, as the rest of config/."""
from __future__ import annotations

import math
from typing import Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator
from pydantic_core import PydanticCustomError

from accelc.errors import did_you_mean

DIM_NAME = r"[A-Za-z_]\w*"
INT_RANGES = {"int8": (-(1 << 7), (1 << 7) - 1), "uint8": (0, 255), "int32": (-(1 << 31), (1 << 31) - 1),
              "int64": (-(1 << 63), (1 << 63) - 1)}


def _located(message: str, *at) -> PydanticCustomError:
    """recipe.located_error (which imports this module): an error the loader points at `at`."""
    return PydanticCustomError("located", message, {"at": at})


class DimSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sizes: list[StrictInt] = Field(min_length=1, description="The sizes (buckets) built, one static function per "
                                   "bucket and batch size; a call runs on the smallest bucket >= its length.")
    pad: dict[str, Union[StrictInt, float]] = Field(
        default_factory=dict, description="The value each input carrying this dimension is padded with up to its "
        "bucket (input name -> value); every such input needs one, except the mask (padded with 0).")
    mask: str | None = Field(None, description="The input (int or bool) that marks real positions with 1 and "
                             "padding with 0. Without it the padded positions must be invisible to the model's "
                             "outputs at the real positions (e.g. causal attention); the build checks this.")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: list[int]) -> list[int]:
        if any(not 1 <= s <= 1 << 20 for s in sizes):
            raise ValueError("sizes must be in [1, 1048576]")
        return sorted(set(sizes))


def check_dims(dims: dict[str, DimSpec], inputs: list) -> None:
    """Every named dimension in a shape is declared, every declared one used, and its padding stated
    for exactly the inputs that carry it."""
    for index, spec in enumerate(inputs):
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and dim != "batch" and dim not in dims:
                close = did_you_mean(dim, [*dims, "batch"])
                raise _located(f"dimension '{dim}' is not declared in model.dims{f'; {close}' if close else ''}",
                       "inputs", index, "shape", axis)
    if "batch" in dims:
        raise _located("'batch' is the batch dimension, set by model.batch", "dims", "batch")
    if len(dims) > 1:
        raise _located("one named dimension is supported (besides batch)", "dims", list(dims)[1])
    for name, dim in dims.items():
        carriers = {spec.name: spec for spec in inputs if name in spec.shape}
        if not carriers:
            raise _located(f"dimension '{name}' is declared but no input's shape uses it", "dims", name)
        _check_mask(name, dim, carriers)
        for key, value in dim.pad.items():
            if key not in carriers:
                what = "is not an input" if all(s.name != key for s in inputs) else f"has no '{name}' dimension"
                raise _located(f"'{key}' {what}; pad names inputs whose shape uses '{name}'",
                       "dims", name, "pad", key)
            _check_pad_value(carriers[key], value, ("dims", name, "pad", key))
        missing = [n for n in carriers if n not in dim.pad and n != dim.mask]
        if missing:
            raise _located(f"input(s) {missing} use '{name}' but have no pad value", "dims", name, "pad")


def _check_mask(name: str, dim: DimSpec, carriers: dict) -> None:
    if dim.mask is None:
        return
    spec = carriers.get(dim.mask)
    if spec is None:
        raise _located(f"mask '{dim.mask}' is not an input whose shape uses '{name}'", "dims", name, "mask")
    if not spec.dtype.startswith(("int", "uint", "bool")):
        raise _located(f"mask '{dim.mask}' is {spec.dtype}; a mask is an int or bool input (1: real, "
                       "0: padding)", "dims", name, "mask")
    if dim.pad.get(dim.mask, 0) != 0:
        raise _located(f"the mask '{dim.mask}' is padded with 0 (padding), not {dim.pad[dim.mask]}",
                       "dims", name, "pad", dim.mask)


def _check_pad_value(spec, value: float, at: tuple) -> None:
    """A pad value the input's dtype holds exactly."""
    if spec.dtype == "bool" and value not in (0, 1):
        raise _located(f"input '{spec.name}' is bool; pad with 0 or 1, not {value}", *at)
    if spec.dtype.startswith(("int", "uint")):
        low, high = INT_RANGES[spec.dtype]
        if not float(value).is_integer() or not low <= value <= high:
            raise _located(f"input '{spec.name}' is {spec.dtype}; its pad value {value} does not fit", *at)
    if not math.isfinite(value):
        raise _located(f"pad value {value} is not finite", *at)
