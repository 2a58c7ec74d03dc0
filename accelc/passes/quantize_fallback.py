"""Accuracy of a quantized graph and the accuracy-aware fallback.

Sensitivity: each layer's own quantization error, as the SQNR of the model's output when only
that layer is quantized. Fallback: when the task metric of the fully quantized graph drops more
than the budget, move layers back to float32 worst-SQNR-first until it holds.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from accelc.capture.export import flatten
from accelc.errors import PassError
from accelc.passes.quantize_observe import rows_per_call
from accelc.passes.quantize_rewrite import Layer
from accelc.verify import gate_data as data
from accelc.verify import metrics

ROWS = 1024  # rows per forward pass when scoring


def outputs(gm, tensors: list[torch.Tensor]) -> np.ndarray:
    """Every float output of the graph over the inputs, flattened per row and concatenated."""
    chunks = []
    with torch.no_grad():
        rows = rows_per_call(gm, ROWS)
        for start in range(0, len(tensors[0]), rows):
            out = flatten(gm(*[t[start:start + rows] for t in tensors]))
            chunks.append(np.concatenate([o.detach().float().reshape(len(o), -1).numpy() for o in out], axis=1))
    return np.concatenate(chunks).astype(np.float64)


def sqnr_db(reference: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical, -inf when the signal is 0)."""
    noise = float(np.sum((reference - got) ** 2))
    signal = float(np.sum(reference ** 2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def sensitivity(gm, build: Callable, chosen: list[Layer], tensors: list[torch.Tensor]) -> dict[str, float]:
    """{layer node: SQNR of the model output with only that layer quantized}."""
    reference = outputs(gm, tensors)
    return {layer.node: round(sqnr_db(reference, outputs(build([layer]), tensors)), 3) for layer in chosen}


def finite(value: float) -> float | None:
    """JSON has no infinity: an exact layer (no quantization noise) reports null."""
    return value if math.isfinite(value) else None


def first_output(gm, inputs: list[np.ndarray]) -> np.ndarray:
    parts = []
    with torch.no_grad():
        rows = rows_per_call(gm, ROWS)
        for start in range(0, len(inputs[0]), rows):
            out = flatten(gm(*[torch.from_numpy(a[start:start + rows]) for a in inputs]))
            parts.append(out[0].detach().float().numpy())
    return np.concatenate(parts)


def fallback(config, ctx, gm, build: Callable, chosen: list[Layer], sqnr: dict, where: str | None,
             field: str = "fallback"):
    """(graph, layers kept in int8, report). Raises PassError when no layer can stay quantized."""
    loaded = ctx.loaded
    gate = loaded.recipe.verify.metric if loaded is not None else None
    if gate is None:
        raise PassError("quantize.fallback needs the task metric: add verify.metric {name, max_drop} and "
                        "validation data (data.validation or data.csv)", code="E455", location=where,
                        field=field)
    budget = config.max_drop if config.max_drop is not None else gate.max_drop
    inputs, labels = data.validation_data(loaded)
    score = metrics.METRICS[gate.name]
    original = score(labels, first_output(gm, inputs))
    ranking = sorted(chosen, key=lambda layer: sqnr[layer.node])
    kept, reverted, steps = list(chosen), [], []
    while True:
        graph = build(kept)
        value = score(labels, first_output(graph, inputs))
        worse = metrics.drop(gate.name, original, value)
        steps.append({"reverted": reverted[-1] if reverted else None, "int8_layers": len(kept),
                      "metric": round(value, 6), "drop": round(worse, 6)})
        if np.isfinite(worse) and worse <= budget:
            break
        if len(kept) == 1:  # reverting the last one leaves a float model: not a quantization
            raise PassError(
                f"every quantized layer had to go back to float32 to keep {gate.name} within max_drop {budget:g} "
                f"(float {original:.6f}, with one int8 layer {value:.6f}); nothing is left quantized", code="E455",
                location=where, field=field,
                hint="reverted in order of SQNR: " + ", ".join(f"{l.name} ({sqnr[l.node]:.1f} dB)" for l in ranking)
                + "; raise fallback.max_drop, calibrate differently, or drop the quantize pass")
        worst = ranking[len(reverted)]
        reverted.append(worst.name)
        kept.remove(worst)
    report = {"metric": gate.name, "max_drop": budget, "float": round(original, 6), "strategy": config.strategy,
              "ranking": [{"layer": l.name, "sqnr_db": finite(sqnr[l.node])} for l in ranking],
              "reverted": reverted, "steps": steps}
    return graph, kept, report
