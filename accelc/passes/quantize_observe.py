"""Calibration for static quantization: read the calibration data, run the float graph over it
with observers on the activations that feed quantized layers, and turn the observed ranges
into (scale, zero_point).

Ranges always include 0 (zero padding and ReLU zeros stay exact). Three ways to pick the range:
minmax (whole observed range), percentile (cut the tails at a percentile, from a histogram) and
entropy (the clipping threshold whose quantized histogram is closest in KL divergence to the
observed one, as TensorRT does).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import fx

from accelc import logs
from accelc.capture.export import import_entrypoint
from accelc.errors import PassError
from accelc.passes.channel_groups import is_layer, layer_name

BINS = 2048
BATCH = 256  # rows per calibration forward pass


# ---- data -------------------------------------------------------------------------------------

def source(config_data: str | None, loaded, pass_index: int | None):
    """(callable, field path, location) of the calibration data; (None, None, None) when none is set."""
    spec = config_data or (loaded.recipe.data.calibration if loaded is not None else None)
    if not spec:
        return None, None, None
    if loaded is None or (config_data and pass_index is None):  # a pass run outside a recipe
        root = loaded.root if loaded is not None else Path.cwd()
        return import_entrypoint(spec, root, None, field="quantize.data"), "quantize.data", None
    path = ("passes", pass_index, "data") if config_data else ("data", "calibration")
    field, where = ".".join(map(str, path)), loaded.where(*path)
    return import_entrypoint(spec, loaded.root, where, field=field), field, where


def normalise(result, example_inputs: tuple, field: str, where: str | None) -> list[torch.Tensor]:
    """The source's arrays as tensors, checked against the example inputs (dtype kind and every
    dimension but the batch). Accepts an array, a tuple/list of arrays or {name: array} in the
    model's input order, or (inputs, labels) as the training and validation sources return."""
    count = len(example_inputs)
    if isinstance(result, dict):
        result = list(result.values())
    elif isinstance(result, (np.ndarray, torch.Tensor)):
        result = [result]
    elif isinstance(result, (tuple, list)) and len(result) == 2 and count != 2:
        inputs = result[0]
        result = list(inputs.values()) if isinstance(inputs, dict) else \
            list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    result = list(result) if isinstance(result, (tuple, list)) else [result]
    if len(result) != count:
        raise PassError(f"the calibration data has {len(result)} input array(s); the model takes {count}",
                        code="E454", location=where, field=field)
    tensors = []
    for index, (array, example) in enumerate(zip(result, example_inputs)):
        tensor = torch.as_tensor(np.asarray(array))
        kind_ok = tensor.is_floating_point() == example.is_floating_point()
        if not kind_ok or tensor.dim() != example.dim() or tuple(tensor.shape[1:]) != tuple(example.shape[1:]):
            raise PassError(f"calibration input {index} has shape {list(tensor.shape)} ({tensor.dtype}); the model "
                            f"takes [batch, {', '.join(map(str, example.shape[1:]))}] ({example.dtype})",
                            code="E454", location=where, field=field)
        tensors.append(tensor.to(example.dtype))
    rows = {len(t) for t in tensors}
    if len(rows) != 1 or 0 in rows:
        raise PassError(f"calibration inputs have {sorted(rows)} rows; they need one, non-zero row count",
                        code="E454", location=where, field=field)
    return tensors


def load(fn, field: str, where: str | None, example_inputs: tuple, samples: int) -> list[torch.Tensor]:
    """Call the source and keep `samples` rows, drawn with a fixed seed (data sorted by label or
    time must not calibrate on one end only)."""
    try:
        result = fn()
    except Exception as exc:  # user code: report it as theirs, not as a compiler bug
        raise PassError(f"the calibration source failed: {type(exc).__name__}: {exc}"[:400], code="E454",
                        location=where, field=field) from None
    tensors = normalise(result, example_inputs, field, where)
    rows = len(tensors[0])
    if rows > samples:
        keep = torch.randperm(rows, generator=torch.Generator().manual_seed(0))[:samples].sort().values
        tensors = [t[keep] for t in tensors]
    return tensors


def rows_per_call(gm, most: int) -> int:
    """How many rows one call of the graph takes: one for a graph captured for batch 1 only."""
    return min(most, getattr(gm, "meta", {}).get("accelc_rows") or most)


def batches(tensors: list[torch.Tensor], size: int = BATCH):
    for start in range(0, len(tensors[0]), size):
        yield [t[start:start + size] for t in tensors]


# ---- observers --------------------------------------------------------------------------------

class _Recorder(fx.Interpreter):
    """Runs the graph and hands the value of every watched node to `visit(node, tensor)`."""

    def __init__(self, gm, watched: set, visit):
        super().__init__(gm)
        self.watched, self.visit = watched, visit

    def run_node(self, n):
        result = super().run_node(n)
        if n in self.watched:
            self.visit(n, result.detach())
        return result


def observe(gm, nodes: list, tensors: list[torch.Tensor], method: str, log: logs.Logger, percentile: float = 99.99,
            levels: int = 128) -> dict:
    """{node: (low, high)} ranges for the activations `nodes`, over the calibration tensors
    (`levels`: how many quantized values the range is split into, for entropy calibration)."""
    low = {n: math.inf for n in nodes}
    high = {n: -math.inf for n in nodes}

    broken = set()

    def minmax(node, value):
        if not bool(torch.isfinite(value).all()):
            broken.add(node)  # raised after the sweep: fx would wrap an error raised inside it
        low[node] = min(low[node], float(value.min()))
        high[node] = max(high[node], float(value.max()))

    _sweep(gm, nodes, tensors, minmax, log, "ranges")
    if broken:
        layers = sorted({layer_name(user) for n in broken for user in n.users if is_layer(user)})
        raise PassError(f"calibration gives non-finite activations (NaN or inf) at the input of {', '.join(layers)}: "
                        "no range to quantize", code="E454", hint="clean the calibration inputs, or keep those "
                        "layers float32 with quantize.skip")
    if method == "minmax":
        return {n: (min(low[n], 0.0), max(high[n], 0.0)) for n in nodes}
    hist = {n: np.zeros(BINS, np.float64) for n in nodes}
    edges = {n: (min(low[n], 0.0), max(high[n], 0.0, min(low[n], 0.0) + 1e-12)) for n in nodes}

    def histogram(node, value):
        lo, hi = edges[node]
        if method == "entropy":
            lo, hi = 0.0, max(-lo, hi)
            value = value.abs()
        hist[node] += torch.histc(value.float(), BINS, lo, hi).double().numpy()

    _sweep(gm, nodes, tensors, histogram, log, "histograms")
    ranges = {}
    for n in nodes:
        lo, hi = edges[n]
        if method == "percentile":
            ranges[n] = _percentile_range(hist[n], lo, hi, percentile)
        else:
            amax = _entropy_threshold(hist[n], max(-lo, hi), levels // 2 if lo < 0 else levels)
            ranges[n] = (max(lo, -amax), min(hi, amax))
    return ranges


def _sweep(gm, nodes, tensors, visit, log, what: str) -> None:
    """One pass over the calibration data with a text progress bar (ticks: a terminal's only)."""
    total, done, shown = len(tensors[0]), 0, -1
    recorder = _Recorder(gm, set(nodes), visit)
    with torch.no_grad():
        for chunk in batches(tensors, rows_per_call(gm, BATCH)):
            recorder.run(*chunk)
            done += len(chunk[0])
            step = 4 * done // total
            if step != shown:
                shown = step
                log.info(f"  calibrating {what} [{'#' * (5 * step):<20}] {done}/{total} samples", extra=logs.TICK)


def _percentile_range(hist: np.ndarray, lo: float, hi: float, percentile: float) -> tuple[float, float]:
    """Cut (100 - percentile)% of the mass from each tail, at histogram-bin resolution."""
    cdf = np.cumsum(hist) / max(hist.sum(), 1.0)
    width = (hi - lo) / BINS
    tail = (100.0 - percentile) / 100.0
    first = int(np.searchsorted(cdf, tail, side="right"))
    last = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    return min(lo + first * width, 0.0), max(lo + (last + 1) * width, 0.0)


def _entropy_threshold(hist: np.ndarray, amax: float, levels: int) -> float:
    """The |x| clipping threshold minimising KL(P || Q) (TensorRT's entropy calibration): P is
    the histogram clipped at the threshold (outliers piled into the last bin), Q the same mass
    quantized to `levels` levels and spread back over P's non-empty bins."""
    if hist.sum() == 0 or amax <= 0:
        return amax
    best, best_kl = BINS, math.inf
    for stop in range(levels, BINS + 1, 16):
        p = hist[:stop].copy()
        p[-1] += hist[stop:].sum()
        nonzero = p > 0
        groups = np.array_split(np.arange(stop), levels)
        q = np.zeros(stop)
        for index in groups:
            mass, count = p[index].sum(), nonzero[index].sum()
            if count:
                q[index] = np.where(nonzero[index], mass / count, 0.0)
        pn, qn = p / p.sum(), q / max(q.sum(), 1e-30)  # q > 0 wherever p > 0, by construction
        kl = float(np.sum(pn[nonzero] * np.log(pn[nonzero] / qn[nonzero])))
        if kl < best_kl:
            best, best_kl = stop, kl
    return (best + 0.5) * amax / BINS if best < BINS else amax


# ---- qparams ----------------------------------------------------------------------------------

def activation_qparams(low: float, high: float, qmin: int, qmax: int) -> tuple[float, int]:
    """(scale, zero_point) of the asymmetric uint8 scheme for [low, high] (which holds 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = float(np.float32((high - low) / (qmax - qmin)))
    if not scale > 0 or not math.isfinite(scale):
        scale = 1.0
    zero_point = int(np.clip(qmin - np.round(np.float32(low) / np.float32(scale)), qmin, qmax))
    return scale, zero_point


def weight_qparams(weight: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per output channel): symmetric in [-127, 127]."""
    flat = weight.detach().float().reshape(len(weight), -1)
    amax = flat.abs().amax(dim=1) if per_channel else flat.abs().amax().expand(len(weight))
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(torch.float32)
    shaped = scale.reshape(-1, *([1] * (weight.dim() - 1)))
    quantized = torch.clamp(torch.round(weight.detach().float() / shaped), -127, 127).to(torch.int8)
    return quantized, scale.clone()
