"""Size and cost of an fx graph: parameter count and multiply-accumulates (MACs).

Shapes come from running the graph once on example inputs with an fx Interpreter that records
every tensor's shape in a side table; node.meta is left alone, so measuring a graph never
mutates it. MACs count the ops that dominate inference (Linear, Conv, matmuls, attention);
elementwise ops, norms and pooling are not multiply-accumulates and are not counted.
"""
from __future__ import annotations

import math

import torch
from torch import fx

aten = torch.ops.aten
CONVS = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default}
MATMULS = {aten.mm.default, aten.bmm.default, aten.matmul.default, aten.addmm.default, aten.baddbmm.default}


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph and keeps {node: shape} for every node that produced a tensor."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shapes[n] = tuple(result.shape)
        return result


def example_inputs_from_meta(gm: fx.GraphModule) -> tuple:
    """Zero tensors shaped like the placeholders' export-time examples (symbolic sizes at their hint)."""
    inputs = []
    for node in gm.graph.find_nodes(op="placeholder"):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ValueError(f"placeholder {node.name} has no example value; pass example inputs")
        shape = [d if isinstance(d, int) else int(d.node.hint) for d in val.shape]
        inputs.append(torch.zeros(shape, dtype=val.dtype))
    return tuple(inputs)


def shapes(gm: fx.GraphModule, example_inputs=()) -> dict[fx.Node, tuple[int, ...]]:
    """The shape of every tensor the graph computes on `example_inputs` (or meta examples)."""
    inputs = tuple(example_inputs) or example_inputs_from_meta(gm)
    recorder = _ShapeRecorder(gm)
    with torch.no_grad():
        recorder.run(*inputs)
    return recorder.shapes


def count_params(gm: fx.GraphModule) -> int:
    """Elements of the floating-point tensors the graph reads (weights, biases, norm statistics).

    Counted from get_attr nodes rather than state_dict, so tensors a rewrite left behind
    unused do not count; each tensor counts once however many nodes read it."""
    seen: dict[str, int] = {}
    for node in gm.graph.find_nodes(op="get_attr"):
        value = _fetch(gm, node.target)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            seen[node.target] = value.numel()
    return int(sum(seen.values()))


def _fetch(gm: fx.GraphModule, target: str):
    value = gm
    for part in target.split("."):
        value = getattr(value, part, None)
    return value


def node_macs(node: fx.Node, table: dict[fx.Node, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one node given the recorded shapes (0 for ops that have none)."""
    out = table.get(node)
    if node.op != "call_function" or out is None:
        return 0
    target = node.target
    if target == aten.linear.default:
        return math.prod(out) * table[node.args[1]][1]
    if target in CONVS:
        weight = table[node.args[1]]  # [out, in / groups, *kernel]
        return math.prod(out) * math.prod(weight[1:])
    if target in MATMULS:
        operand = table[node.args[-2]] if target in (aten.addmm.default, aten.baddbmm.default) \
            else table[node.args[0]]
        return math.prod(out) * operand[-1]
    if target == aten.scaled_dot_product_attention.default:
        query, key = table[node.args[0]], table[node.args[1]]
        scores = math.prod(query[:-1]) * key[-2]  # one score per (query position, key position)
        return scores * query[-1] + scores * out[-1]  # q @ k^T, then weights @ v
    return 0


def count_macs(gm: fx.GraphModule, example_inputs=(), table=None) -> int:
    """MACs of one forward pass on the example inputs."""
    table = table if table is not None else shapes(gm, example_inputs)
    return int(sum(node_macs(node, table) for node in gm.graph.nodes))


def batch_of(gm: fx.GraphModule, example_inputs=()) -> int:
    """The example batch size (first dim of the first input), to report MACs per sample."""
    inputs = tuple(example_inputs) or example_inputs_from_meta(gm)
    return int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1


def measure(gm: fx.GraphModule, example_inputs=(), table=None) -> dict:
    """{params, macs}: MACs per sample, counted at the example batch and divided by it."""
    macs = count_macs(gm, example_inputs, table)
    return {"params": count_params(gm), "macs": macs // max(batch_of(gm, example_inputs), 1)}
