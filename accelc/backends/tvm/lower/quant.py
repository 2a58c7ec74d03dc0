"""Lowering accelc's quantization ops (passes/quantize_ops.py) to int8 Relax, through the
importer's custom_convert_map (`converters`):

  linear_int8 / conv2d_int8   uint8 x int8 -> int32 GEMM (`qgemm`, a TE compute over weights
                              packed for the layer's micro-kernel, kernels/microkernels.py; `qgemv`
                              for a few output columns), then
                              (acc - zp * colsum(w)) as float32 * (scale * w_scale) + bias
                              (conv2d: im2col of the NHWC uint8 input, padded with the zero point)
  linear_int8w                float32 x int8 GEMM (`w8_matmul`): weights stay int8 in memory
  quantize / choose_qparams / dequantize_weight: the same arithmetic as eager

The int8 operands reach TVM as such: never dequantize -> float32 GEMM, the classic slow path
(TVM issue #6115). Weight packing, column sums and scale products depend on parameters only,
so the pipeline's LiftTransformParams runs them once at load; the stored parameters stay int8.
The epilogue and the next layer's quantize are elementwise and fuse into the GEMM kernel. The
blocks carry tags (kernels/tags.py) by which the CPU schedules (schedules/int8_*.py) find them;
the micro-kernel depends on the target, so the converters are made per target (`converters`).
"""
from __future__ import annotations

import functools
import math

from torch import fx
from tvm import relax, te

from accelc.backends.tvm.kernels import microkernels, tags
from accelc.backends.tvm.kernels.isa import Isa
from accelc.backends.tvm.kernels.microkernels import MicroKernel
from accelc.backends.tvm.lower.patches import conv_geometry, conv_weight, im2col
from accelc.backends.tvm.lower.shapes import static_shape
from accelc.passes.quantize_ops import OPS, ops

FLT_MAX = 3.4028234663852886e38


# ---- Relax converters ------------------------------------------------------------------------

def _arg(importer, value):
    return importer.env[value] if isinstance(value, fx.Node) else value


def _f32(value: float) -> relax.Expr:
    return relax.const(value, "float32")


def reciprocal(scale) -> relax.Expr:
    """1 / scale, once per tensor/row, not per element (eager does the same): both quantize paths
    multiply by it, so that they round alike."""
    return relax.op.divide(_f32(1.0), scale)


def convert_quantize(node, importer):
    x, scale, zero_point = (_arg(importer, a) for a in node.args[:3])
    qmin, qmax = node.args[3:5]
    inverse = reciprocal(scale)
    value = relax.op.add(relax.op.round(relax.op.multiply(x, inverse)), relax.op.astype(zero_point, "float32"))
    return importer.block_builder.emit(relax.op.astype(relax.op.clip(value, qmin, qmax), "uint8"))


def convert_choose_qparams(node, importer):
    bb = importer.block_builder
    x, qmin, qmax, dims = _arg(importer, node.args[0]), *node.args[1:4]
    keep = dims is not None
    low = bb.emit(relax.op.minimum(relax.op.min(x, dims, keepdims=keep), _f32(0.0)))
    high = relax.op.maximum(relax.op.max(x, dims, keepdims=keep), _f32(0.0))
    scale = bb.emit(relax.op.divide(relax.op.subtract(high, low), _f32(float(qmax - qmin))))
    scale = bb.emit(relax.op.where(relax.op.greater(scale, _f32(0.0)), scale, relax.op.ones_like(scale)))
    zero_point = relax.op.subtract(_f32(float(qmin)), relax.op.round(relax.op.divide(low, scale)))
    zero_point = bb.emit(relax.op.astype(relax.op.clip(zero_point, qmin, qmax), "int32"))
    return bb.emit(relax.Tuple([scale, zero_point]))


def convert_dequantize_weight(node, importer):
    w, scale = (_arg(importer, a) for a in node.args)
    shaped = relax.op.reshape(scale, [-1] + [1] * (len(static_shape(w)) - 1))
    return importer.block_builder.emit(relax.op.multiply(relax.op.astype(w, "float32"), shaped))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack_weight(bb, w2d, kernel: MicroKernel) -> relax.Expr:
    """int8 [N, K] -> [N/columns, K/k_group, columns, k_group]: one intrinsic call's weights
    contiguous, the operand layout of `kernel` (zero padding contributes nothing to the sums)."""
    n, k = static_shape(w2d)
    columns, k_group = kernel.packing
    n_padded, k_padded = _round_up(n, columns), _round_up(k, k_group)
    if (n_padded, k_padded) != (n, k):
        w2d = relax.op.nn.pad(w2d, [0, n_padded - n, 0, k_padded - k])
    blocks = relax.op.reshape(w2d, [n_padded // columns, columns, k_padded // k_group, k_group])
    return bb.emit(relax.op.permute_dims(blocks, [0, 2, 1, 3]))


def qgemm(a: te.Tensor, packed: te.Tensor, n: int, *, kernel: MicroKernel, bits: int) -> te.Tensor:
    """int32 C[m, n] = sum_k uint8 A[m, k] * int8 W[n, k], W read from `kernel`'s packed layout.
    The block names the kernel and the activations' bits (7: A holds values up to 127)."""
    k = te.reduce_axis((0, int(a.shape[1])), "k")
    columns, k_group = kernel.packing
    notes = tags.attrs(tags.INT8_GEMM, **{tags.MICROKERNEL: kernel.name, tags.ACTIVATION_BITS: bits})
    return te.compute((a.shape[0], n), lambda i, j: te.sum(
        a[i, k].astype("int32") * packed[j // columns, k // k_group, j % columns, k % k_group].astype("int32"),
        axis=k), name="qgemm", attrs=notes)


def quantizing_qgemm(x: te.Tensor, inverse: te.Tensor, zero_point: te.Tensor, packed: te.Tensor, n: int,
                     qmin: int, qmax: int, *, kernel: MicroKernel) -> te.Tensor:
    """`qgemm` of float32 rows quantized in the same kernel, with convert_quantize's arithmetic: a
    small batch then makes one kernel call per layer, not two."""
    from tvm import topi
    clipped = topi.clip(topi.add(topi.round(topi.multiply(x, inverse)), topi.cast(zero_point, "float32")), qmin, qmax)
    a = te.compute(x.shape, lambda i, k: clipped[i, k].astype("uint8"), name="qinput",
                   attrs=tags.attrs(tags.QUANTIZE_INPUT))
    return qgemm(a, packed, n, kernel=kernel, bits=bits_of_range(qmax))


def qgemv(a: te.Tensor, w: te.Tensor) -> te.Tensor:
    """The same sum for a few output columns (N a multiple of no kernel's columns, e.g. a one-logit
    head): W [N, K] row-major, so each output is one contiguous dot product."""
    k = te.reduce_axis((0, int(a.shape[1])), "k")
    return te.compute((a.shape[0], w.shape[0]), lambda i, j: te.sum(
        a[i, k].astype("int32") * w[j, k].astype("int32"), axis=k), name="qgemv", attrs=tags.attrs(tags.INT8_GEMV))


def bits_of_range(qmax: int) -> int:
    return 7 if qmax <= 127 else 8


def activation_bits(q) -> int:
    """Bits of the fused op's uint8 input: 7 when it comes from a quantize to at most 127."""
    quantized = isinstance(q, fx.Node) and q.target == ops.quantize.default
    return bits_of_range(q.args[4]) if quantized else 8


def _rows(value, rows: int, groups: int) -> relax.Expr:
    """Per-sample qparams ([B, 1, ...]) as one value per GEMM row [rows, 1]; 0-d stays scalar."""
    shape = static_shape(value)
    if not shape:
        return value
    per_group = relax.op.reshape(value, [groups, 1, 1])
    return relax.op.reshape(relax.op.broadcast_to(per_group, [groups, rows // groups, 1]), [rows, 1])


def int8_gemm(bb, a2d, zero_point, scale, w2d, w_scale, bias, groups: int, bits: int, isa: Isa) -> relax.Expr:
    """float32 [M, N] from uint8 a2d [M, K] and int8 w2d [N, K]: the GEMM and its epilogue."""
    rows, depth = static_shape(a2d)
    n = static_shape(w2d)[0]
    kernel = microkernels.select(isa, n, bits)
    pad = -depth % (kernel or microkernels.PORTABLE).k_group
    if pad:
        a2d = bb.emit(relax.op.nn.pad(a2d, [0, 0, 0, pad]))
    if kernel is None:
        padded = bb.emit(relax.op.nn.pad(w2d, [0, 0, 0, pad])) if pad else w2d
        acc = bb.emit_te(qgemv, a2d, padded, primfunc_name_hint="qgemv")
    else:
        acc = bb.emit_te(functools.partial(qgemm, kernel=kernel, bits=bits), a2d, pack_weight(bb, w2d, kernel), n,
                         primfunc_name_hint="qgemm")
    return _requantize(bb, acc, rows, zero_point, scale, w2d, w_scale, bias, groups)


def _requantize(bb, acc, rows: int, zero_point, scale, w2d, w_scale, bias, groups: int) -> relax.Expr:
    """float32 from the int32 accumulator: zero-point correction, scales, bias."""
    colsum = relax.op.sum(relax.op.astype(w2d, "int32"), axis=[1])
    corrected = relax.op.subtract(acc, relax.op.multiply(_rows(zero_point, rows, groups), colsum))
    out = relax.op.multiply(relax.op.astype(corrected, "float32"),
                            relax.op.multiply(_rows(scale, rows, groups), w_scale))
    # LLVM contracts a multiply feeding an add (bias, residual) into one FMA, rounding once where
    # eager PyTorch rounds twice; a no-op min in between keeps the two roundings, so that the
    # next quantize sees bit-identical values (quantize_ops.py)
    out = relax.op.minimum(out, _f32(FLT_MAX))
    return bb.emit(relax.op.add(out, bias) if bias is not None else out)


FUSED_QUANTIZE_ROWS = 16  # up to this many rows the input's quantize runs inside the first GEMM


def fusable_quantize(node: fx.Node, rows: int, kernel: MicroKernel | None, depth: int):
    """The quantize feeding this linear when it can run inside the GEMM kernel: static (0-d)
    qparams to 7 bits, read by this layer only, a small batch, a depth the kernel takes unpadded."""
    q = node.args[0]
    if not (activation_bits(q) == 7 and len(q.users) == 1 and rows <= FUSED_QUANTIZE_ROWS and kernel is not None
            and depth % kernel.k_group == 0):
        return None
    scale, zero_point = q.args[1:3]
    static = all(isinstance(v, fx.Node) and getattr(v.meta.get("val"), "shape", None) == () for v in (scale, zero_point))
    return q if static else None


def convert_linear_int8(node, importer, isa: Isa):
    bb = importer.block_builder
    q, scale, zero_point, w, w_scale, bias = (_arg(importer, a) for a in node.args)
    shape = static_shape(q)
    rows, n = math.prod(shape[:-1]), static_shape(w)[0]
    groups = rows if static_shape(scale) else 1  # per-row qparams have the input's leading shape
    bits = activation_bits(node.args[0])
    kernel = microkernels.select(isa, n, bits)
    quantize = fusable_quantize(node, rows, kernel, shape[-1]) if len(shape) == 2 else None
    if quantize is not None:  # the quantize node's own kernel is then unused and dropped
        x, q_scale, q_zero = (_arg(importer, a) for a in quantize.args[:3])
        acc = bb.emit_te(functools.partial(quantizing_qgemm, kernel=kernel), x, bb.emit(reciprocal(q_scale)), q_zero,
                         pack_weight(bb, w, kernel), n, *quantize.args[3:5], primfunc_name_hint="qgemm")
        return _requantize(bb, acc, rows, zero_point, scale, w, w_scale, bias, groups)
    a2d = bb.emit(relax.op.reshape(q, [rows, shape[-1]])) if len(shape) != 2 else q
    out = int8_gemm(bb, a2d, zero_point, scale, w, w_scale, bias, groups, bits, isa)
    return bb.emit(relax.op.reshape(out, shape[:-1] + [n])) if len(shape) != 2 else out


def patches_qgemm(x: te.Tensor, fill, packed: te.Tensor, n: int, size, stride, padding, dilation, *,
                  kernel: MicroKernel, bits: int) -> te.Tensor:
    """`im2col` and `qgemm` in one kernel (patch rows are a multiple of k_group long: no padding)."""
    return qgemm(im2col(x, fill, size, stride, padding, dilation, kernel.k_group), packed, n, kernel=kernel, bits=bits)


def convert_conv2d_int8(node, importer, isa: Isa):
    bb = importer.block_builder
    q, scale, zero_point, w, w_scale, bias = (_arg(importer, a) for a in node.args[:6])
    stride, padding, dilation = node.args[6:9]
    batch, _, height, width = static_shape(q)
    out_channels, _, kh, kw = static_shape(w)
    oh, ow = conv_geometry(height, width, (kh, kw), stride, padding, dilation)
    nhwc = bb.emit(relax.op.permute_dims(q, [0, 2, 3, 1]))
    bits = activation_bits(node.args[0])
    kernel = microkernels.select(isa, out_channels, bits)
    k_group = (kernel or microkernels.PORTABLE).k_group
    geometry, w2d = ((kh, kw), stride, padding, dilation), conv_weight(bb, w, k_group)
    groups = batch if static_shape(scale) else 1
    if kernel is not None:  # patches computed inside the GEMM kernel, per row tile (schedules/int8_gemm.py)
        acc = bb.emit_te(functools.partial(patches_qgemm, kernel=kernel, bits=bits), nhwc, zero_point,
                         pack_weight(bb, w2d, kernel), out_channels, *geometry, primfunc_name_hint="im2col_qgemm")
        out = _requantize(bb, acc, batch * oh * ow, zero_point, scale, w2d, w_scale, bias, groups)
    else:
        cols = bb.emit_te(im2col, nhwc, zero_point, *geometry, k_group, primfunc_name_hint="im2col")
        out = int8_gemm(bb, cols, zero_point, scale, w2d, w_scale, bias, groups, bits, isa)
    return bb.emit(relax.op.permute_dims(relax.op.reshape(out, [batch, oh, ow, out_channels]), [0, 3, 1, 2]))


def w8_matmul(x: te.Tensor, w_t: te.Tensor) -> te.Tensor:
    """float32 [M, N] = x [M, K] @ int8 [K, N] converted in the kernel (weights stay int8)."""
    k = te.reduce_axis((0, int(x.shape[1])), "k")
    return te.compute((x.shape[0], w_t.shape[1]), lambda i, j: te.sum(
        x[i, k] * w_t[k, j].astype("float32"), axis=k), name="w8_matmul", attrs=tags.attrs(tags.GEMM))


def convert_linear_int8w(node, importer):
    bb = importer.block_builder
    x, w, w_scale, bias = (_arg(importer, a) for a in node.args)
    shape = static_shape(x)
    rows, n = math.prod(shape[:-1]), static_shape(w)[0]
    x2d = bb.emit(relax.op.reshape(x, [rows, shape[-1]])) if len(shape) != 2 else x
    acc = bb.emit_te(w8_matmul, x2d, bb.emit(relax.op.permute_dims(w)), primfunc_name_hint="w8_matmul")
    out = relax.op.multiply(acc, w_scale)
    out = bb.emit(relax.op.add(out, bias) if bias is not None else out)
    return bb.emit(relax.op.reshape(out, shape[:-1] + [n])) if len(shape) != 2 else out


# ---- one IRModule for all batch sizes ---------------------------------------------------------

@relax.expr_functor.mutator
class _Rename(relax.PyExprMutator):
    def __init__(self, mapping: dict):
        super().__init__()
        self.mapping = mapping

    def visit_global_var_(self, op):
        return self.mapping.get(op, op)


def merge_function(mod, single, main, name: str):
    """`mod` plus `main` of one batch size under `name`, with the PrimFuncs the converters emitted
    into `single` (qgemm, im2col, ...). Each batch size imports its own copies under the same
    names; they are added with unique names (an identical one is shared) and `main` is pointed at them."""
    builder = relax.BlockBuilder(mod)
    mapping = {gvar: builder.add_func(func, gvar.name_hint)
               for gvar, func in single.functions.items() if gvar.name_hint != "main"}
    builder.add_func(_Rename(mapping).visit_expr(main) if mapping else main, name)
    return builder.get()


def converters(isa: Isa) -> dict:
    """The importer's custom_convert_map entries for accelc's quantization ops, on a target of `isa`
    (the GEMMs' micro-kernels, and so their weight layouts, depend on it)."""
    table = {
        "quantize.default": convert_quantize,
        "choose_qparams.default": convert_choose_qparams,
        "dequantize_weight.default": convert_dequantize_weight,
        "linear_int8.default": functools.partial(convert_linear_int8, isa=isa),
        "conv2d_int8.default": functools.partial(convert_conv2d_int8, isa=isa),
        "linear_int8w.default": convert_linear_int8w,
    }
    assert set(table) == {op._opname + ".default" for op in OPS}
    return table
