"""Task metrics in numpy (no sklearn) and the metric gate that judges a compiled model by them.

Torch-free: the gate compares outputs that the caller already computed. Binary metrics take the
model's churn-style probability output ([n] or [n, 1]); top1 takes class scores [n, classes].
"""
from __future__ import annotations

import numpy as np

from accelc.errors import DataError

HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "top1": True, "logloss": False, "mse": False}


def _binary(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores as float64 vectors of one length; labels must be 0/1."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64)
    s = s.reshape(-1) if s.ndim <= 1 or s.shape[-1] == 1 else s
    if s.ndim != 1 or len(s) != len(y):
        raise DataError(f"{len(y)} labels but model outputs of shape {list(np.shape(scores))}; a binary metric "
                        "needs one score per example", code="E358")
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataError("binary metrics need labels that are 0 or 1", code="E358")
    return y, s


def auc(labels, scores) -> float:
    """Area under the ROC curve: the Mann-Whitney U statistic with average ranks for ties.

    NaN when a score is not finite (a broken model must not look good)."""
    y, s = _binary(labels, scores)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        raise DataError(f"AUC needs both classes; the labels have {positives} positive and {negatives} negative "
                        "examples", code="E358")
    if not np.isfinite(s).all():
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    # first index of each run of equal scores, and its length: tied scores share their mean rank
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    lengths = np.diff(np.r_[starts, len(s)])
    mean_rank = starts + (lengths + 1) / 2.0  # ranks are 1-based
    ranks[order] = np.repeat(mean_rank, lengths)
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def accuracy(labels, scores, threshold: float = 0.5) -> float:
    """Share of examples whose probability is on the right side of `threshold`."""
    y, s = _binary(labels, scores)
    if not np.isfinite(s).all():
        return float("nan")
    return float(np.mean((s >= threshold) == (y == 1)))


def logloss(labels, probabilities, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps]."""
    y, p = _binary(labels, probabilities)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def mse(targets, predictions) -> float:
    """Mean squared error over all elements."""
    t = np.asarray(targets, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    if p.size != t.size:
        raise DataError(f"{t.size} targets but {p.size} predictions", code="E358")
    return float(np.mean((p.reshape(-1) - t.reshape(-1)) ** 2))


def top1(labels, scores) -> float:
    """Share of examples whose highest-scoring class is the label."""
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or len(s) != len(y):
        raise DataError(f"top1 needs scores [n, classes] for {len(y)} labels, got {list(s.shape)}", code="E358")
    if not np.isfinite(s).all():
        return float("nan")
    return float(np.mean(np.argmax(s, axis=1) == y))


METRICS = {"auc": auc, "accuracy": accuracy, "logloss": logloss, "mse": mse, "top1": top1}


def drop(name: str, original: float, compiled: float) -> float:
    """How much worse the compiled model is: positive = worse, whatever the metric's direction."""
    return original - compiled if HIGHER_IS_BETTER[name] else compiled - original


def gate(name: str, max_drop: float, labels, original_outputs, compiled_outputs) -> dict:
    """The metric of both models on the same labels, and whether the drop is within budget.

    A NaN metric (non-finite outputs) never passes."""
    metric = METRICS[name]
    original, compiled = metric(labels, original_outputs), metric(labels, compiled_outputs)
    worse = drop(name, original, compiled)
    passed = bool(np.isfinite(worse) and worse <= max_drop)
    return {"name": name, "original": original, "compiled": compiled, "drop": worse, "max_drop": max_drop,
            "examples": int(np.asarray(labels).reshape(-1).size), "passed": passed}


def _in_batches(run, inputs: list[np.ndarray], size: int) -> np.ndarray:
    """The first output of `run` over consecutive row chunks of at most `size`, concatenated."""
    rows = len(inputs[0])
    return np.concatenate([np.asarray(run([a[i:i + size] for a in inputs])[0]) for i in range(0, rows, size)])


def evaluate(name: str, max_drop: float, run_compiled, run_reference, inputs: list[np.ndarray], labels,
             batch: int) -> dict:
    """The gate over a whole validation set, run in chunks the artifact was built for.

    `run_*` take a list of input arrays and return a list of output arrays (the first is scored)."""
    return gate(name, max_drop, labels, _in_batches(run_reference, inputs, batch),
                _in_batches(run_compiled, inputs, batch))
