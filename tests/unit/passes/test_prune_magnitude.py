"""Unstructured magnitude pruning: exactly the smallest weights become zero, nothing else changes,
and the report says plainly that dense kernels gain no speed from it."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from accelc.passes import PassContext
from accelc.passes.prune import Prune, PruneConfig

from tests.fixtures.pass_models import captured


def sparsify(gm, inputs, **config):
    cfg = PruneConfig(kind="prune", method="magnitude", **config)
    return Prune(cfg).run(gm, PassContext(inputs, None))


def numpy_masked(model: torch.nn.Module, amount: float, skip=()) -> dict[str, np.ndarray]:
    """Reference: every Linear/Conv weight with its floor(amount * n) smallest |w| set to zero."""
    masked = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name not in skip:
            w = module.weight.detach().numpy().copy()
            order = np.argsort(np.abs(w).reshape(-1), kind="stable")
            w.reshape(-1)[order[:math.floor(amount * w.size + 1e-9)]] = 0
            masked[name] = w
    return masked


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_smallest_weights_zeroed_and_outputs_match_numpy_reference(name):
    model, inputs, gm = captured(name)
    result = sparsify(gm, inputs, amount=0.6)
    reference = numpy_masked(model, 0.6)
    rows = {row["layer"]: row for row in result.stats["layers"]}
    assert set(rows) == set(reference)
    for layer, w in reference.items():
        assert rows[layer]["zeros_after"] == int((w == 0).sum()) == math.floor(0.6 * w.size)
    eager = copy.deepcopy(model)
    with torch.no_grad():
        for layer, w in reference.items():
            eager.get_submodule(layer).weight.copy_(torch.from_numpy(w))
    torch.testing.assert_close(result.graph(*inputs), eager(*inputs), rtol=1e-5, atol=1e-6)


def test_report_says_no_speed_and_sizes_are_unchanged():
    model, inputs, gm = captured("cnn")
    result = sparsify(gm, inputs, amount=0.5)
    assert result.changed
    assert "no" in result.stats["note"] and "faster" in result.stats["note"]
    assert result.stats["params"]["before"] == result.stats["params"]["after"]
    assert result.stats["macs_per_sample"]["before"] == result.stats["macs_per_sample"]["after"]


def test_skip_and_per_layer_amounts():
    model, inputs, gm = captured("mlp")
    result = sparsify(gm, inputs, amount=0.5, layers={"head": 0.25}, skip=["body.3"])
    rows = {row["layer"]: row for row in result.stats["layers"]}
    assert rows["body.3"]["zeros_after"] == 0 and rows["body.3"]["status"] == "skipped"
    assert rows["head"]["zeros_after"] == math.floor(0.25 * 24)
    assert rows["body.0"]["zeros_after"] == math.floor(0.5 * 12 * 32)


def test_amount_zero_is_identity():
    model, inputs, gm = captured("cnn")
    result = sparsify(gm, inputs, amount=0.0)
    assert not result.changed
    torch.testing.assert_close(result.graph(*inputs), model(*inputs), rtol=0, atol=0)
