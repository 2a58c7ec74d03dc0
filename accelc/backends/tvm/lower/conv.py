"""float32 2-D convolutions on CPU targets as im2col + the register-tiled matmul, in one kernel.

TVM 0.27's CPU pipeline has no default schedule for conv2d, and untuned it runs naive loops.
Lowered the way the int8 path lowers its convolutions (patches.im2col: NHWC patches, one
contiguous run of channels per tap), a convolution is a matmul that schedules/matmul.py tiles.
Patches and matmul are one kernel: the schedule computes each row tile's patches just before the
tile, in L1, instead of writing all of them to memory first (9x the input for a 3x3 kernel). The
weight reshapes depend on parameters only and run once at load (LiftTransformParams). Measured
effects: benchmarks/RESULTS.md.
"""
from __future__ import annotations

from tvm import relax, te

from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.lower.patches import conv_geometry, conv_weight, im2col
from accelc.backends.tvm.lower.shapes import static_shape


def _pair(value) -> list[int]:
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    return value * 2 if len(value) == 1 else value


def convert_conv2d(node, importer):
    """aten.convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    plain 2-D float32 convolutions as im2col + matmul; anything else as TVM imports it."""
    args = list(node.args) + [None] * (9 - len(node.args))
    x, w = importer.env[args[0]], importer.env[args[1]]
    shape = static_shape(x) if x.ty.shape is not None else []
    if args[6] or (args[8] or 1) != 1 or len(shape) != 4 or str(x.ty.dtype) != "float32":
        return importer._convolution(node)
    stride, padding, dilation = (_pair(v if v is not None else d) for v, d in zip(args[3:6], (1, 0, 1)))
    batch, _, height, width = shape
    out_channels, _, kh, kw = static_shape(w)
    oh, ow = conv_geometry(height, width, (kh, kw), stride, padding, dilation)
    bb = importer.block_builder
    nhwc = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
    weight = bb.emit(relax.op.permute_dims(conv_weight(bb, w)))
    out = bb.emit_te(patches_matmul, nhwc, weight, (kh, kw), stride, padding, dilation,
                     primfunc_name_hint="im2col_matmul")
    bias = importer.env[args[2]] if args[2] is not None else None
    out = bb.emit(relax.op.add(out, bias) if bias is not None else out)
    return bb.emit(relax.op.permute_dims(relax.op.reshape(out, [batch, oh, ow, out_channels]), [0, 3, 1, 2]))


def patches_matmul(x: te.Tensor, weight: te.Tensor, kernel, stride, padding, dilation) -> te.Tensor:
    """im2col and the matmul in one kernel: schedules/matmul.py computes each row tile's patches
    just before the tile, in L1, instead of all patches to memory first (9x the input for 3x3)."""
    cols = im2col(x, 0.0, kernel, stride, padding, dilation)
    k = te.reduce_axis((0, int(cols.shape[1])), name="k")
    return te.compute((cols.shape[0], weight.shape[1]), lambda i, j: te.sum(cols[i, k] * weight[k, j], axis=k),
                      name="matmul", attrs=tags.attrs(tags.GEMM))


CONVERTERS = {"convolution.default": convert_conv2d}
