"""simplify: no-ops (eval dropout, clone, contiguous, detach) vanish, reshape chains collapse,
dead code goes, and the result still re-exports (a view needs the layout a removed clone gave)."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from tests.fixtures.passcheck import apply, check_pass, export_graph, ops

RESHAPE_OPS = ("view", "reshape", "_unsafe_view")


def reshapes(gm) -> int:
    counts = ops(gm)
    return sum(counts[name] for name in RESHAPE_OPS)


class NoOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.drop = nn.Linear(6, 6), nn.Dropout(0.5)

    def forward(self, x):
        y = self.drop(self.fc(x)).clone()
        return torch.relu(y.contiguous().detach()) + 1


def test_noops_are_removed():
    torch.manual_seed(0)
    out, report = check_pass("simplify", NoOps(), torch.randn(3, 6))
    counts = ops(out)
    assert counts["dropout"] == counts["clone"] == counts["contiguous"] == counts["detach"] == 0
    assert counts["linear"] == counts["relu"] == counts["add"] == 1
    assert report["changed"] and len(report["rewritten"]) >= 3


def test_training_dropout_is_kept():
    """dropout(train=True) is random, not an identity."""
    torch.manual_seed(0)
    gm = export_graph(NoOps().train(), torch.randn(3, 6))
    out, _ = apply(gm, "simplify")
    assert ops(out)["dropout"] == 1 and ops(out)["clone"] == 0


class Chain(nn.Module):
    def forward(self, x):
        b = x.shape[0]
        return torch.sigmoid(x.view(b, 4, 6).reshape(b, 24).view(b, 2, 3, 4).reshape(b, 6, 4))


def test_reshape_chain_collapses_to_one():
    x = torch.randn(2, 24)
    assert reshapes(export_graph(Chain(), x)) == 4
    out, report = check_pass("simplify", Chain(), x)
    assert reshapes(out) == 1 and report["changed"]


class SharedReshape(nn.Module):
    """The middle reshape has two users: it must stay (and so must its input chain link)."""

    def forward(self, x):
        mid = x.view(2, 12)
        return mid.view(4, 6).sum(0), mid.sum(1)


def test_reshape_with_two_users_is_not_merged():
    out, _ = check_pass("simplify", SharedReshape(), torch.randn(24))
    assert reshapes(out) == 2


class TransposeThenView(nn.Module):
    """The multi-head-attention pattern: view() after a transpose is valid only because of
    contiguous(); once simplify removes it the view must become a layout-free reshape."""

    def forward(self, x):
        return x.transpose(0, 1).contiguous().view(x.shape[1], -1) * 2


def test_view_after_removed_contiguous_still_exports():
    out, report = check_pass("simplify", TransposeThenView(), torch.randn(3, 4, 5))
    assert ops(out)["contiguous"] == 0 and ops(out)["view"] == 0 and ops(out)["reshape"] == 1
    assert report["views_as_reshape"] == 1


def test_transformer_encoder_layer_survives_simplify():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
    out, _ = check_pass("simplify", layer, torch.randn(2, 5, 8))
    assert ops(out)["dropout"] == 0 and ops(out)["contiguous"] == 0


def test_dead_code_is_dropped():
    gm = export_graph(nn.ReLU(), torch.randn(4))
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with gm.graph.inserting_after(x):
        gm.graph.call_function(torch.ops.aten.mul.Tensor, (x, x))  # computed, never used
    gm.recompile()
    out, report = apply(gm, "simplify")
    assert report["dead_nodes"] == 1 and ops(out)["mul"] == 0 and ops(gm)["mul"] == 1


def test_unchanged_graph_reports_no_change():
    torch.manual_seed(0)
    out, report = check_pass("simplify", nn.Sequential(nn.Linear(3, 3), nn.ReLU()), torch.randn(2, 3))
    assert not report["changed"] and report["rewritten"] == [] and report["dead_nodes"] == 0


SHAPES = [(24,), (2, 12), (4, 6), (2, 3, 4), (6, 4), (3, 8), (2, 2, 6)]
STEPS = ["view", "reshape", "flatten", "clone", "contiguous", "dropout", "transpose"]


class RandomChain(nn.Module):
    """A random mix of reshapes, no-ops and transposes over a [batch, 24] tensor."""

    def __init__(self, plan: list[tuple[str, tuple]]):
        super().__init__()
        self.plan = plan

    def forward(self, x):
        b = x.shape[0]
        for step, shape in self.plan:
            if step in ("view", "reshape"):
                x = x.reshape(b, *shape) if step == "reshape" or x.is_contiguous() else x.contiguous().view(b, *shape)
            elif step == "flatten":
                x = x.flatten(1)
            elif step in ("clone", "contiguous"):
                x = getattr(x, step)()
            elif step == "dropout":
                x = nn.functional.dropout(x, 0.3, training=False)
            elif x.dim() > 2:
                x = x.transpose(1, -1)
        return x.reshape(b, 24) * 1.5


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(STEPS), st.sampled_from(SHAPES)), min_size=1, max_size=6))
def test_random_chains_keep_values_and_leave_no_noops(plan):
    out, _ = check_pass("simplify", RandomChain(plan), torch.randn(2, 24), atol=0, rtol=0)
    counts = ops(out)
    assert counts["clone"] == counts["contiguous"] == counts["dropout"] == counts["view"] == 0
    for node in out.graph.nodes:  # no reshape feeds a reshape that is its only user
        if node.op == "call_function" and getattr(node.target, "_opname", "") in RESHAPE_OPS:
            parent = node.args[0]
            assert not (getattr(parent.target, "_opname", "") in RESHAPE_OPS and len(parent.users) == 1)
