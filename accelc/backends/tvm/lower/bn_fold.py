"""Eval-mode BatchNorm after a float32 convolution, folded into the convolution's weights and bias
at load time, without a recipe pass.

    y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta
      = conv(x, W * s) + (b - mean) * s + beta,   s = gamma / sqrt(var + eps) per output channel

Left as TVM imports it, a BatchNorm becomes four elementwise ops on the convolution's NCHW output,
which sit between the transposes around the NHWC kernels (lower/conv_spec.py) and keep them from
cancelling. Folded, the scale multiplies the weights (parameters only: LiftTransformParams runs it
once at load) and the shift joins the bias in the GEMM's epilogue. The `fold_batchnorm` pass does
the same on the fx graph before passes that need it (pruning, int8); this fold covers recipes that
do not list it, on CPU targets, where lower/conv.py lowers the convolution itself.

The exported program is annotated first (`annotate`); the convolution's converter folds when its
node says so (`fold`, from conv_spec.parse) and marks the BatchNorm, whose converter then passes the
convolution's output through (`convert_batch_norm`). A BatchNorm whose convolution is lowered by
TVM (or by the int8 path) is not marked and runs as TVM imports it.
"""
from __future__ import annotations

import dataclasses
import operator

import torch
from torch.export.graph_signature import InputKind
from tvm import relax

aten = torch.ops.aten
BATCH_NORM = aten._native_batch_norm_legit_no_training.default
_TARGET = "accelc_bn_fold"  # on a convolution node: the BatchNorm node to fold into it
_FOLDED = "accelc_bn_folded"  # on a BatchNorm node: its convolution folded it
REPAIR = "batchnorm_folded"  # the manifest's `repairs` entry (with the BatchNorm nodes)


def _constants(program: torch.export.ExportedProgram) -> set[str]:
    """Placeholder names of the program's parameters, buffers and constants (not user inputs)."""
    return {spec.arg.name for spec in program.graph_signature.input_specs if spec.kind != InputKind.USER_INPUT}


def _foldable(conv: torch.fx.Node, constants: set[str]) -> torch.fx.Node | None:
    """The eval BatchNorm that is the only user of `conv`, over its channels, with parameters and
    statistics that are the program's constants (known at load); else None."""
    if conv.target is not aten.convolution.default or len(conv.users) != 1:
        return None
    bn = next(iter(conv.users))
    if bn.target is not BATCH_NORM or bn.args[0] is not conv:
        return None
    tensors = [a for a in bn.args[1:5] if a is not None]
    if not all(isinstance(a, torch.fx.Node) and a.op == "placeholder" and a.name in constants for a in tensors):
        return None
    # only the normalised output is used (the no-training op's statistics outputs are empty)
    if not all(u.target is operator.getitem and u.args[1] == 0 for u in bn.users):
        return None
    return bn if bn.args[3] is not None and bn.args[4] is not None else None


def annotate(program: torch.export.ExportedProgram) -> None:
    """Mark each convolution whose BatchNorm can be folded into it (read by `fold`)."""
    constants = _constants(program)
    for node in program.graph.nodes:
        if node.op == "call_function" and (bn := _foldable(node, constants)) is not None:
            node.meta[_TARGET] = bn


def fold(node: torch.fx.Node, importer, conv):
    """`conv` (a conv_spec.Conv of `node`) with its BatchNorm folded into its weight and bias when
    `annotate` marked it; the BatchNorm is then marked as folded. Otherwise `conv` unchanged."""
    bn = node.meta.get(_TARGET)
    if bn is None:
        return conv
    gamma, beta, mean, var = (importer.env[a] if a is not None else None for a in bn.args[1:5])
    if any(t is not None and str(t.ty.dtype) != "float32" for t in (gamma, beta, mean, var)):
        return conv
    bb, eps = importer.block_builder, float(bn.args[6])
    scale = relax.op.divide(relax.const(1.0, "float32"), relax.op.sqrt(relax.op.add(var, relax.const(eps, "float32"))))
    scale = bb.emit(relax.op.multiply(gamma, scale) if gamma is not None else scale)
    axis = 1 if conv.transposed else 0  # the output channels of the weight
    shape = [1] * len(conv.w.ty.shape)
    shape[axis] = -1
    weight = bb.emit(relax.op.multiply(conv.w, relax.op.reshape(scale, shape)))
    shift = relax.op.subtract(conv.bias, mean) if conv.bias is not None else relax.op.negative(mean)
    shift = relax.op.multiply(shift, scale)
    bias = bb.emit(relax.op.add(shift, beta) if beta is not None else shift)
    bn.meta[_FOLDED] = True
    return dataclasses.replace(conv, w=weight, bias=bias)


def folded(program: torch.export.ExportedProgram) -> list[dict]:
    """The manifest's record of the BatchNorm nodes folded on import ([] when none)."""
    nodes = [n.name for n in program.graph.nodes if n.meta.get(_FOLDED)]
    return [{"repair": REPAIR, "nodes": nodes}] if nodes else []


def convert_batch_norm(node: torch.fx.Node, importer) -> relax.Var:
    """A folded BatchNorm is its convolution's output; any other as TVM imports it."""
    if node.meta.get(_FOLDED):
        return importer.env[node.args[0]]
    return importer._batch_norm_legit_no_training(node)


CONVERTERS = {"_native_batch_norm_legit_no_training.default": convert_batch_norm}
