"""Signal-to-quantization-noise ratio: the per-output criterion that holds where a per-element
tolerance cannot (deep int8 graphs, where a one-ulp float difference before a quantize flips a
quantum and the flips compound through the layers), while a wrong kernel still shows as noise.

SQNR = 10 log10(sum(ref^2) / sum((got - ref)^2)) over all samples of one batch size. Torch-free."""
from __future__ import annotations

import math

import numpy as np

# The floors a recipe with an int8 quantize pass gets when it sets no verify.sqnr (dB). Chosen from
# the SQNRs of right builds and of injected faults (docs/own-model.md, "Verifying int8 builds").
INT8_DEFAULTS = {"vs_rewritten": 40.0, "vs_original": 15.0}


def energies(want: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(sum of want^2, sum of (got - want)^2); positions equal in both (NaN, inf included) add no
    noise, and a non-finite difference (a NaN or inf on one side only) makes the noise infinite."""
    want64, got64 = np.asarray(want, np.float64), np.asarray(got, np.float64)
    if want64.shape != got64.shape:
        return _finite_energy(want64), math.inf
    same = (want64 == got64) | (np.isnan(want64) & np.isnan(got64))
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.where(same, 0.0, got64 - want64)
    if not np.isfinite(error).all():
        return _finite_energy(want64), math.inf
    return _finite_energy(want64), float(np.sum(error * error))


def _finite_energy(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.sum(finite * finite))


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise): inf for no noise at all, -inf for noise on a silent output."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0 or math.isinf(noise):
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def floors(recipe) -> dict[str, float | None] | None:
    """The recipe's SQNR floors ({"vs_rewritten": dB or None, "vs_original": dB or None}): its
    verify.sqnr, else INT8_DEFAULTS when a pass quantizes to int8, else None (per element only)."""
    gate = recipe.verify.sqnr
    if gate is not None:
        return {"vs_rewritten": gate.vs_rewritten, "vs_original": gate.vs_original}
    if any(p.kind == "quantize" and getattr(p, "dtype", "int8") == "int8" for p in recipe.passes):
        return dict(INT8_DEFAULTS)
    return None
