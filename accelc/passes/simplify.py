"""simplify: remove no-ops (eval dropout, clones, aliases), collapse reshape chains,
and drop dead code. Rules as data, one comment each."""
from __future__ import annotations

import torch

from accelc.passes.base import Pass, PassContext, PassResult
from accelc.passes.configs.simplify import SimplifyConfig

aten = torch.ops.aten
RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}

# op -> op with the same values that does not depend on the input's memory layout.
LAYOUT_FREE = {
    aten.view.default: aten.reshape.default,          # view needs compatible strides; reshape copies
    aten._unsafe_view.default: aten.reshape.default,  # when it must, so clones before it can go
}

# op -> predicate on the node: when true, the node's output equals its first argument.
IDENTITY_RULES = {
    aten.dropout.default: lambda n: not n.args[2],             # dropout(x, p, train=False) is x
    aten.alpha_dropout.default: lambda n: not n.args[2],       # same for alpha dropout
    aten.clone.default: lambda n: True,                        # a copy computes nothing
    aten.alias.default: lambda n: True,                        # a view of the whole tensor
    aten.detach.default: lambda n: True,                       # no autograd at inference
    aten.contiguous.default: lambda n: True,                   # the compiler picks layouts
}


class Simplify(Pass):
    Config = SimplifyConfig

    def run(self, gm, ctx: PassContext) -> PassResult:
        removed: list[str] = []
        relaxed = 0
        for node in list(gm.graph.nodes):
            if node.op != "call_function":
                continue
            if node.target in LAYOUT_FREE:  # first: a removed contiguous() may have fed this view
                node.target = LAYOUT_FREE[node.target]
                relaxed += 1
            rule = IDENTITY_RULES.get(node.target)
            if rule is not None and isinstance(node.args[0], torch.fx.Node) and rule(node):
                node.replace_all_uses_with(node.args[0])
                removed.append(node.name)
                gm.graph.erase_node(node)  # explicitly: fx's dead-code pass keeps random ops like dropout
            elif node.target in RESHAPES and getattr(node.args[0], "target", None) in RESHAPES \
                    and len(node.args[0].users) == 1:
                # reshape(reshape(x, a), b) is reshape(x, b)
                node.args = (node.args[0].args[0], *node.args[1:])
                removed.append(node.name + ".chain")
        before = len(gm.graph.nodes)
        gm.graph.eliminate_dead_code()
        dead = before - len(gm.graph.nodes)
        gm.recompile()
        return PassResult(gm, bool(removed or dead or relaxed),
                          {"rewritten": removed, "views_as_reshape": relaxed, "dead_nodes": dead})
