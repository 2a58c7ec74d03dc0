"""Config of quantize (implementation: accelc/passes/quantize.py), and how its int8 settings are
chosen: `auto` takes the target's int8 policy (targets/*.yaml `int8:`), an explicit value wins
and is checked against that policy before any work starts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from accelc.config.targets import Int8Policy, Target
from accelc.passes.configs.base import ENTRYPOINT, Mismatch, PassConfig, located

FLOAT_DTYPES = ("float16", "bfloat16")
MAX_OUTPUTS = 1 << 20
# Without a target policy, the narrowest activations: 7 bits are exact in every int8 kernel accelc has.
DEFAULT_POLICY = Int8Policy(activation_bits=7, min_outputs=8, reason=(
    "accelc's default without a target policy: 7-bit activations are exact in every int8 kernel"))
_BOOL = TypeAdapter(bool)
_OUTPUTS = TypeAdapter(Annotated[int, Field(ge=1, le=MAX_OUTPUTS)])
# field -> (its non-auto values, how an error names them)
_AUTO_OR = {"reduce_range": (_BOOL, ", true or false"), "min_outputs": (_OUTPUTS, f" or an integer in [1, {MAX_OUTPUTS}]")}


class FallbackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_drop: float | None = Field(None, ge=0, allow_inf_nan=False, description="Largest allowed worsening of "
                                   "verify.metric on the validation data (default: verify.metric.max_drop).")
    strategy: Literal["sensitivity"] = Field("sensitivity", description="sensitivity: move layers back to "
                                             "float32 in order of their own SQNR, worst first, until the "
                                             "budget holds.")


@dataclass(frozen=True)
class Int8Choice:
    """The int8 settings a quantize pass runs with, and where each came from (for its report)."""

    activation_bits: int
    min_outputs: int
    sources: dict[str, str] = field(default_factory=dict)  # setting -> where its value came from
    reason: str = ""  # why the policy chose its activation bits

    @property
    def qrange(self) -> tuple[int, int]:
        return 0, (1 << self.activation_bits) - 1

    def report(self) -> dict[str, Any]:
        return {"activation_bits": self.activation_bits, "min_outputs": self.min_outputs,
                "source": dict(self.sources), "reason": self.reason}


class QuantizeConfig(PassConfig):
    kind: Literal["quantize"] = Field(description="Quantize Linear/Conv layers to int8 (or cast them to half).")
    mode: Literal["static", "dynamic", "weight_only"] | None = Field(
        None, description="static: activation ranges calibrated on data.calibration; dynamic: activation scale "
        "computed at run time inside the compiled graph; weight_only: int8 weights, float activations. "
        "Default static for int8; not used by float16/bfloat16.")
    dtype: Literal["int8", "float16", "bfloat16"] = Field(
        "int8", description="int8: int8 x int8 -> int32 kernels; float16/bfloat16: cast-only half precision "
        "(weights and layer compute in half; meant for CUDA targets).")
    weights: Literal["per_channel", "per_tensor"] = Field(
        "per_channel", description="Symmetric int8 weight scale per output channel or one per tensor.")
    activations: Literal["per_tensor", "per_sample"] | None = Field(
        None, description="Asymmetric activation scale: per_tensor (static default), or per_sample (dynamic "
        "default: each row of a Linear's input and each image of a Conv's, so that a result never depends on "
        "the other requests in its batch).")
    calibration: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="Static activation range: whole observed range, tails cut at `percentile`, or "
        "the clipping with the least KL divergence (TensorRT's entropy calibration).")
    percentile: float = Field(99.99, gt=50, le=100, allow_inf_nan=False,
                              description="Percentile kept at each tail by calibration: percentile.")
    samples: int = Field(512, ge=1, le=1_000_000, description="Calibration rows used (a seeded random subset).")
    reduce_range: Union[Literal["auto"], bool] = Field(
        "auto", description="auto: the target's int8.activation_bits; true: 7-bit activations (0..127), exact in "
        "every int8 kernel; false: 8 bits (0..255), only where the target's int8 kernel takes them (int8."
        "activation_bits: 8; on AVX2 the pair multiply vpmaddubsw would saturate).")
    skip: list[str] = Field(default_factory=list, description="Globs over module paths of layers to keep float32.")
    min_outputs: Union[Literal["auto"], Annotated[int, Field(ge=1, le=MAX_OUTPUTS)]] = Field(
        "auto", description="static/dynamic: layers with fewer output channels stay float32 (a one-column head "
        "runs as a matrix-vector product: its int8 requantize costs more than the dot products save, and its "
        "weights are tiny); 1 quantizes all; auto: the target's int8.min_outputs.")
    data: str | None = Field(None, pattern=ENTRYPOINT, description="Callable returning calibration inputs; "
                             "default: the recipe's data.calibration.")
    fallback: FallbackConfig | None = Field(None, description="Accuracy-aware fallback: revert the most "
                                            "sensitive layers to float32 until verify.metric holds.")

    @field_validator("reduce_range", "min_outputs", mode="before")
    @classmethod
    def _auto_or_value(cls, value, info):
        """One message instead of one per member of the union."""
        adapter, expected = _AUTO_OR[info.field_name]
        try:
            return value if value == "auto" else adapter.validate_python(value)
        except ValidationError:
            raise ValueError(f"{info.field_name} is auto{expected}, got {value!r:.40}") from None

    @model_validator(mode="after")
    def _consistent(self):
        half = self.dtype in FLOAT_DTYPES
        if half and self.mode is not None:
            raise located(f"{self.dtype} is cast-only: leave 'mode' out", "mode")
        if self.activations == "per_sample" and self.resolved_mode == "static":
            raise located("static activation scales are fixed at calibration: per_sample needs mode: dynamic",
                          "activations")
        if self.calibration != "minmax" and self.resolved_mode != "static":
            raise located("calibration applies to mode: static only", "calibration")
        return self

    @property
    def resolved_mode(self) -> str:
        return "cast" if self.dtype in FLOAT_DTYPES else self.mode or "static"

    def required_dtypes(self) -> tuple[str, ...]:
        return (self.dtype,)

    def int8(self, target: Target | None) -> Int8Choice:
        """The settings this pass runs with on `target` (None: no target, accelc's default policy)."""
        policy, origin = _policy(target)
        bits = policy.activation_bits if self.reduce_range == "auto" else 7 if self.reduce_range else 8
        outputs = policy.min_outputs if self.min_outputs == "auto" else self.min_outputs
        sources = {"activation_bits": origin("activation_bits") if self.reduce_range == "auto" else
                   f"quantize.reduce_range: {str(self.reduce_range).lower()}",
                   "min_outputs": origin("min_outputs") if self.min_outputs == "auto" else
                   f"quantize.min_outputs: {self.min_outputs}"}
        return Int8Choice(bits, outputs, sources, policy.reason)

    def target_problems(self, target: Target) -> list[Mismatch]:
        """8-bit activations where the target's int8 kernel is exact with 7 only."""
        if self.resolved_mode not in ("static", "dynamic") or self.reduce_range is not False or target.int8 is None:
            return []
        bits = target.int8.activation_bits
        if bits >= 8:
            return []
        return [Mismatch("reduce_range", f"reduce_range: false asks for 8-bit activations, but the int8 kernel of "
                         f"target '{target.name}' is exact with at most {bits} bits: {target.int8.reason}",
                         "leave reduce_range out (auto: the target's policy), or build for a target whose "
                         "int8.activation_bits is 8")]


def _policy(target: Target | None) -> tuple[Int8Policy, Callable[[str], str]]:
    """The int8 policy in force, and a function naming where a setting of it comes from."""
    if target is None:
        return DEFAULT_POLICY, lambda setting: "accelc default (no target)"
    if target.int8 is None:
        return DEFAULT_POLICY, lambda setting: f"accelc default (target '{target.name}' has no int8 policy)"
    return target.int8, lambda setting: f"target '{target.name}' (int8.{setting})"
