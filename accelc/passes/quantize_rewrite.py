"""The graph rewrite of the quantize pass: which Linear/Conv layers have an int8 path, and
inserting the quantization ops (quantize_ops.py) or the half-precision casts around them.

A quantized layer becomes `linear_int8(quantize(x), scale, zp, w_int8, w_scale, bias)` (or
conv2d_int8): the quantize is the graph's q node, the int8 layer op dequantizes its int32 sum (the
dq). Eager PyTorch computes exactly what the compiled int8 kernel computes, so the rewritten graph
is the tight reference for the artifact; backends/tvm/lower/quant.py lowers each op. An
activation feeding several layers is quantized once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from operator import getitem

import torch
from torch import fx

from accelc.passes.channel_groups import layer_name
from accelc.passes.fold import drop_unused, fetch
from accelc.passes.quantize_observe import activation_qparams, weight_qparams
from accelc.passes.quantize_ops import ops
from accelc.passes.stats import MATMULS

aten = torch.ops.aten
LINEAR, CONV2D = aten.linear.default, aten.conv2d.default
LAYERS = {LINEAR, CONV2D, aten.conv1d.default, aten.conv3d.default}
HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Layer:
    """A Linear/Conv node of the float graph and whether it can be quantized."""
    node: str  # node name (stable across deep copies of the graph)
    name: str  # module path, what skip globs match
    op: str
    problem: str | None = None  # why it stays float32
    info: dict = field(default_factory=dict)
    outputs: int = 0  # output features / channels (the weight's first dimension), 0 when it has no fixed weight


def layers(gm: fx.GraphModule, dtype: str) -> list[Layer]:
    """Every Linear/Conv of the graph, with the reason when it has no quantized path."""
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in LAYERS:
            continue
        op = getattr(node.target, "_opname", str(node.target))
        weight = node.args[1]
        outputs = fetch(gm, weight).shape[0] if isinstance(weight, fx.Node) and weight.op == "get_attr" else 0
        found.append(Layer(node.name, layer_name(node), op, _problem(gm, node, dtype), outputs=int(outputs)))
    names = [layer.name for layer in found]
    for layer in found:  # one module calling F.linear twice (attention's in/out projections)
        if names.count(layer.name) > 1:
            layer.name = f"{layer.name}[{layer.node}]"
    return found


def float_ops(gm: fx.GraphModule) -> list[dict]:
    """Multiply-accumulate ops that are not Linear/Conv layers (attention's matmuls): they have
    no int8 path and stay float32."""
    heavy = MATMULS | {aten.scaled_dot_product_attention.default}
    return [{"node": n.name, "op": n.target._opname, "layer": layer_name(n)}
            for n in gm.graph.nodes if n.op == "call_function" and n.target in heavy]


def _problem(gm, node: fx.Node, dtype: str) -> str | None:
    weight = node.args[1]
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        return "its weight is computed in the graph (weight norm, or quantized already)"
    if not fetch(gm, weight).is_floating_point():
        return "its weight is not floating point"
    if dtype in HALF:
        return None
    if node.target not in (LINEAR, CONV2D):
        return f"no int8 kernel for {node.target._opname}; it stays float32"
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    if node.target == CONV2D and groups != 1:
        return "grouped/depthwise convolution has no int8 kernel; it stays float32"
    value = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    if value is None or value.dim() < 2 or not value.is_floating_point():
        return "its input is not a float tensor of rank >= 2"
    return None


class Rewriter:
    """Quantizes the chosen layers of one graph (mutated in place; callers pass a copy)."""

    def __init__(self, gm: fx.GraphModule, mode: str, per_channel: bool, qrange: tuple[int, int],
                 per_sample: bool = False, ranges: dict | None = None):
        self.gm, self.mode, self.per_channel, self.qrange = gm, mode, per_channel, qrange
        self.per_sample, self.ranges = per_sample, dict(ranges or {})
        self.shared: dict[fx.Node, fx.Node] = {}  # float activation -> its dequantized copy
        self.replaced: set[str] = set()

    def run(self, chosen: list[Layer]) -> dict[str, dict]:
        """{node name: info} of the layers rewritten (weight scale range, activation qparams)."""
        nodes = {n.name: n for n in self.gm.graph.nodes}
        done = {}
        for layer in chosen:
            node = nodes[layer.node]
            done[layer.node] = self._layer(node)
        self.gm.graph.eliminate_dead_code()
        drop_unused(self.gm, self.replaced)
        self.gm.graph.lint()
        self.gm.recompile()
        return done

    def _layer(self, node: fx.Node) -> dict:
        """Replace the layer by its int8 op (or, for weight-only, read int8 weights)."""
        weight = node.args[1]
        quantized, scale = weight_qparams(fetch(self.gm, weight), self.per_channel)
        self.replaced.add(weight.target)
        x, bias, rest = node.args[0], node.args[2] if len(node.args) > 2 else None, node.args[3:]
        info = {"weight_scale": [float(scale.min()), float(scale.max())]}
        with self.gm.graph.inserting_before(node):
            wq = self._buffer(weight.target + "_int8", quantized, parameter=True)
            ws = self._buffer(weight.target + "_scale", scale, parameter=True)
            if self.mode == "weight_only" and node.target != LINEAR:  # dequantized once, at load time
                info["note"] = "int8 in the artifact, float32 in memory (no weight-only conv kernel)"
                node.args = (x, self._call(node, ops.dequantize_weight.default, (wq, ws)), *node.args[2:])
                return info
            if self.mode == "weight_only":
                replacement = self._call(node, ops.linear_int8w.default, (x, wq, ws, bias))
            else:
                (q, s, z), act = self._activation(node, x)
                info.update(act)
                if node.target == LINEAR:
                    replacement = self._call(node, ops.linear_int8.default, (q, s, z, wq, ws, bias))
                else:
                    geometry = [_pair(value) for value in (list(rest) + [1, 0, 1][len(rest):])[:3]]
                    replacement = self._call(node, ops.conv2d_int8.default, (q, s, z, wq, ws, bias, *geometry))
        # The replacement is what a next layer reads: it quantizes it by the same shape, dtype and
        # calibrated range (Linear -> Linear, Conv -> Conv with nothing between)
        if "val" in node.meta:
            replacement.meta["val"] = node.meta["val"]
        if node.name in self.ranges:
            self.ranges[replacement.name] = self.ranges[node.name]
        node.replace_all_uses_with(replacement)
        self.gm.graph.erase_node(node)
        return info

    def _activation(self, layer: fx.Node, x: fx.Node) -> tuple[tuple, dict]:
        """(quantized x, scale, zero point) nodes, made once per activation."""
        qmin, qmax = self.qrange
        if x in self.shared:
            return self.shared[x]
        with self.gm.graph.inserting_before(layer):
            if self.mode == "static":
                low, high = self.ranges[x.name]
                scale, zero_point = activation_qparams(low, high, qmin, qmax)
                s = self._buffer(f"{x.name}_act_scale", torch.tensor(scale, dtype=torch.float32))
                z = self._buffer(f"{x.name}_act_zero_point", torch.tensor(zero_point, dtype=torch.int32))
                info = {"act_range": [low, high], "act_scale": scale, "act_zero_point": zero_point}
            else:
                dims = None
                if self.per_sample:  # a Linear's rows (tokens) or a Conv's images: never across samples
                    rank = x.meta["val"].dim()
                    dims = [rank - 1] if layer.target == LINEAR else list(range(1, rank))
                qp = self._call(layer, ops.choose_qparams.default, (x, qmin, qmax, dims))
                s = self._call(layer, getitem, (qp, 0))
                z = self._call(layer, getitem, (qp, 1))
                info = {"act_qparams": "per sample at run time" if dims else "per tensor at run time"}
            q = self._call(layer, ops.quantize.default, (x, s, z, qmin, qmax))
        self.shared[x] = (q, s, z), info
        return self.shared[x]

    def _buffer(self, base: str, tensor: torch.Tensor, parameter: bool = False) -> fx.Node:
        """A get_attr for a new tensor. Weights are parameters: they travel in the artifact's
        params file; activation qparams are buffers, which TVM folds into the kernels."""
        name, i = base.replace(".", "_"), 0
        while hasattr(self.gm, f"{name}_{i}"):
            i += 1
        if parameter:
            self.gm.register_parameter(f"{name}_{i}", torch.nn.Parameter(tensor.detach().clone(), requires_grad=False))
        else:
            self.gm.register_buffer(f"{name}_{i}", tensor.detach().clone())
        return self.gm.graph.get_attr(f"{name}_{i}")

    def _call(self, near: fx.Node, target, args) -> fx.Node:
        node = self.gm.graph.call_function(target, args)
        node.meta["nn_module_stack"] = near.meta.get("nn_module_stack", {})  # errors name the layer
        node.meta["stack_trace"] = near.meta.get("stack_trace")
        return node


def _pair(value) -> list[int]:
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    return value * 2 if len(value) == 1 else value


def cast_half(gm: fx.GraphModule, chosen: list[Layer], dtype: str) -> dict[str, dict]:
    """Cast-only half precision: the chosen layers multiply in float16/bfloat16 with half weights;
    their inputs are cast down and outputs back to float32, so the graph's interface and every
    other op stay float32. The bias is added in float32 after the cast back (TVM 0.27's importer
    gives half GEMMs and convolutions a float32 result, which a half bias cannot be added to).
    A bias-free cast back immediately cast down again is skipped (exact)."""
    half = HALF[dtype]
    nodes = {n.name: n for n in gm.graph.nodes}
    replaced, done, down = set(), {}, {}
    for layer in chosen:
        node = nodes[layer.node]
        args = list(node.args) + [None] * (3 - len(node.args))
        x, weight, bias = args[:3]
        with gm.graph.inserting_before(node):
            cancel = getattr(x, "target", None) == aten._to_copy.default and x.meta.get("accelc_up")
            if not cancel and x not in down:
                down[x] = gm.graph.call_function(aten._to_copy.default, (x,), {"dtype": half})
            name = f"{weight.target.replace('.', '_')}_{dtype}"
            gm.register_parameter(name, torch.nn.Parameter(fetch(gm, weight).detach().to(half), requires_grad=False))
            replaced.add(weight.target)
            node.args = (x.args[0] if cancel else down[x], gm.graph.get_attr(name), None, *args[3:])
        with gm.graph.inserting_before(node.next):
            out = up = gm.graph.call_function(aten._to_copy.default, (node,), {"dtype": torch.float32})
            if bias is not None:
                rank = node.meta["val"].dim() if "val" in node.meta else 2
                shaped = bias if node.target == LINEAR else \
                    gm.graph.call_function(aten.reshape.default, (bias, [-1] + [1] * (rank - 2)))
                out = gm.graph.call_function(aten.add.Tensor, (up, shaped))
        up.meta["accelc_up"] = bias is None
        node.replace_all_uses_with(out, delete_user_cb=lambda user: user is not up)
        done[layer.node] = {}
    gm.graph.eliminate_dead_code()
    drop_unused(gm, replaced)
    gm.graph.lint()
    gm.recompile()
    return done
