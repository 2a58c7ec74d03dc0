"""merge_linear: consecutive Linear layers with only no-ops between become one, numerically equal
to eager PyTorch; non-linear gaps, shared outputs and MAC-raising bottlenecks are left alone."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from accelc.passes import PassContext
from accelc.passes.merge_linear import MergeLinear

from tests.fixtures.pass_models import export

LINEAR = torch.ops.aten.linear.default


class Chain(nn.Module):
    """a -> dropout -> b -> c (three mergeable), relu, then d -> e with e's bias off."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 12), nn.Linear(12, 6)
        self.d, self.e = nn.Linear(6, 10), nn.Linear(10, 4, bias=False)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        y = self.c(self.b(self.drop(self.a(x))))
        return self.e(self.d(torch.relu(y)))


class Bottleneck(nn.Module):
    """64 -> 4 -> 64: two layers cost 512 MACs per row, one merged layer 4096."""

    def __init__(self):
        super().__init__()
        self.down, self.up = nn.Linear(64, 4), nn.Linear(4, 64)

    def forward(self, x):
        return self.up(self.down(x))


class SharedHidden(nn.Module):
    """The first Linear's output is also returned: merging would not remove it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.a(x)
        return self.b(h), h


def merge(model: nn.Module, x: torch.Tensor):
    gm = export(model.eval(), (x,))
    return MergeLinear(MergeLinear.Config(kind="merge_linear")).run(gm, PassContext((x,), None))


def linears(gm) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target == LINEAR)


def test_chains_merge_and_match_eager():
    torch.manual_seed(0)
    model, x = Chain(), torch.randn(5, 8)
    result = merge(model, x)
    assert result.changed and linears(result.graph) == 2
    assert result.stats["merged"] == [["a", "b"], ["b", "c"], ["d", "e"]]
    result.graph.graph.lint()
    torch.testing.assert_close(result.graph(x), model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.graph(x[:2]), model(x[:2]), rtol=1e-5, atol=1e-5)
    params = sum(t.numel() for t in result.graph.state_dict().values())
    assert params == (8 * 6 + 6) + (6 * 4 + 4)  # merged weights and biases, nothing stale left behind


@pytest.mark.parametrize("model,reason", [(Bottleneck(), "bottleneck 64->4->64"), (SharedHidden(), None)])
def test_left_alone(model, reason):
    x = torch.randn(3, 8 if isinstance(model, SharedHidden) else 64)
    result = merge(model, x)
    assert not result.changed and linears(result.graph) == 2
    if reason:
        assert reason in result.stats["skipped"][0]["reason"]
    torch.testing.assert_close(result.graph(x), model(x), rtol=0, atol=0)


def test_nonlinear_gap_is_not_merged():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4)).eval()
    x = torch.randn(2, 4)
    result = merge(model, x)
    assert not result.changed and result.stats == {"merged": [], "skipped": []}
