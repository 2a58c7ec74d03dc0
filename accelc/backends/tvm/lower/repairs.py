"""Repairs for valid graphs that TVM 0.27's importer or code generator gets wrong.

Each repair is a rule: which node it applies to, why, and the rewrite. Graph repairs rewrite the
fx graph before it is re-exported per batch size; import repairs are converters in the
`custom_convert_map` that handle the faulty case and leave every other node to TVM's converter.
A build lists the repairs it applied and on which nodes (the manifest's `repairs`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tvm import relax

aten = torch.ops.aten


@dataclass(frozen=True)
class Repair:
    name: str
    why: str  # the fault in TVM (or torch.export) that makes it necessary
    applies: Callable[[torch.fx.Node], bool]


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _view_of_unknown_layout(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and node.target is aten.view.default


def _integer_cumsum(node: torch.fx.Node) -> bool:
    source, out = _val(node.args[0]), _val(node)
    return (node.target is aten.cumsum.default and source is not None and out is not None
            and not source.dtype.is_floating_point and source.dtype != out.dtype)


VIEWS = Repair("views_as_reshapes", "torch.export drops .contiguous() calls it sees as no-ops at capture; "
               "re-exported at a static batch, a later view() of an attention output then meets other "
               "strides and fails (GPT-2's Conv1D). reshape() is view() wherever view() would succeed",
               _view_of_unknown_layout)
CUMSUM = Repair("integer_cumsum", "torch sums bool/int8/int32 in int64; TVM's importer keeps the input "
                "dtype and LLVM cannot add bools (causal masks of decoder LMs: (ids != pad).cumsum(-1))",
                _integer_cumsum)


def repair_graph(gm: torch.fx.GraphModule) -> list[dict]:
    """Apply the graph repairs in place (each keeps the graph's values exactly); what was applied."""
    touched = [node.name for node in gm.graph.nodes if VIEWS.applies(node)]
    for node in gm.graph.nodes:
        if VIEWS.applies(node):
            node.target = aten.reshape.default
    if touched:
        gm.recompile()
    return [{"repair": VIEWS.name, "nodes": touched}] if touched else []


def import_repairs(program) -> list[dict]:
    """The import repairs that apply to an exported program's nodes."""
    touched = [node.name for node in program.graph.nodes if node.op == "call_function" and CUMSUM.applies(node)]
    return [{"repair": CUMSUM.name, "nodes": touched}] if touched else []


def convert_cumsum(node: torch.fx.Node, importer) -> relax.Var:
    """cumsum with torch's result dtype: the input cast first, as torch promotes it."""
    if not CUMSUM.applies(node):
        return importer._cumsum(node)
    dtype = str(_val(node).dtype).removeprefix("torch.")
    x = importer.block_builder.emit(relax.op.astype(importer.env[node.args[0]], dtype))
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return importer.block_builder.emit(relax.op.cumsum(x, dim, dtype))


CONVERTERS = {"cumsum.default": convert_cumsum}
REPAIRS = (VIEWS, CUMSUM)
