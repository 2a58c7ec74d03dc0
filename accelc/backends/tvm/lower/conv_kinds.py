"""Depthwise, grouped and transposed float32 convolutions on CPU targets, in NHWC (lower/conv.py
dispatches to them; conv_spec.py has the layouts around them).

TVM 0.27 has no CPU schedule for any of them, and untuned they run as naive loop nests:
- depthwise (a group per input channel): a direct kernel, one output pixel's channels a vector and
  every tap one multiply-add on it (schedules/depthwise.py); as a GEMM it would have one column;
- grouped: the groups as images of their own (one NHWC image of C/g channels each), their patches
  and a GEMM per group in one kernel, as dense convolutions (schedules/matmul.py with a batch axis);
- transposed: a GEMM over input pixels (each pixel times every tap's weights) and col2im, which
  sums the at most ceil(K/stride)^2 taps landing on each output pixel as a gather (no scatter).
The weights' reshapes depend on parameters only and run once at load (LiftTransformParams).
"""
from __future__ import annotations

import math

from tvm import relax, te, tirx

from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.lower.conv_spec import Conv, weight_4d
from accelc.backends.tvm.lower.patches import conv_weight, im2col
from accelc.backends.tvm.lower.shapes import static_shape


def _clamp(index, size: int):
    """An index kept inside the buffer, so that a vectorised select never reads outside it."""
    return tirx.max(tirx.min(index, size - 1), 0)


def depthwise_nhwc(x: te.Tensor, weight: te.Tensor, stride, padding, dilation) -> te.Tensor:
    """out[n, y, x, o] = sum_{r, s} x[n, iy, ix, o // m] * weight[r, s, o], for an NHWC image x and
    weights [KH, KW, O] (m = O / C output channels per input channel); zero outside the image."""
    batch, height, width, channels = (int(d) for d in x.shape)
    kh, kw, out_channels = (int(d) for d in weight.shape)
    multiplier = out_channels // channels
    oh, ow = ((size + 2 * padding[i] - dilation[i] * (k - 1) - 1) // stride[i] + 1
              for i, (size, k) in enumerate(((height, kh), (width, kw))))
    r, s = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s")

    def tap(n, y, xx, o):
        iy, ix = y * stride[0] - padding[0] + r * dilation[0], xx * stride[1] - padding[1] + s * dilation[1]
        inside = tirx.all(iy >= 0, iy < height, ix >= 0, ix < width)
        c = o // multiplier if multiplier > 1 else o
        value = tirx.if_then_else(inside, x[n, _clamp(iy, height), _clamp(ix, width), c], tirx.const(0, x.dtype))
        return te.sum(value * weight[r, s, o], axis=[r, s])

    return te.compute((batch, oh, ow, out_channels), tap, name="depthwise", attrs=tags.attrs(tags.DEPTHWISE))


def depthwise(bb, conv: Conv, nhwc: relax.Expr) -> relax.Expr:
    """[O, 1, KH, KW] weights as [KH, KW, O] (at load), then the direct kernel."""
    weight = relax.op.permute_dims(weight_4d(bb, conv), [2, 3, 0, 1])  # [KH, KW, O, 1]
    weight = bb.emit(relax.op.reshape(weight, [*conv.kernel, conv.out_channels]))
    return bb.emit_te(depthwise_nhwc, nhwc, weight, conv.stride, conv.padding, conv.dilation,
                      primfunc_name_hint="depthwise")


def grouped_patches_matmul(images: te.Tensor, weight: te.Tensor, kernel, stride, padding, dilation) -> te.Tensor:
    """out[g, i, j] = sum_k patches[g * M + i, k] * weight[g, k, j]: the patches of G*N images (group
    g's images first) and a GEMM per group, tagged as lower/conv.patches_matmul's blocks so that
    schedules/matmul.py computes each row tile's patches just before the tile."""
    cols = im2col(images, 0.0, kernel, stride, padding, dilation)
    groups, depth, out_per_group = (int(d) for d in weight.shape)
    rows = int(cols.shape[0]) // groups
    k = te.reduce_axis((0, depth), name="k")
    return te.compute((groups, rows, out_per_group),
                      lambda g, i, j: te.sum(cols[g * rows + i, k] * weight[g, k, j], axis=k),
                      name="matmul", attrs=tags.attrs(tags.GEMM))


def grouped(bb, conv: Conv, nhwc: relax.Expr) -> relax.Expr:
    """Each group's channels an image of its own ([G*N, H, W, C/g]), one batched GEMM [G, M, O/g],
    its output rows interleaved back to [M, O] (fused with the bias and the layout change after it)."""
    batch, channels, height, width = conv.shape
    groups, out_channels = conv.groups, conv.out_channels
    per_group = channels // groups
    images = relax.op.reshape(nhwc, [batch, height, width, groups, per_group])
    images = bb.emit(relax.op.reshape(relax.op.permute_dims(images, [3, 0, 1, 2, 4]),
                                      [groups * batch, height, width, per_group]))
    weight = conv_weight(bb, weight_4d(bb, conv))  # [O, KH*KW*Cp], (kh, kw, c) order
    depth = static_shape(weight)[1]
    weight = bb.emit(relax.op.permute_dims(relax.op.reshape(weight, [groups, out_channels // groups, depth]),
                                           [0, 2, 1]))
    out = bb.emit_te(grouped_patches_matmul, images, weight, conv.kernel, conv.stride, conv.padding,
                     conv.dilation, primfunc_name_hint="grouped_im2col_matmul")
    rows = math.prod(conv.out_size()) * batch
    return relax.op.reshape(relax.op.permute_dims(out, [1, 0, 2]), [rows, out_channels])


def col2im(cols: te.Tensor, image, out_size, stride, padding) -> te.Tensor:
    """out[n, Y, X, o] = sum of cols[pixel (y, x), tap (r, s), o] over the taps with y*stride + r =
    Y + padding (likewise for X): for each output row only r = (Y + p) % stride + t*stride, y =
    (Y + p) // stride - t can land, t < ceil(KH / stride); the sum is written out, no reduction."""
    batch, height, width, kh, kw = image
    out_channels = int(cols.shape[1]) // (kh * kw)
    steps = [math.ceil(k / st) for k, st in zip((kh, kw), stride)]

    def gather(n, yy, xx, o):
        total = tirx.const(0, cols.dtype)
        for t in range(steps[0]):
            for u in range(steps[1]):
                py, px = yy + padding[0], xx + padding[1]
                r, s = py % stride[0] + t * stride[0], px % stride[1] + u * stride[1]
                y, x = py // stride[0] - t, px // stride[1] - u
                inside = tirx.all(r < kh, s < kw, y >= 0, y < height, x >= 0, x < width)
                pixel = (n * height + _clamp(y, height)) * width + _clamp(x, width)
                tap = _clamp(r, kh) * kw + _clamp(s, kw)
                total = total + tirx.if_then_else(inside, cols[pixel, tap * out_channels + o],
                                                  tirx.const(0, cols.dtype))
        return total

    return te.compute((batch, *out_size, out_channels), gather, name="col2im")


def transposed(bb, conv: Conv, nhwc: relax.Expr) -> relax.Expr:
    """Every input pixel times every tap's weights (a GEMM [N*H*W, C] x [C, KH*KW*O]), then col2im."""
    batch, channels, height, width = conv.shape
    (kh, kw), out_channels = conv.kernel, conv.out_channels
    weight = relax.op.permute_dims(weight_4d(bb, conv), [0, 2, 3, 1])  # [C, KH, KW, O]
    weight = bb.emit(relax.op.reshape(weight, [channels, kh * kw * out_channels]))
    pixels = relax.op.reshape(nhwc, [batch * height * width, channels])
    cols = bb.emit(relax.op.matmul(pixels, weight))
    return bb.emit_te(col2im, cols, (batch, height, width, kh, kw), conv.out_size(), conv.stride, conv.padding,
                      primfunc_name_hint="col2im")


KINDS = {"depthwise": depthwise, "grouped": grouped, "transposed": transposed}
