"""The layer forms the quantize pass knows, made before it looks for layers (on a copy: the
captured graph stays the reference).

Matrix products with a constant weight as aten.linear: GPT-2's Conv1D layers (and any `x @ W + b`
over a parameter) export as addmm(bias, x, W) / mm(x, W) / matmul(x, W) with W stored [in, out];
as linear(x, W^T, bias) they are the same arithmetic and get an int8 path (and a report row) like
every nn.Linear. Eval BatchNorms folded into the convolution before them: the int8 layer then
carries the BatchNorm in its per-channel weight scales instead of a float32 BatchNorm after an
int8 convolution, which would break the int8 epilogue chain (the fold_batchnorm pass, applied
whether or not the recipe lists it)."""
from __future__ import annotations

import copy
import warnings

import torch
from torch import fx

from accelc.passes.base import PassContext
from accelc.passes.configs.fold import FoldBatchNormConfig
from accelc.passes.fold import FoldBatchNorm, attach, drop_unused, fetch, foldable, is_attr

aten = torch.ops.aten
PRODUCTS = (aten.addmm.default, aten.mm.default, aten.matmul.default)  # matmul: x[..., k] @ W[k, n]


def _weight_product(gm: fx.GraphModule, node: fx.Node) -> tuple | None:
    """(input, weight node, bias node or None) of an addmm/mm/matmul whose right operand is a constant
    2-D float matrix (and whose addmm scalars are 1); None for anything else."""
    if node.op != "call_function" or node.target not in PRODUCTS:
        return None
    if node.target == aten.addmm.default:
        bias, x, weight = node.args[:3]
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1 or not is_attr(bias):
            return None
        if fetch(gm, bias).dim() != 1:  # a bias per output column, as linear's
            return None
    else:
        (x, weight), bias = node.args[:2], None
    if not is_attr(weight):
        return None
    value = fetch(gm, weight)
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or not value.is_floating_point():
        return None
    return x, weight, bias


def as_linear(gm: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A copy of `gm` with each constant-weight addmm/mm/matmul as aten.linear (`gm` itself when there is
    none), and how many were rewritten."""
    if not any(_weight_product(gm, n) for n in gm.graph.nodes):
        return gm, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        gm = copy.deepcopy(gm)
    rewritten, old = 0, set()
    for node in list(gm.graph.nodes):
        found = _weight_product(gm, node)
        if found is None:
            continue
        x, weight, bias = found
        transposed = attach(gm, f"{weight.target}_t", fetch(gm, weight).t().contiguous(), node)
        with gm.graph.inserting_before(node):
            linear = gm.graph.call_function(aten.linear.default, (x, transposed, bias) if bias else (x, transposed))
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        gm.graph.erase_node(node)
        old.add(weight.target)
        rewritten += 1
    gm.graph.eliminate_dead_code()
    drop_unused(gm, old)
    gm.graph.lint()
    gm.recompile()
    return gm, rewritten


def batchnorms_folded(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[str]]:
    """A copy of `gm` with every foldable eval BatchNorm folded into its Conv/Linear (`gm` itself
    when there is none), and the layers that took one."""
    if not any(n.op == "call_function" and n.target == aten.batch_norm.default and foldable(n.args[0], n)
               for n in gm.graph.nodes):
        return gm, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        gm = copy.deepcopy(gm)
    result = FoldBatchNorm(FoldBatchNormConfig(kind="fold_batchnorm")).run(gm, PassContext())
    return result.graph, result.stats["folded"]
