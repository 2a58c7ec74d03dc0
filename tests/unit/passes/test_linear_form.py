"""Constant-weight matrix products (GPT-2's Conv1D: addmm over a [in, out] weight; `x @ W`) are
(and matmul) written as aten.linear, so the quantize pass finds them: same outputs as eager, and int8 layers
that match their numpy reference."""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch import nn

from accelc.passes import PassContext
from accelc.passes.linear_form import as_linear
from accelc.passes.quantize import Quantize, QuantizeConfig
from tests.fixtures.passcheck import export_graph, ops


class Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D: y = x W + b with W stored [in, out]."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(inputs, outputs) * 0.2)
        self.bias = nn.Parameter(torch.randn(outputs) * 0.1)

    def forward(self, x):
        shape = x.shape[:-1] + (self.weight.shape[1],)
        return torch.addmm(self.bias, x.view(-1, x.shape[-1]), self.weight).view(shape)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc, self.c_proj = Conv1D(16, 32), Conv1D(32, 16)
        self.head = nn.Parameter(torch.randn(16, 12) * 0.2)

    def forward(self, x):
        return torch.relu(self.c_proj(torch.relu(self.c_fc(x)))) @ self.head  # matmul over a parameter


def graph():
    torch.manual_seed(0)
    return Block().eval(), torch.randn(2, 5, 16)


def test_constant_weight_products_become_linear_with_the_same_outputs():
    model, x = graph()
    gm = export_graph(model, x)
    before = gm.code
    out, count = as_linear(gm)
    assert count == 3 and gm.code == before  # a copy: the captured graph is the reference, untouched
    assert ops(out)["linear"] == 3 and not {"addmm", "mm", "matmul"} & set(ops(out))
    np.testing.assert_allclose(out(x).detach().numpy(), model(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not any(name.endswith(("c_fc.weight", "c_proj.weight")) for name, _ in out.named_parameters())


def test_a_product_of_two_activations_is_left_alone():
    class Scores(nn.Module):
        def forward(self, q, k):
            return torch.mm(q, k.t())

    gm = export_graph(Scores(), torch.randn(4, 8), torch.randn(6, 8))
    assert as_linear(gm) == (gm, 0)


def test_dynamic_int8_quantizes_gpt2_style_layers():
    model, x = graph()
    result = Quantize(QuantizeConfig(kind="quantize", mode="dynamic", min_outputs=1)).run(
        export_graph(model, x), PassContext((x,)))
    rows = result.stats["layers"]
    assert Counter(r["dtype"] for r in rows) == Counter({"int8": 3}), rows
    assert result.stats["as_linear"] == 3
    # int8 per-row activations x per-channel weights: close to float, not equal
    want, got = model(x).detach().numpy(), result.graph(x).detach().numpy()
    assert 0 < np.abs(got - want).max() < 0.05 * np.abs(want).max()


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 8, 1)
        with torch.no_grad():  # statistics a trained model would have, not the identity defaults
            self.bn.running_mean.uniform_(-1, 1), self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5), self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def test_int8_folds_batchnorm_into_the_convolution_before_quantizing_it():
    torch.manual_seed(0)
    model, x = ConvBN().eval(), torch.randn(2, 3, 8, 8)
    gm = export_graph(model, x)
    result = Quantize(QuantizeConfig(kind="quantize", mode="dynamic", min_outputs=1)).run(gm, PassContext((x,)))
    assert result.stats["batchnorm_folded"] and "batch_norm" not in ops(result.graph)
    assert "batch_norm" in ops(gm)  # the captured graph is left as it was
    assert Counter(r["dtype"] for r in result.stats["layers"]) == Counter({"int8": 2})
    want, got = model(x).detach().numpy(), result.graph(x).detach().numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
