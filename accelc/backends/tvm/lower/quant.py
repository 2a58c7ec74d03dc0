"""Lowering accelc's quantization ops (passes/quantize_ops.py) to int8 Relax, through the
importer's custom_convert_map (`CONVERTERS`):

  linear_int8 / conv2d_int8   uint8 x int8 -> int32 GEMM (`qgemm`, a TE compute over weights
                              packed [N/8, K/4, 8, 4]; `qgemv` for a few output columns), then
                              (acc - zp * colsum(w)) as float32 * (scale * w_scale) + bias
                              (conv2d: im2col of the NHWC uint8 input, padded with the zero point)
  linear_int8w                float32 x int8 GEMM (`w8_matmul`): weights stay int8 in memory
  quantize / choose_qparams / dequantize_weight: the same arithmetic as eager

The int8 operands reach TVM as such: never dequantize -> float32 GEMM, the classic slow path
(TVM issue #6115). Weight packing, column sums and scale products depend on parameters only,
so the pipeline's LiftTransformParams runs them once at load; the stored parameters stay int8.
The epilogue and the next layer's quantize are elementwise and fuse into the GEMM kernel;
quant_schedule.py gives `qgemm` and `im2col` their CPU schedules.
"""
from __future__ import annotations

import math

from torch import fx
from tvm import relax, te, tirx

from accelc.passes.quantize_ops import OPS, ops

FLT_MAX = 3.4028234663852886e38


# ---- Relax converters ------------------------------------------------------------------------

def _arg(importer, value):
    return importer.env[value] if isinstance(value, fx.Node) else value


def _shape(expr) -> list[int]:
    return [int(d) for d in expr.ty.shape]


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
    shaped = relax.op.reshape(scale, [-1] + [1] * (len(_shape(w)) - 1))
    return importer.block_builder.emit(relax.op.multiply(relax.op.astype(w, "float32"), shaped))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack_weight(bb, w2d) -> relax.Expr:
    """int8 [N, K] -> [N8/8, K4/4, 8, 4]: eight output columns x four k per 32-byte vector, the
    operand layout of the AVX2 kernel (zero padding contributes nothing to the sums)."""
    n, k = _shape(w2d)
    n8, k4 = _round_up(n, 8), _round_up(k, 4)
    if (n8, k4) != (n, k):
        w2d = relax.op.nn.pad(w2d, [0, n8 - n, 0, k4 - k])
    return bb.emit(relax.op.permute_dims(relax.op.reshape(w2d, [n8 // 8, 8, k4 // 4, 4]), [0, 2, 1, 3]))


def qgemm(a: te.Tensor, packed: te.Tensor, n: int, name: str) -> te.Tensor:
    """int32 C[m, n] = sum_k uint8 A[m, k] * int8 W[n, k], W read from its packed layout. The
    name tells the schedule whether A holds 7-bit values (`qgemm`, the AVX2 kernel is exact)
    or full uint8 (`qgemm_u8`)."""
    k = te.reduce_axis((0, int(a.shape[1])), "k")
    return te.compute((a.shape[0], n), lambda i, j: te.sum(
        a[i, k].astype("int32") * packed[j // 8, k // 4, j % 8, k % 4].astype("int32"), axis=k), name=name)


def quantizing_qgemm(x: te.Tensor, inverse: te.Tensor, zero_point: te.Tensor, packed: te.Tensor, n: int,
                     qmin: int, qmax: int) -> te.Tensor:
    """`qgemm` of float32 rows quantized in the same kernel, with convert_quantize's arithmetic: a
    small batch then makes one kernel call per layer, not two (small MLP at batch 1: 5.8 -> 3.1 us)."""
    from tvm import topi
    clipped = topi.clip(topi.add(topi.round(topi.multiply(x, inverse)), topi.cast(zero_point, "float32")), qmin, qmax)
    a = te.compute(x.shape, lambda i, k: clipped[i, k].astype("uint8"), name="qinput")
    return qgemm(a, packed, n, "qgemm")


def qgemv(a: te.Tensor, w: te.Tensor) -> te.Tensor:
    """The same sum for a few output columns (N not a multiple of 8, e.g. a one-logit head):
    W [N, K] row-major, so each output is one contiguous dot product."""
    k = te.reduce_axis((0, int(a.shape[1])), "k")
    return te.compute((a.shape[0], w.shape[0]), lambda i, j: te.sum(
        a[i, k].astype("int32") * w[j, k].astype("int32"), axis=k), name="qgemv")


def seven_bit(q: fx.Node) -> bool:
    """Whether the fused op's uint8 input comes from a quantize to at most 127."""
    return isinstance(q, fx.Node) and q.target == ops.quantize.default and q.args[4] <= 127


def _rows(value, rows: int, groups: int) -> relax.Expr:
    """Per-sample qparams ([B, 1, ...]) as one value per GEMM row [rows, 1]; 0-d stays scalar."""
    shape = _shape(value)
    if not shape:
        return value
    per_group = relax.op.reshape(value, [groups, 1, 1])
    return relax.op.reshape(relax.op.broadcast_to(per_group, [groups, rows // groups, 1]), [rows, 1])


def int8_gemm(bb, a2d, zero_point, scale, w2d, w_scale, bias, groups: int, narrow: bool) -> relax.Expr:
    """float32 [M, N] from uint8 a2d [M, K] and int8 w2d [N, K]: the GEMM and its epilogue."""
    rows, depth = _shape(a2d)
    n = _shape(w2d)[0]
    if depth % 4:
        a2d = bb.emit(relax.op.nn.pad(a2d, [0, 0, 0, 4 - depth % 4]))
    if n % 8:
        padded = bb.emit(relax.op.nn.pad(w2d, [0, 0, 0, 4 - depth % 4])) if depth % 4 else w2d
        acc = bb.emit_te(qgemv, a2d, padded, primfunc_name_hint="qgemv")
    else:
        name = "qgemm" if narrow else "qgemm_u8"
        acc = bb.emit_te(qgemm, a2d, pack_weight(bb, w2d), n, name, primfunc_name_hint=name)
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


def fusable_quantize(node: fx.Node, rows: int, n: int, depth: int):
    """The quantize feeding this linear when it can run inside the GEMM kernel: static (0-d)
    qparams, read by this layer only, a small batch, shapes the AVX2 kernel takes unpadded."""
    q = node.args[0]
    if not (seven_bit(q) and len(q.users) == 1 and rows <= FUSED_QUANTIZE_ROWS and n % 8 == 0 and depth % 4 == 0):
        return None
    scale, zero_point = q.args[1:3]
    static = all(isinstance(v, fx.Node) and getattr(v.meta.get("val"), "shape", None) == () for v in (scale, zero_point))
    return q if static else None


def convert_linear_int8(node, importer):
    bb = importer.block_builder
    q, scale, zero_point, w, w_scale, bias = (_arg(importer, a) for a in node.args)
    shape = _shape(q)
    rows, n = math.prod(shape[:-1]), _shape(w)[0]
    groups = rows if _shape(scale) else 1  # per-row qparams have the input's leading shape
    quantize = fusable_quantize(node, rows, n, shape[-1]) if len(shape) == 2 else None
    if quantize is not None:  # the quantize node's own kernel is then unused and dropped
        x, q_scale, q_zero = (_arg(importer, a) for a in quantize.args[:3])
        acc = bb.emit_te(quantizing_qgemm, x, bb.emit(reciprocal(q_scale)), q_zero, pack_weight(bb, w), n,
                         *quantize.args[3:5], primfunc_name_hint="qgemm")
        return _requantize(bb, acc, rows, zero_point, scale, w, w_scale, bias, groups)
    a2d = bb.emit(relax.op.reshape(q, [rows, shape[-1]])) if len(shape) != 2 else q
    out = int8_gemm(bb, a2d, zero_point, scale, w, w_scale, bias, groups, seven_bit(node.args[0]))
    return bb.emit(relax.op.reshape(out, shape[:-1] + [n])) if len(shape) != 2 else out


def conv_geometry(height: int, width: int, kernel, stride, padding, dilation) -> tuple[int, int]:
    """Output height and width of a convolution."""
    return tuple((size + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                 for i, size in enumerate((height, width)))


def padded_channels(channels: int, taps: int) -> int:
    """Channels rounded up so that a patch row (taps x channels) is a multiple of 4 long."""
    return next(c for c in range(channels, channels + 4) if c * taps % 4 == 0)


def im2col(x: te.Tensor, fill, kernel, stride, padding, dilation) -> te.Tensor:
    """Patches [N*OH*OW, KH*KW*Cp] of an NHWC image, in (kh, kw, c) order: each tap is a
    contiguous run of channels (a vector copy, see quant_schedule.Im2col). Outside the image
    `fill` (the quantized 0: exact padding; a tensor per image or 0-d, or a number); channels
    past C (padding to a multiple of 4) are 0 and meet zero weights."""
    batch, height, width, channels = (int(d) for d in x.shape)
    (kh, kw), (oh, ow) = kernel, conv_geometry(height, width, kernel, stride, padding, dilation)
    group = padded_channels(channels, kh * kw)

    def patch(m, kk):
        b, y, xx = m // (oh * ow), m // ow % oh, m % ow
        r, s, c = kk // (kw * group), kk // group % kw, kk % group
        iy, ix = y * stride[0] - padding[0] + r * dilation[0], xx * stride[1] - padding[1] + s * dilation[1]
        if isinstance(fill, te.Tensor):
            outside = (fill[b, 0, 0, 0] if len(fill.shape) else fill[()]).astype(x.dtype)
        else:
            outside = tirx.const(fill, x.dtype)
        inside = tirx.all(iy >= 0, iy < height, ix >= 0, ix < width)
        # indices clamped so that a vectorised select never reads outside the buffer
        value = tirx.if_then_else(inside, x[b, tirx.max(tirx.min(iy, height - 1), 0),
                                            tirx.max(tirx.min(ix, width - 1), 0), tirx.min(c, channels - 1)], outside)
        return tirx.if_then_else(c < channels, value, tirx.const(0, x.dtype))

    return te.compute((batch * oh * ow, kh * kw * group), patch, name="im2col", attrs={"accelc_group": group})


def patches_qgemm(x: te.Tensor, fill, packed: te.Tensor, n: int, name: str, kernel, stride, padding,
                  dilation) -> te.Tensor:
    """`im2col` and `qgemm` in one kernel (patch rows are a multiple of 4 long: no padding)."""
    return qgemm(im2col(x, fill, kernel, stride, padding, dilation), packed, n, name)


def conv_weight(bb, w) -> relax.Expr:
    """[O, C, KH, KW] -> [O, KH*KW*Cp], the (kh, kw, c) order of `im2col` (runs at load time)."""
    out_channels, channels, kh, kw = _shape(w)
    group = padded_channels(channels, kh * kw)
    w = relax.op.permute_dims(w, [0, 2, 3, 1])
    if group != channels:
        w = relax.op.nn.pad(w, [0, 0, 0, 0, 0, 0, 0, group - channels])
    return bb.emit(relax.op.reshape(w, [out_channels, kh * kw * group]))


def convert_conv2d_int8(node, importer):
    bb = importer.block_builder
    q, scale, zero_point, w, w_scale, bias = (_arg(importer, a) for a in node.args[:6])
    stride, padding, dilation = node.args[6:9]
    batch, _, height, width = _shape(q)
    out_channels, _, kh, kw = _shape(w)
    oh, ow = conv_geometry(height, width, (kh, kw), stride, padding, dilation)
    nhwc = bb.emit(relax.op.permute_dims(q, [0, 2, 3, 1]))
    geometry, w2d, groups = ((kh, kw), stride, padding, dilation), conv_weight(bb, w), batch if _shape(scale) else 1
    if out_channels % 8 == 0:  # patches computed inside the GEMM kernel, per row tile (quant_schedule.QGemm)
        name = "qgemm" if seven_bit(node.args[0]) else "qgemm_u8"
        acc = bb.emit_te(patches_qgemm, nhwc, zero_point, pack_weight(bb, w2d), out_channels, name, *geometry,
                         primfunc_name_hint=f"im2col_{name}")
        out = _requantize(bb, acc, batch * oh * ow, zero_point, scale, w2d, w_scale, bias, groups)
    else:
        cols = bb.emit_te(im2col, nhwc, zero_point, *geometry, primfunc_name_hint="im2col")
        out = int8_gemm(bb, cols, zero_point, scale, w2d, w_scale, bias, groups, seven_bit(node.args[0]))
    return bb.emit(relax.op.permute_dims(relax.op.reshape(out, [batch, oh, ow, out_channels]), [0, 3, 1, 2]))


def w8_matmul(x: te.Tensor, w_t: te.Tensor) -> te.Tensor:
    """float32 [M, N] = x [M, K] @ int8 [K, N] converted in the kernel (weights stay int8)."""
    k = te.reduce_axis((0, int(x.shape[1])), "k")
    return te.compute((x.shape[0], w_t.shape[1]), lambda i, j: te.sum(
        x[i, k] * w_t[k, j].astype("float32"), axis=k), name="w8_matmul")


def convert_linear_int8w(node, importer):
    bb = importer.block_builder
    x, w, w_scale, bias = (_arg(importer, a) for a in node.args)
    shape = _shape(x)
    rows, n = math.prod(shape[:-1]), _shape(w)[0]
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


CONVERTERS = {
    "quantize.default": convert_quantize,
    "choose_qparams.default": convert_choose_qparams,
    "dequantize_weight.default": convert_dequantize_weight,
    "linear_int8.default": convert_linear_int8,
    "conv2d_int8.default": convert_conv2d_int8,
    "linear_int8w.default": convert_linear_int8w,
}
assert set(CONVERTERS) == {op._opname + ".default" for op in OPS}
