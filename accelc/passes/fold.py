"""fold_batchnorm: Conv/Linear followed by an eval-mode BatchNorm becomes one Conv/Linear.

y = gamma * (W x + b - mean) / sqrt(var + eps) + beta
  = (W * s) x + (b - mean) * s + beta,   s = gamma / sqrt(var + eps)  (per output channel)
"""
from __future__ import annotations

import torch

from accelc.passes.base import Pass, PassContext, PassResult
from accelc.passes.configs.fold import FoldBatchNormConfig

aten = torch.ops.aten
PRODUCERS = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.linear.default}


def fetch(gm, node):
    """The tensor behind a get_attr node (or None for a missing optional argument)."""
    if node is None:
        return None
    target = gm
    for part in node.target.split("."):
        target = getattr(target, part)
    return target


def attach(gm, base: str, tensor: torch.Tensor, before) -> torch.fx.Node:
    """Register `tensor` as a new parameter and return a get_attr node for it."""
    name, i = base.replace(".", "_"), 0
    while hasattr(gm, f"{name}_{i}"):
        i += 1
    gm.register_parameter(f"{name}_{i}", torch.nn.Parameter(tensor.detach().clone(), requires_grad=False))
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(f"{name}_{i}")


def drop_unused(gm, targets: set[str]) -> None:
    """Delete parameters/buffers no get_attr refers to any more, so folded-away tensors do not
    travel into the compiled artifact (torch.export lifts every module tensor)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for target in sorted(targets - used):
        owner_path, _, name = target.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if hasattr(owner, name):
            delattr(owner, name)


def foldable(producer, bn) -> bool:
    """True when `bn` is an eval BatchNorm over the channels of a Conv/Linear used only by it."""
    if not isinstance(producer, torch.fx.Node) or producer.target not in PRODUCERS:
        return False
    if len(producer.users) != 1 or bn.args[5]:  # shared output or training mode
        return False
    weight, bias = producer.args[1], producer.args[2] if len(producer.args) > 2 else None
    consts = (weight, *bn.args[3:5])  # must be parameters/buffers
    optional = (bias, *bn.args[1:3])  # parameters or absent
    if not all(is_attr(a) for a in consts) or not all(a is None or is_attr(a) for a in optional):
        return False
    # BatchNorm scales dim 1: the output channels of a batched conv, but of a linear only when 2-D
    out, kernel = producer.meta.get("val"), weight.meta.get("val")
    if out is None or kernel is None:
        return False
    return out.dim() == (2 if producer.target == aten.linear.default else kernel.dim())


def is_attr(arg) -> bool:
    return isinstance(arg, torch.fx.Node) and arg.op == "get_attr"


class FoldBatchNorm(Pass):
    Config = FoldBatchNormConfig

    def run(self, gm, ctx: PassContext) -> PassResult:
        folded, replaced = [], set()
        for bn in list(gm.graph.nodes):
            if bn.op != "call_function" or bn.target != aten.batch_norm.default:
                continue
            producer = bn.args[0]
            if not foldable(producer, bn):
                continue
            old = [a for a in (*producer.args[1:3], *bn.args[1:5]) if is_attr(a)]
            replaced |= {a.target for a in old}
            replaced.add(bn.args[3].target.rpartition(".")[0] + ".num_batches_tracked")
            self._fold(gm, producer, bn)
            folded.append(producer.name)
        gm.graph.eliminate_dead_code()
        drop_unused(gm, {t.lstrip(".") for t in replaced})
        gm.recompile()
        return PassResult(gm, bool(folded), {"folded": folded})

    @staticmethod
    def _fold(gm, producer, bn) -> None:
        weight = fetch(gm, producer.args[1])
        bias = fetch(gm, producer.args[2] if len(producer.args) > 2 else None)
        gamma, beta, mean, var = (fetch(gm, a) for a in bn.args[1:5])
        eps = bn.args[7]
        scale = (gamma if gamma is not None else 1) / torch.sqrt(var + eps)
        new_w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        new_b = ((bias if bias is not None else 0) - mean) * scale + (beta if beta is not None else 0)
        args = list(producer.args) + [None] * (3 - len(producer.args))
        args[1] = attach(gm, producer.args[1].target + "_bnfold", new_w, producer)
        args[2] = attach(gm, producer.args[1].target + "_bnfold_bias", new_b, producer)
        producer.args = tuple(args)
        bn.replace_all_uses_with(producer)
        gm.graph.erase_node(bn)
