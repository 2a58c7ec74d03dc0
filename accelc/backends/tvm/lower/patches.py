"""Convolutions as matrix multiplies: patches of an NHWC image (im2col) and the weights in the
matching order, shared by the float (conv.py) and int8 (quant.py) lowerings.

Each tap of a patch row is a contiguous run of channels, so the copy is one vector per tap
(schedules/im2col.py, schedules/loops.patches_per_tile); channels are padded so that a patch row
is a multiple of `k_group` long (the int8 micro-kernels sum 4 k at a time; the float GEMM splits k
without remainder).
"""
from __future__ import annotations

from tvm import relax, te, tirx

from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.lower.shapes import static_shape

K_GROUP = 4  # patch rows a multiple of this long


def conv_geometry(height: int, width: int, kernel, stride, padding, dilation) -> tuple[int, int]:
    """Output height and width of a convolution."""
    return tuple((size + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                 for i, size in enumerate((height, width)))


def padded_channels(channels: int, taps: int, k_group: int = K_GROUP) -> int:
    """Channels rounded up so that a patch row (taps x channels) is a multiple of `k_group` long."""
    return next(c for c in range(channels, channels + k_group) if c * taps % k_group == 0)


def im2col(x: te.Tensor, fill, kernel, stride, padding, dilation, k_group: int = K_GROUP) -> te.Tensor:
    """Patches [N*OH*OW, KH*KW*Cp] of an NHWC image, in (kh, kw, c) order. Outside the image `fill`
    (the quantized 0: exact padding; a tensor per image or 0-d, or a number); channels past C
    (padding to a multiple of `k_group`) are 0 and meet zero weights."""
    batch, height, width, channels = (int(d) for d in x.shape)
    (kh, kw), (oh, ow) = kernel, conv_geometry(height, width, kernel, stride, padding, dilation)
    group = padded_channels(channels, kh * kw, k_group)

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

    return te.compute((batch * oh * ow, kh * kw * group), patch, name="im2col",
                      attrs=tags.attrs(tags.IM2COL, **{tags.PATCH_GROUP: group}))


RUN_CHANNELS = 4  # convolutions with at most this many input channels (an RGB stem) read their patches
# as one run per kernel row: a tap of 3 channels is too short for a vector, a row of 7 taps is not


def takes_runs(channels: int, dilation) -> bool:
    """Whether a float convolution's patches go by kernel rows (`im2col_runs`): few channels, and
    kernel rows contiguous in the input (no dilation)."""
    return channels <= RUN_CHANNELS and tuple(dilation) == (1, 1)


def run_length(kernel_width: int, channels: int, k_group: int = K_GROUP) -> int:
    """A kernel row of the patches: kw taps x C channels, padded to a multiple of `k_group`."""
    return -(-kernel_width * channels // k_group) * k_group


def run_padding(width: int, kernel, stride, padding, channels: int) -> list[int]:
    """The NHWC pad widths `im2col_runs` reads through: the convolution's padding, and on the
    right enough columns that a run's padded tail (past kw x C) stays inside the buffer."""
    kw, run = kernel[1], run_length(kernel[1], channels)
    (_, ow) = conv_geometry(1, width, kernel, stride, padding, (1, 1))
    right = max(padding[1], (ow - 1) * stride[1] - padding[1] + kw + -(-(run - kw * channels) // channels) - width)
    return [0, 0, padding[0], padding[0], padding[1], right, 0, 0]


def im2col_runs(xp: te.Tensor, out_hw, kernel, stride) -> te.Tensor:
    """Patches [N*OH*OW, KH*run] of an NHWC image padded beforehand (`run_padding`), in (kh, (kw,
    c)) order: each kernel row is one contiguous run of the input, copied as one vector; the run's
    padding to a multiple of 4 is 0 (it meets zero weights; the select keeps a NaN next door out)."""
    batch, _, _, channels = (int(d) for d in xp.shape)
    (kh, kw), (oh, ow) = kernel, out_hw
    run = run_length(kw, channels)

    def patch(m, kk):
        b, y, xx = m // (oh * ow), m // ow % oh, m % ow
        r, q = kk // run, kk % run
        value = xp[b, y * stride[0] + r, xx * stride[1] + q // channels, q % channels]
        return tirx.if_then_else(q < kw * channels, value, tirx.const(0, xp.dtype))

    return te.compute((batch * oh * ow, kh * run), patch, name="im2col",
                      attrs=tags.attrs(tags.IM2COL, **{tags.PATCH_GROUP: run}))


def run_weight(bb, w) -> relax.Expr:
    """[O, C, KH, KW] -> [O, KH*run], the (kh, (kw, c)) order of `im2col_runs` (runs at load time)."""
    out_channels, channels, kh, kw = static_shape(w)
    run = run_length(kw, channels)
    w = relax.op.reshape(relax.op.permute_dims(w, [0, 2, 3, 1]), [out_channels, kh, kw * channels])
    if run != kw * channels:
        w = relax.op.nn.pad(w, [0, 0, 0, 0, 0, run - kw * channels])
    return bb.emit(relax.op.reshape(w, [out_channels, kh * run]))


def conv_weight(bb, w, k_group: int = K_GROUP) -> relax.Expr:
    """[O, C, KH, KW] -> [O, KH*KW*Cp], the (kh, kw, c) order of `im2col` (runs at load time)."""
    out_channels, channels, kh, kw = static_shape(w)
    group = padded_channels(channels, kh * kw, k_group)
    w = relax.op.permute_dims(w, [0, 2, 3, 1])
    if group != channels:
        w = relax.op.nn.pad(w, [0, 0, 0, 0, 0, 0, 0, group - channels])
    return bb.emit(relax.op.reshape(w, [out_channels, kh * kw * group]))
