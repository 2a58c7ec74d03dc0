"""Which output axes follow a named input dimension (model.dims): read from the symbolic shapes
torch.export gives when the dimension is captured as a torch.export.Dim."""
from __future__ import annotations

import sympy
import torch

from accelc.config.recipe import InputSpec
from accelc.errors import ModelError


def output_dims(graph: torch.fx.GraphModule, specs: list[InputSpec], names: list[str], where: str
                ) -> list[dict[int, str]]:
    """Per output: the axes whose length is a named input dimension (those the runtime cuts back to
    a call's length). An axis whose length is another expression of it (2*seq, seq-1) cannot be cut
    back, and a named dimension folded into an output (a reshape) neither: a coded error."""
    placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
    symbols = {}
    for spec, node in zip(specs, placeholders):
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and dim != "batch":
                symbols[node.meta["val"].shape[axis].node.expr] = dim
    outputs = torch.utils._pytree.tree_leaves(next(n for n in graph.graph.nodes if n.op == "output").args)
    found = []
    for name, node in zip(names, outputs):
        axes = {}
        for axis, length in enumerate(node.meta["val"].shape if hasattr(node, "meta") else ()):
            expr = length.node.expr if isinstance(length, torch.SymInt) else None
            if expr in symbols:
                axes[axis] = symbols[expr]
            elif expr is not None and expr.free_symbols & set(symbols):
                shown = expr.xreplace({s: sympy.Symbol(n) for s, n in symbols.items()})
                raise ModelError(f"output '{name}' axis {axis} has length {shown}; only an axis as long as the "
                                 "named dimension itself can be cut back to a call's length",
                                 code="E309", location=where, field="model.dims",
                                 hint="return outputs whose axes are the sequence length itself, or pool them")
        found.append(axes)
    return found
