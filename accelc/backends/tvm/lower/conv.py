"""float32 2-D convolutions on CPU targets as im2col + the register-tiled matmul, in one kernel.

TVM 0.27's CPU pipeline has no default schedule for conv2d, and untuned it runs naive loops.
Lowered the way the int8 path lowers its convolutions (patches.im2col: NHWC patches, one
contiguous run of channels per tap), a convolution is a matmul that schedules/matmul.py tiles.
Patches and matmul are one kernel: the schedule computes each row tile's patches just before the
tile, in L1, instead of writing all of them to memory first (9x the input for a 3x3 kernel). The
weight reshapes depend on parameters only and run once at load (LiftTransformParams). A stem of
a few channels (RGB) pads its input first and takes its patches a kernel row at a time
(patches.im2col_runs): one vector copy per row of 7 taps instead of 7 copies of 3 floats. A 1x1
convolution of stride 1 has no patches to take: its GEMM reads the NHWC input in place. Measured
effects: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import functools
from typing import Callable

from tvm import relax, te

from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.kernels.isa import Isa
from accelc.backends.tvm.lower import conv_kinds, conv_spec, gemm, patches


def convert_conv2d(node, importer, isa: Isa):
    """aten.convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    float32 convolutions in NHWC, 1-D ones as 2-D with H = 1: dense ones as im2col + matmul,
    depthwise, grouped and transposed ones as conv_kinds.py lowers them; anything else (other
    dtypes, 3-D, transposed with groups or dilation) as TVM imports it."""
    conv = conv_spec.parse(node, importer)
    if conv is None:
        return importer._convolution(node)
    bb = importer.block_builder
    lower = conv_kinds.KINDS.get(conv.kind) or functools.partial(dense, isa=isa)
    return conv_spec.from_nhwc(bb, conv, lower(bb, conv, conv_spec.to_nhwc(bb, conv)))


def dense(bb, conv: conv_spec.Conv, nhwc, isa: Isa):
    """Rows [N*OH*OW, O] of a dense convolution: patches and matmul in one kernel (a stem of few
    channels: patches by kernel rows from an input padded first, patches.im2col_runs)."""
    runs = patches.takes_runs(conv.shape[1], conv.dilation)
    w4d = conv_spec.weight_4d(bb, conv)
    weight = bb.emit(relax.op.permute_dims(patches.run_weight(bb, w4d) if runs else patches.conv_weight(bb, w4d)))
    if gemm.packs(conv.out_channels, isa):
        weight = gemm.pack_columns(bb, weight, gemm.panel_columns(isa))
    if not runs and pointwise(conv):
        return bb.emit_te(pointwise_matmul, nhwc, weight, conv.out_channels, primfunc_name_hint="conv1x1_matmul")
    if runs:
        pads = patches.run_padding(conv.shape[3], conv.kernel, conv.stride, conv.padding, conv.shape[1])
        padded = bb.emit(relax.op.nn.pad(nhwc, pads)) if any(pads) else nhwc
        return bb.emit_te(runs_matmul, padded, weight, conv.out_size(), conv.kernel, conv.stride, conv.out_channels,
                          primfunc_name_hint="im2col_matmul")
    return bb.emit_te(patches_matmul, nhwc, weight, conv.kernel, conv.stride, conv.padding, conv.dilation,
                      conv.out_channels, primfunc_name_hint="im2col_matmul")


def pointwise(conv: conv_spec.Conv) -> bool:
    """A 1x1 convolution of stride 1 and no padding whose channels need no padding to K_GROUP: its
    patches matrix is the NHWC input itself ([N*H*W, C] row-major), so the GEMM reads it in place."""
    return (conv.kernel == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
            and patches.padded_channels(conv.shape[1], 1) == conv.shape[1])


def pointwise_matmul(x: te.Tensor, weight: te.Tensor, out_channels: int | None = None) -> te.Tensor:
    """A `pointwise` convolution as the GEMM over the NHWC input's rows: no patches block to copy
    (with 64 channels an output has only 64 FMAs to hide a copy behind)."""
    batch, height, width, _ = (int(d) for d in x.shape)
    pixels = height * width
    return _matmul_of(lambda m, c: x[m // pixels, m // width % height, m % width, c], batch * pixels, weight,
                      out_channels)


def runs_matmul(padded: te.Tensor, weight: te.Tensor, out_hw, kernel, stride, out_channels: int) -> te.Tensor:
    """`patches_matmul` over patches by kernel rows (patches.im2col_runs) of a padded input."""
    return _matmul(patches.im2col_runs(padded, out_hw, kernel, stride), weight, out_channels)


def patches_matmul(x: te.Tensor, weight: te.Tensor, kernel, stride, padding, dilation,
                   out_channels: int | None = None) -> te.Tensor:
    """im2col and the matmul in one kernel: schedules/matmul.py computes each row tile's patches
    just before the tile, in L1, instead of all patches to memory first (9x the input for 3x3).
    `weight` is [K, N], or panels [N / nr, K, nr] (gemm.pack_columns)."""
    return _matmul(patches.im2col(x, 0.0, kernel, stride, padding, dilation), weight, out_channels)


def _matmul(cols: te.Tensor, weight: te.Tensor, out_channels: int | None) -> te.Tensor:
    return _matmul_of(lambda i, k: cols[i, k], int(cols.shape[0]), weight, out_channels)


def _matmul_of(read_a: Callable, rows: int, weight: te.Tensor, out_channels: int | None) -> te.Tensor:
    """C = A @ weight with A[i, k] = read_a(i, k); weight [K, N] or panels (gemm.pack_columns)."""
    if len(weight.shape) == 3:
        return gemm.panel_matmul_of(read_a, rows, weight, out_channels)
    k = te.reduce_axis((0, int(weight.shape[0])), name="k")
    return te.compute((rows, weight.shape[1]), lambda i, j: te.sum(read_a(i, k) * weight[k, j], axis=k),
                      name="matmul", attrs=tags.attrs(tags.GEMM))


def converters(isa: Isa) -> dict:
    """The importer's custom_convert_map entries for float GEMMs on a CPU of `isa` (the weight
    panels' width depends on it)."""
    return {"convolution.default": functools.partial(convert_conv2d, isa=isa), **gemm.converters(isa)}
