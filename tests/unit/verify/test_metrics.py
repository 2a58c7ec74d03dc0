"""accelc.verify.metrics against hand-computed values and a brute-force pairwise AUC."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from accelc.verify import metrics
from accelc.errors import DataError


def pairwise_auc(labels, scores) -> float:
    """The definition: P(score of a positive > score of a negative), ties count one half."""
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("labels, scores, want", [
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),  # 3 of 4 pairs ordered
    ([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9], 0.875),  # one tied pair counts 1/2: 3.5 / 4
    ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),  # all tied
    ([0, 0, 1], [0.2, 0.3, 0.9], 1.0),
    ([1, 1, 0], [0.2, 0.3, 0.9], 0.0),
    ([1, 0, 1, 0, 1], [3, 1, 2, 2, 1], 4.0 / 6.0),  # pairs: (3>1,3>2),(2>1,2=2),(1=1,1<2) -> 1+1+1+.5+.5+0
])
def test_auc_hand_values(labels, scores, want):
    assert metrics.auc(labels, scores) == pytest.approx(want, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_equals_pairwise_definition_with_ties(pairs):
    labels, scores = zip(*pairs)
    assume(len(set(labels)) == 2)
    assert metrics.auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_auc_takes_column_vectors_and_is_rank_only():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.random(200)
    assert metrics.auc(y, s[:, None]) == metrics.auc(y, np.exp(3 * s)) == metrics.auc(y, s)


def test_auc_needs_both_classes_and_nan_scores_give_nan():
    with pytest.raises(DataError, match="both classes"):
        metrics.auc([1, 1, 1], [0.1, 0.2, 0.3])
    assert math.isnan(metrics.auc([0, 1], [0.1, float("nan")]))


def test_binary_metrics_reject_non_binary_labels():
    with pytest.raises(DataError, match="0 or 1"):
        metrics.accuracy([0, 2], [0.1, 0.9])


def test_accuracy_logloss_mse_top1_hand_values():
    # predictions at 0.5: 1, 0, 0, 1 against 1, 0, 1, 0 -> 2 of 4 right
    assert metrics.accuracy([1, 0, 1, 0], [0.9, 0.4, 0.3, 0.5]) == 0.5
    # -(ln 0.8 + ln 0.6) / 2
    assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx((0.2231435513 + 0.5108256238) / 2, abs=1e-9)
    assert metrics.logloss([1], [0.0]) == pytest.approx(-math.log(1e-7), rel=1e-6)  # clipped, not inf
    assert metrics.mse([1, 2, 3], [1, 2, 5]) == pytest.approx(4 / 3)
    assert metrics.top1([1, 1, 1], [[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("name, original, compiled, want", [
    ("auc", 0.90, 0.85, 0.05), ("accuracy", 0.8, 0.81, -0.01), ("top1", 0.7, 0.6, 0.1),
    ("logloss", 0.30, 0.35, 0.05), ("mse", 2.0, 1.5, -0.5),
])
def test_drop_is_positive_when_worse(name, original, compiled, want):
    assert metrics.drop(name, original, compiled) == pytest.approx(want)


def test_gate_passes_within_budget_and_fails_beyond_or_on_nan():
    labels = [0, 0, 1, 1]
    good = [0.1, 0.4, 0.35, 0.8]  # AUC 0.75
    report = metrics.gate("auc", 0.0, labels, good, good)
    assert report["passed"] and report["drop"] == 0.0 and report["original"] == 0.75
    worse = [0.1, 0.4, 0.3, 0.35]  # AUC 0.5: drop 0.25
    assert metrics.gate("auc", 0.3, labels, good, worse)["passed"]
    failed = metrics.gate("auc", 0.2, labels, good, worse)
    assert not failed["passed"] and failed["drop"] == pytest.approx(0.25)
    assert not metrics.gate("auc", 1.0, labels, good, [0.1, float("nan"), 0.3, 0.4])["passed"]


def test_evaluate_runs_in_chunks_and_scores_the_first_output():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((103, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    sizes = []

    def run(arrays):
        sizes.append(len(arrays[0]))
        return [arrays[0][:, :1], np.zeros(1)]

    report = metrics.evaluate("auc", 0.0, run, run, [x], y, batch=25)
    assert sizes == [25, 25, 25, 25, 3] * 2
    assert report["original"] == report["compiled"] == 1.0 and report["examples"] == 103
