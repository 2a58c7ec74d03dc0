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
import logging
import warnings
from fnmatch import fnmatch

import torch

from accelc.config import targets
from accelc.errors import PassError, TargetError
from accelc.passes import linear_form
from accelc.passes import quantize_fallback as fallback_mod, quantize_observe as observe_mod, quantize_rewrite as rewrite
from accelc.passes.base import Pass, PassContext, PassResult, glob_warnings
from accelc.passes.configs.quantize import FallbackConfig, Int8Choice, QuantizeConfig
from accelc.passes.fold import fetch
from accelc.verify import gate_data as data

__all__ = ["Quantize", "QuantizeConfig", "FallbackConfig"]
_LOG = logging.getLogger(__name__)


class Quantize(Pass):
    Config = QuantizeConfig

    def run(self, gm, ctx: PassContext) -> PassResult:
        cfg, mode = self.config, self.config.resolved_mode
        index = _index(cfg, ctx.loaded)
        where = ctx.loaded.where("passes", index) if ctx.loaded is not None and index is not None else None
        choice = _int8(cfg, ctx, index)
        original = gm
        gm, as_linear = linear_form.as_linear(gm)  # GPT-2's Conv1D: addmm over [in, out] weights
        gm, folded = linear_form.batchnorms_folded(gm) if cfg.dtype == "int8" else (gm, [])
        found = rewrite.layers(gm, cfg.dtype)
        notes = glob_warnings({"skip": cfg.skip}, [layer.name for layer in found])
        chosen = _select(found, cfg, mode, choice)
        if not chosen:  # nothing to quantize: the graph stays exactly as it came
            gm, as_linear, folded = original, 0, []
        tensors, source = _samples(cfg, ctx, index, where, required=mode == "static" and bool(chosen))
        ranges = self._calibrate(gm, chosen, tensors, ctx, choice) if mode == "static" and chosen else {}

        def build(subset):
            """A copy of the float graph with only `subset` quantized."""
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                graph = copy.deepcopy(gm)
            if mode == "cast":
                done = rewrite.cast_half(graph, subset, cfg.dtype)
            else:
                done = rewrite.Rewriter(graph, mode, cfg.weights == "per_channel", choice.qrange,
                                        (cfg.activations or "per_sample") == "per_sample", ranges).run(subset)
            graph.meta["accelc_quantized"] = done
            return graph

        sqnr = fallback_mod.sensitivity(gm, build, chosen, tensors) if chosen else {}
        result, fell_back = build(chosen), None
        if cfg.fallback and chosen:
            field = f"passes.{index}.fallback" if index is not None else "fallback"
            at = ctx.loaded.where("passes", index, "fallback") if where else None
            result, chosen, fell_back = fallback_mod.fallback(cfg.fallback, ctx, gm, build, chosen, sqnr, at, field)
        report = _report(cfg, mode, gm, result, found, chosen, sqnr, source, len(tensors[0]), notes, choice)
        if fell_back:
            report["fallback"] = fell_back
        if as_linear:
            report["as_linear"] = as_linear
        if folded:
            report["batchnorm_folded"] = folded
        _log(ctx, report)
        return PassResult(result, bool(chosen), report)

    def _calibrate(self, gm, chosen, tensors, ctx, choice: Int8Choice) -> dict:
        """{activation node name: (low, high)} for the inputs of the chosen layers."""
        nodes = {n.name: n for n in gm.graph.nodes}
        watched = list(dict.fromkeys(nodes[layer.node].args[0] for layer in chosen))
        qmin, qmax = choice.qrange
        ranges = observe_mod.observe(gm, watched, tensors, self.config.calibration, ctx.logger_or(_LOG),
                                     self.config.percentile, qmax - qmin + 1)
        return {node.name: value for node, value in ranges.items()}


def _int8(cfg: QuantizeConfig, ctx: PassContext, index: int | None) -> Int8Choice:
    """The int8 settings on the context's target. An explicit one the target rules out is refused
    here too when the pass runs outside a build (a build refuses it before any work starts)."""
    if ctx.target is not None:
        where = ctx.loaded.where if ctx.loaded is not None and index is not None else lambda *path: None
        problems = targets.pass_problems(ctx.target, cfg, index or 0, where)
        if problems:
            raise TargetError(problems=problems)
    return cfg.int8(ctx.target)


def _select(found: list, cfg: QuantizeConfig, mode: str, choice: Int8Choice) -> list:
    """The layers to quantize; every other one gets its reason."""
    for layer in found:
        if layer.problem is None and any(fnmatch(layer.name, glob) for glob in cfg.skip):
            layer.problem = "kept float32 by quantize.skip"
        elif layer.problem is None and mode in ("static", "dynamic") and layer.outputs < choice.min_outputs:
            layer.problem = (f"kept float32: {layer.outputs} output channel(s) run faster in float32 than as an "
                             f"int8 matrix-vector product (quantize.min_outputs: {choice.min_outputs})")
    return [layer for layer in found if layer.problem is None]


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


def _report(cfg, mode, before, after, found, chosen, sqnr, source, rows, notes, choice: Int8Choice) -> dict:
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
                                 "range": list(choice.qrange)}
        report["int8_policy"] = choice.report()  # each setting's value and where it came from
    if mode == "static":
        report["calibration"] = {"method": cfg.calibration, **({"percentile": cfg.percentile}
                                                               if cfg.calibration == "percentile" else {})}
    return report


def _log(ctx: PassContext, report: dict) -> None:
    rows = report["layers"]
    quantized = [r for r in rows if r["dtype"] != "float32"]
    size = report["size"]
    log = ctx.logger_or(_LOG)
    log.info(f"  quantize {report['mode']} {report['dtype']}: {len(quantized)}/{len(rows)} layers; tensors "
            f"{size['float32_bytes']} -> {size['quantized_bytes']} bytes ({size['ratio']:g}x smaller)")
    policy = report.get("int8_policy")
    if policy:
        log.debug(f"    int8: {policy['activation_bits']}-bit activations ({policy['source']['activation_bits']}), "
                  f"min_outputs {policy['min_outputs']} ({policy['source']['min_outputs']})")
    for row in rows:
        sqnr = row.get("sqnr_db")
        log.debug(f"    {row['layer']:<32} {row['dtype']:<12} " + (f"SQNR {sqnr:.1f} dB" if sqnr is not None else "")
                + (f"  ({row['reason']})" if "reason" in row else ""))
    fell_back = report.get("fallback")
    if fell_back:
        log.info(f"  quantize fallback: reverted {fell_back['reverted'] or 'nothing'}; {fell_back['metric']} "
                f"drop {fell_back['steps'][-1]['drop']:+.6f} (max {fell_back['max_drop']:g})")
    for line in report["warnings"]:
        log.warning(f"  quantize: {line}")
