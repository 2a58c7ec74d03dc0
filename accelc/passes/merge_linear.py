"""merge_linear: Linear(Linear(x)) with nothing non-linear between becomes one Linear.

y = W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2). Only merged when it does not raise the MACs:
a low-rank bottleneck (i -> m -> o with m small) is cheaper as two layers and is left alone.
"""
from __future__ import annotations

import torch
from torch import fx

from accelc.passes.base import Pass, PassContext, PassResult
from accelc.passes.channel_groups import layer_name
from accelc.passes.configs.merge_linear import MergeLinearConfig
from accelc.passes.fold import attach, drop_unused, fetch

aten = torch.ops.aten
LINEAR = aten.linear.default
# ops between the two Linears that change no value at inference
IDENTITIES = {
    aten.dropout.default: lambda n: not n.args[2],  # dropout(x, p, train=False)
    aten.clone.default: lambda n: True,
    aten.contiguous.default: lambda n: True,
    aten.alias.default: lambda n: True,
    aten.detach.default: lambda n: True,
}


class MergeLinear(Pass):
    Config = MergeLinearConfig

    def run(self, gm, ctx: PassContext) -> PassResult:
        merged, skipped, replaced = [], [], set()
        for second in list(gm.graph.nodes):
            first = _first_of_pair(second)
            if first is None:
                continue
            problem = _problem(gm, first, second)
            if problem:
                skipped.append({"pair": [layer_name(first), layer_name(second)], "reason": problem})
                continue
            replaced |= {a.target for a in (*first.args[1:3], *second.args[1:3]) if isinstance(a, fx.Node)}
            merged.append([layer_name(first), layer_name(second)])
            _merge(gm, first, second)
        gm.graph.eliminate_dead_code()
        drop_unused(gm, replaced)
        gm.recompile()
        return PassResult(gm, bool(merged), {"merged": merged, "skipped": skipped})


def _first_of_pair(second: fx.Node) -> fx.Node | None:
    """The Linear feeding `second` through identity ops only, each used once; else None."""
    if second.op != "call_function" or second.target != LINEAR:
        return None
    node = second.args[0]
    while isinstance(node, fx.Node) and len(node.users) == 1:
        if node.op == "call_function" and node.target == LINEAR:
            return node
        rule = IDENTITIES.get(node.target) if node.op == "call_function" else None
        if rule is None or not rule(node):
            return None
        node = node.args[0]
    return None


def _problem(gm, first: fx.Node, second: fx.Node) -> str | None:
    params = [a for a in (*first.args[1:3], *second.args[1:3]) if a is not None]
    if not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in params):
        return "a weight or bias is computed in the graph"
    hidden, inputs = fetch(gm, first.args[1]).shape
    outputs = fetch(gm, second.args[1]).shape[0]
    if inputs * outputs > hidden * (inputs + outputs):
        return (f"bottleneck {inputs}->{hidden}->{outputs}: one {inputs}x{outputs} layer would cost "
                f"{inputs * outputs} MACs per row instead of {hidden * (inputs + outputs)}")
    return None


def _merge(gm, first: fx.Node, second: fx.Node) -> None:
    """Point `second` at the merged weights and erase what fed it (eval dropout counts as
    impure to fx's dead-code elimination, so the chain is removed here)."""
    between = second.args[0]
    w1, w2 = fetch(gm, first.args[1]).double(), fetch(gm, second.args[1]).double()
    b1 = fetch(gm, first.args[2] if len(first.args) > 2 else None)
    b2 = fetch(gm, second.args[2] if len(second.args) > 2 else None)
    dtype = fetch(gm, second.args[1]).dtype
    weight = attach(gm, second.args[1].target + "_merged", (w2 @ w1).to(dtype), second)
    bias = None
    if b1 is not None or b2 is not None:
        value = (w2 @ b1.double() if b1 is not None else 0) + (b2.double() if b2 is not None else 0)
        bias = attach(gm, second.args[1].target + "_merged_bias", value.to(dtype), second)
    second.args = (first.args[0], weight, bias)
    while between is not first:
        before = between.args[0]
        gm.graph.erase_node(between)
        between = before
    gm.graph.erase_node(first)
