"""Cleaning and standardisation in numpy: statistics are learnt on the training split only.

This is the reference pipeline. `model.Preprocess` computes the same steps as torch ops so that
they are compiled into the artifact; tests hold the two equal. Steps, per numeric column:
impossible values (outside the schema's valid range) become missing, missing values get the
training median, heavy tails are clipped to training quantiles, skewed counts get log1p, and
the result is standardised with the training mean and std. Categorical codes are one-hot
encoded; a missing or unknown code encodes as all zeros.
"""
from __future__ import annotations

import numpy as np

from .schema import CATEGORICAL, NUMERIC

QUANTILES = (0.005, 0.995)
STAT_KEYS = ("impute", "clip_lo", "clip_hi", "mean", "std")  # learnt; saved with the weights
N = len(NUMERIC)
VALID_LO = np.array([c.valid[0] for c in NUMERIC], np.float32)
VALID_HI = np.array([c.valid[1] for c in NUMERIC], np.float32)
LOG_MASK = np.array([c.log for c in NUMERIC])


def _column_stats(values: np.ndarray, column) -> tuple[float, float, float]:
    """(impute, clip_lo, clip_hi) from one column's valid training values."""
    if column.kind == "binary":
        return float(values.mean() >= 0.5), column.valid[0], column.valid[1]  # the mode
    low, high = np.quantile(values, QUANTILES) if column.clipped_by_quantile else column.valid
    return float(np.median(values)), float(low), float(high)


def fit(raw_train: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of the training split's raw vectors [rows, RAW_WIDTH]."""
    num = np.asarray(raw_train, np.float32)[:, :N]
    valid = ~np.isnan(num) & (num >= VALID_LO) & (num <= VALID_HI)
    rows = []
    for j, column in enumerate(NUMERIC):
        values = num[valid[:, j], j].astype(np.float64)
        if not len(values):
            raise ValueError(f"column '{column.name}' has no valid value in the training split")
        rows.append(_column_stats(values, column))
    impute, clip_lo, clip_hi = (np.array(v, np.float32) for v in zip(*rows))
    stats = {"impute": impute, "clip_lo": clip_lo, "clip_hi": clip_hi,
             "mean": np.zeros(N, np.float32), "std": np.ones(N, np.float32)}
    cleaned = clean(raw_train, stats).astype(np.float64)
    std = cleaned.std(axis=0)
    stats["mean"] = cleaned.mean(axis=0).astype(np.float32)
    stats["std"] = np.where(std > 1e-6, std, 1.0).astype(np.float32)  # a constant column stays put
    return stats


def clean(raw: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Numeric columns after impute, clip and log1p (before standardisation), float32."""
    num = np.asarray(raw, np.float32)[:, :N]
    bad = np.isnan(num) | (num < VALID_LO) | (num > VALID_HI)
    num = np.where(bad, stats["impute"], num)
    num = np.minimum(np.maximum(num, stats["clip_lo"]), stats["clip_hi"])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(LOG_MASK, np.log1p(num), num).astype(np.float32)


def one_hot(raw: np.ndarray) -> np.ndarray:
    """Categorical codes -> one-hot blocks in schema order; missing/unknown codes -> zeros."""
    blocks = []
    for k, column in enumerate(CATEGORICAL):
        codes = np.asarray(raw, np.float32)[:, N + k: N + k + 1]
        blocks.append(codes == np.arange(len(column.categories), dtype=np.float32))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def transform(raw: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Raw vectors [rows, RAW_WIDTH] -> model features [rows, FEATURES], float32."""
    num = (clean(raw, stats) - stats["mean"]) / stats["std"]
    return np.concatenate([num, one_hot(raw)], axis=1)
