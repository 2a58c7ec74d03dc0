"""quantize: int8 (static, dynamic, weight-only) or half-precision (cast-only) Linear/Conv layers.

The pass writes the fake-quantized graph (quantize_rewrite.py, ops in quantize_ops.py): eager
PyTorch runs exactly the arithmetic the int8 kernels do, so tier 1 of verification (artifact vs
this graph) proves the lowering and tier 2 (metric vs the original model) judges the accuracy.
Static mode calibrates on the recipe's data (quantize_observe.py); every mode measures each
layer's sensitivity (SQNR) and, with `fallback`, moves the worst layers back to float32 until the
task metric holds (quantize_fallback.py).
"""
from __future__ import annotations

import copy
import warnings
from fnmatch import fnmatch
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from accelc.errors import PassError
from accelc.passes import quantize_fallback as fallback_mod, quantize_observe as observe_mod, quantize_rewrite as rewrite
from accelc.passes.base import Pass, PassConfig, PassContext, PassResult, glob_warnings, register
from accelc.passes.fold import fetch

ENTRYPOINT = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
FLOAT_DTYPES = ("float16", "bfloat16")
REDUCED_NOTE = ("activations use 7 bits (0..127) so that AVX2's u8 x s8 pair multiply (vpmaddubsw) cannot "
                "saturate; PyTorch's fbgemm default does the same on CPUs without VNNI")


def _located(message: str, field: str) -> PydanticCustomError:
    """An error the recipe loader points at `field` of this pass (recipe.located_error)."""
    return PydanticCustomError("located", message, {"at": (field,)})


class FallbackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_drop: float | None = Field(None, ge=0, allow_inf_nan=False, description="Largest allowed worsening of "
                                   "verify.metric on the validation data (default: verify.metric.max_drop).")
    strategy: Literal["sensitivity"] = Field("sensitivity", description="sensitivity: move layers back to "
                                             "float32 in order of their own SQNR, worst first, until the "
                                             "budget holds.")


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
    reduce_range: bool = Field(True, description="7-bit activations (0..127): required by the AVX2 int8 kernel "
                               "(vpmaddubsw saturates otherwise); false uses 8 bits and a slower exact kernel.")
    skip: list[str] = Field(default_factory=list, description="Globs over module paths of layers to keep float32.")
    min_outputs: int = Field(8, ge=1, le=1 << 20, description="static/dynamic: layers with fewer output channels "
                             "stay float32 (a one-column head runs as a matrix-vector product: its int8 requantize "
                             "costs more than the dot products save, and its weights are tiny); 1 quantizes all.")
    data: str | None = Field(None, pattern=ENTRYPOINT, description="Callable returning calibration inputs; "
                             "default: the recipe's data.calibration.")
    fallback: FallbackConfig | None = Field(None, description="Accuracy-aware fallback: revert the most "
                                            "sensitive layers to float32 until verify.metric holds.")

    @model_validator(mode="after")
    def _consistent(self):
        half = self.dtype in FLOAT_DTYPES
        if half and self.mode is not None:
            raise _located(f"{self.dtype} is cast-only: leave 'mode' out", "mode")
        if self.activations == "per_sample" and self.resolved_mode == "static":
            raise _located("static activation scales are fixed at calibration: per_sample needs mode: dynamic",
                           "activations")
        if self.calibration != "minmax" and self.resolved_mode != "static":
            raise _located("calibration applies to mode: static only", "calibration")
        return self

    @property
    def resolved_mode(self) -> str:
        return "cast" if self.dtype in FLOAT_DTYPES else self.mode or "static"

    @property
    def qrange(self) -> tuple[int, int]:
        return (0, 127) if self.reduce_range else (0, 255)


@register
class Quantize(Pass):
    kind = "quantize"
    Config = QuantizeConfig

    def run(self, gm, ctx: PassContext) -> PassResult:
        cfg, mode = self.config, self.config.resolved_mode
        index = _index(cfg, ctx.loaded)
        where = ctx.loaded.where("passes", index) if ctx.loaded is not None and index is not None else None
        found = rewrite.layers(gm, cfg.dtype)
        notes = glob_warnings({"skip": cfg.skip}, [layer.name for layer in found])
        for layer in found:
            if layer.problem is None and any(fnmatch(layer.name, glob) for glob in cfg.skip):
                layer.problem = "kept float32 by quantize.skip"
            elif layer.problem is None and mode in ("static", "dynamic") and layer.outputs < cfg.min_outputs:
                layer.problem = (f"kept float32: {layer.outputs} output channel(s) run faster in float32 than as an "
                                 f"int8 matrix-vector product (quantize.min_outputs: {cfg.min_outputs})")
        chosen = [layer for layer in found if layer.problem is None]
        tensors, source = _samples(cfg, ctx, index, where, required=mode == "static" and bool(chosen))
        ranges = self._calibrate(gm, chosen, tensors, ctx) if mode == "static" and chosen else {}

        def build(subset):
            """A copy of the float graph with only `subset` quantized."""
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                graph = copy.deepcopy(gm)
            if mode == "cast":
                done = rewrite.cast_half(graph, subset, cfg.dtype)
            else:
                done = rewrite.Rewriter(graph, mode, cfg.weights == "per_channel", cfg.qrange,
                                        (cfg.activations or "per_sample") == "per_sample", ranges).run(subset)
            graph.meta["accelc_quantized"] = done
            return graph

        sqnr = fallback_mod.sensitivity(gm, build, chosen, tensors) if chosen else {}
        result, fell_back = build(chosen), None
        if cfg.fallback and chosen:
            field = f"passes.{index}.fallback" if index is not None else "fallback"
            at = ctx.loaded.where("passes", index, "fallback") if where else None
            result, chosen, fell_back = fallback_mod.fallback(cfg.fallback, ctx, gm, build, chosen, sqnr, at, field)
        report = _report(cfg, mode, gm, result, found, chosen, sqnr, source, len(tensors[0]), notes)
        if fell_back:
            report["fallback"] = fell_back
        _log(ctx, report)
        return PassResult(result, bool(chosen), report)

    def _calibrate(self, gm, chosen, tensors, ctx) -> dict:
        """{activation node name: (low, high)} for the inputs of the chosen layers."""
        nodes = {n.name: n for n in gm.graph.nodes}
        watched = list(dict.fromkeys(nodes[layer.node].args[0] for layer in chosen))
        qmin, qmax = self.config.qrange
        ranges = observe_mod.observe(gm, watched, tensors, self.config.calibration, ctx.log, self.config.percentile,
                                     qmax - qmin + 1)
        return {node.name: value for node, value in ranges.items()}


def _index(cfg, loaded) -> int | None:
    """This pass's position in the recipe (for error locations), if it came from one."""
    if loaded is None:
        return None
    return next((i for i, p in enumerate(loaded.recipe.passes) if p is cfg or p == cfg), None)


def _samples(cfg, ctx, index, where, required: bool) -> tuple[list[torch.Tensor], str]:
    """Rows to calibrate and measure SQNR on: the calibration source, else the validation
    inputs, else the example inputs. Static quantization cannot do without calibration data."""
    fn, field, at = observe_mod.source(cfg.data, ctx.loaded, index)
    if fn is not None:
        return observe_mod.load(fn, field, at, ctx.example_inputs, cfg.samples), field
    if required:
        raise PassError("static quantization needs calibration data, and the recipe has none", code="E453",
                        location=where, field="data.calibration",
                        hint="add `data: {calibration: package.module:function}` (a callable returning model "
                        "inputs, or (inputs, labels)) to the recipe, or use mode: dynamic")
    loaded = ctx.loaded
    if loaded is not None and (loaded.recipe.data.validation or loaded.recipe.data.csv):
        from accelc.verify import gate_data as data
        inputs, _ = data.validation_data(loaded)
        return [torch.from_numpy(a[:cfg.samples]) for a in inputs], "validation inputs"
    return list(ctx.example_inputs), "example inputs"


def _bytes(gm) -> int:
    """Bytes of the tensors the graph reads (each once): what the artifact's parameters hold."""
    seen = {}
    for node in gm.graph.find_nodes(op="get_attr"):
        value = fetch(gm, node)
        if isinstance(value, torch.Tensor):
            seen[node.target] = value.numel() * value.element_size()
    return sum(seen.values())


def _report(cfg, mode, before, after, found, chosen, sqnr, source, rows, notes) -> dict:
    done = after.meta.get("accelc_quantized", {})
    kept = {layer.node for layer in chosen}
    dtype = cfg.dtype if mode != "weight_only" else "int8 weights"
    rows_out = []
    for layer in found:
        row = {"layer": layer.name, "op": layer.op,
               "dtype": dtype if layer.node in kept else "float32"}
        if layer.node in kept:
            row.update(done.get(layer.node, {}))
        elif layer.problem is None:
            row["reason"] = "reverted to float32 by the fallback"
        else:
            row["reason"] = layer.problem
        if layer.node in sqnr:
            row["sqnr_db"] = fallback_mod.finite(sqnr[layer.node])
        rows_out.append(row)
    size_before, size_after = _bytes(before), _bytes(after)
    report = {"mode": mode, "dtype": cfg.dtype, "layers": rows_out, "float32_ops": rewrite.float_ops(after),
              "size": {"float32_bytes": size_before, "quantized_bytes": size_after,
                       "ratio": round(size_before / max(size_after, 1), 3)},
              "samples": {"source": source, "rows": rows}, "warnings": notes}
    if mode != "cast":
        report["weights"] = cfg.weights
    if mode in ("static", "dynamic"):
        report["activations"] = {"granularity": cfg.activations or ("per_tensor" if mode == "static" else
                                                                    "per_sample"),
                                 "range": list(cfg.qrange), **({"note": REDUCED_NOTE} if cfg.reduce_range else {})}
    if mode == "static":
        report["calibration"] = {"method": cfg.calibration, **({"percentile": cfg.percentile}
                                                               if cfg.calibration == "percentile" else {})}
    return report


def _log(ctx: PassContext, report: dict) -> None:
    rows = report["layers"]
    quantized = [r for r in rows if r["dtype"] != "float32"]
    size = report["size"]
    ctx.log(f"  quantize {report['mode']} {report['dtype']}: {len(quantized)}/{len(rows)} layers; tensors "
            f"{size['float32_bytes']} -> {size['quantized_bytes']} bytes ({size['ratio']:g}x smaller)")
    for row in rows:
        sqnr = row.get("sqnr_db")
        ctx.log(f"    {row['layer']:<32} {row['dtype']:<12} " + (f"SQNR {sqnr:.1f} dB" if sqnr is not None else "")
                + (f"  ({row['reason']})" if "reason" in row else ""))
    fell_back = report.get("fallback")
    if fell_back:
        ctx.log(f"  quantize fallback: reverted {fell_back['reverted'] or 'nothing'}; {fell_back['metric']} "
                f"drop {fell_back['steps'][-1]['drop']:+.6f} (max {fell_back['max_drop']:g})")
    for line in report["warnings"]:
        ctx.log(f"  warning: quantize: {line}")
