"""float32 2-D average, max and adaptive average pools on CPU targets, in NHWC.

TVM's legalization pads the whole input (to the window's reach) and sums every tap of the window
as a scalar loop: EfficientNet's pooler, an AvgPool2d whose window (hidden_dim = 320 or 1280 in
ceil mode) is far larger than its 1x1 input, summed 320 x 320 zeros per channel. Here a window
is clamped to the rows and columns it can reach (taps that only ever land in the padding add
nothing to a sum and lose every max), the padding is a bound check, not a padded copy, and the
image is NHWC so that schedules/pool.py sums a vector of channels per tap. The transposes around
the kernel are those of the convolutions (lower/conv_spec.py), so that they cancel between a
convolution and its pool (layout_sink.py). Semantics are PyTorch's: ceil mode, padding counted
or not, divisor_override, dilation for max pools, adaptive windows [floor(i*H/o), ceil((i+1)*H/o)).
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import relax, te, tirx

from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.lower.shapes import static_shape


@dataclass(frozen=True)
class Pool:
    kind: str  # "avg", "max" or "adaptive" (average)
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor: int | None = None  # divisor_override
    out: tuple[int, int] | None = None  # adaptive: the output size


def _pair(value, default) -> tuple[int, int]:
    value = default if value is None or value == [] else value
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    return (int(value[0]), int(value[-1]))


def out_size(size: int, pool: Pool, axis: int) -> int:
    """PyTorch's pooled size: a last window in ceil mode must start inside the input or its left padding."""
    k, s, p, d = pool.kernel[axis], pool.stride[axis], pool.padding[axis], pool.dilation[axis]
    span = size + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if pool.ceil_mode else 0)) // s + 1
    return out - 1 if pool.ceil_mode and (out - 1) * s >= size + p else out


def _clamp(index, size: int):
    """An index kept inside the buffer, so that a vectorised select never reads outside it."""
    return tirx.max(tirx.min(index, size - 1), 0)


def _reach(size: int, pool: Pool, axis: int) -> int:
    """Window taps that can land inside the input for some output position: taps past the last
    input row (for the first window, the farthest-reaching one) only ever read padding."""
    return min(pool.kernel[axis], (size - 1 + pool.padding[axis]) // pool.dilation[axis] + 1)


def _avg_count(pos, size: int, pool: Pool, axis: int):
    """The number of taps the average of output position `pos` divides by (PyTorch's rule)."""
    k, s, p = pool.kernel[axis], pool.stride[axis], pool.padding[axis]
    start = pos * s - p
    end = tirx.min(start + k, size + p)
    if pool.count_include_pad:
        return end - start
    return tirx.min(end, size) - tirx.max(start, 0)


def windowed_nhwc(x: te.Tensor, pool: Pool) -> te.Tensor:
    """avg or max pool of an NHWC image with fixed windows: out[n, y, x, c]."""
    batch, height, width, channels = (int(d) for d in x.shape)
    oh, ow = out_size(height, pool, 0), out_size(width, pool, 1)
    r, s = te.reduce_axis((0, _reach(height, pool, 0)), name="r"), te.reduce_axis((0, _reach(width, pool, 1)), name="s")
    neutral = tirx.const(0.0 if pool.kind == "avg" else float("-inf"), x.dtype)
    combine = te.sum if pool.kind == "avg" else te.max

    def tap(n, y, xx, c):
        iy = y * pool.stride[0] - pool.padding[0] + r * pool.dilation[0]
        ix = xx * pool.stride[1] - pool.padding[1] + s * pool.dilation[1]
        inside = tirx.all(iy >= 0, iy < height, ix >= 0, ix < width)
        return combine(tirx.if_then_else(inside, x[n, _clamp(iy, height), _clamp(ix, width), c], neutral), axis=[r, s])

    pooled = te.compute((batch, oh, ow, channels), tap, name="pool", attrs=tags.attrs(tags.POOL))
    if pool.kind == "max":
        return pooled

    def average(n, y, xx, c):
        count = pool.divisor or _avg_count(y, height, pool, 0) * _avg_count(xx, width, pool, 1)
        return pooled[n, y, xx, c] / tirx.Cast(x.dtype, count)
    return te.compute(pooled.shape, average, name="pool_avg")


def adaptive_nhwc(x: te.Tensor, out: tuple[int, int]) -> te.Tensor:
    """Adaptive average pool: output (i, j) averages rows [floor(i*H/oh), ceil((i+1)*H/oh)) and
    the same for columns; the reduce axes run over the widest window, narrower ones bound-checked."""
    batch, height, width, channels = (int(d) for d in x.shape)
    widest = [max(-(-(i + 1) * size // o) - i * size // o for i in range(o)) for size, o in zip((height, width), out)]
    r, s = te.reduce_axis((0, widest[0]), name="r"), te.reduce_axis((0, widest[1]), name="s")

    def bounds(pos, size: int, o: int):
        return tirx.floordiv(pos * size, o), tirx.floordiv((pos + 1) * size + o - 1, o)

    def tap(n, y, xx, c):
        (y0, y1), (x0, x1) = bounds(y, height, out[0]), bounds(xx, width, out[1])
        inside = tirx.all(y0 + r < y1, x0 + s < x1)
        value = x[n, _clamp(y0 + r, height), _clamp(x0 + s, width), c]
        return te.sum(tirx.if_then_else(inside, value, tirx.const(0.0, x.dtype)), axis=[r, s])

    pooled = te.compute((batch, *out, channels), tap, name="pool", attrs=tags.attrs(tags.POOL))

    def average(n, y, xx, c):
        (y0, y1), (x0, x1) = bounds(y, height, out[0]), bounds(xx, width, out[1])
        return pooled[n, y, xx, c] / tirx.Cast(x.dtype, (y1 - y0) * (x1 - x0))
    return te.compute(pooled.shape, average, name="pool_avg")


def _emit(importer, x: relax.Expr, pool: Pool) -> relax.Expr:
    """The pool in NHWC between the transposes the convolutions use (they cancel with theirs)."""
    bb = importer.block_builder
    nhwc = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
    if pool.kind == "adaptive":
        out = bb.emit_te(adaptive_nhwc, nhwc, pool.out, primfunc_name_hint="adaptive_avg_pool")
    else:  # emit_te takes tensors and plain values only: the Pool is bound here
        out = bb.emit_te(lambda t: windowed_nhwc(t, pool), nhwc, primfunc_name_hint=f"{pool.kind}_pool")
    return bb.emit(relax.op.permute_dims(out, [0, 3, 1, 2]))


def _image(importer, node) -> relax.Expr | None:
    """The pool's input when accelc lowers it: a float32 NCHW image of static shape."""
    x = importer.env[node.args[0]]
    if x.ty.shape is None or str(x.ty.dtype) != "float32" or len(x.ty.shape) != 4:
        return None
    try:
        static_shape(x)
    except TypeError:  # a symbolic dimension
        return None
    return x


def convert_avg_pool2d(node, importer):
    """aten.avg_pool2d(x, kernel, stride=kernel, padding=0, ceil_mode, count_include_pad, divisor_override)."""
    args = list(node.args) + [None] * (7 - len(node.args))
    if (x := _image(importer, node)) is None:
        return importer._avg_pool2d(node)
    kernel = _pair(args[1], None)
    pool = Pool("avg", kernel, _pair(args[2], kernel), _pair(args[3], 0), ceil_mode=bool(args[4]),
                count_include_pad=True if args[5] is None else bool(args[5]),
                divisor=int(args[6]) if args[6] else None)
    return _emit(importer, x, pool)


def _max_pool(node) -> Pool:
    args = list(node.args) + [None] * (6 - len(node.args))
    kernel = _pair(args[1], None)
    return Pool("max", kernel, _pair(args[2], kernel), _pair(args[3], 0), _pair(args[4], 1), bool(args[5]))


def convert_max_pool2d(node, importer):
    """aten.max_pool2d(x, kernel, stride=kernel, padding=0, dilation=1, ceil_mode=False)."""
    if (x := _image(importer, node)) is None:
        return importer._max_pool2d(node)
    return _emit(importer, x, _max_pool(node))


def convert_max_pool2d_with_indices(node, importer):
    """As max_pool2d; the indices are zeros, as TVM's own converter gives (inference reads the values)."""
    if (x := _image(importer, node)) is None:
        return importer._max_pool2d_with_indices(node)
    out = _emit(importer, x, _max_pool(node))
    return importer.block_builder.emit(relax.Tuple([out, relax.op.zeros_like(out)]))


def convert_adaptive_avg_pool2d(node, importer):
    """aten.adaptive_avg_pool2d(x, output_size)."""
    if (x := _image(importer, node)) is None:
        return importer._adaptive_avg_pool2d(node)
    size, raw = static_shape(x)[2:], node.args[1]
    raw = list(raw) if isinstance(raw, (list, tuple)) else [raw, raw]
    out = [int(o) if o is not None else size[i] for i, o in enumerate(raw[-2:] if len(raw) > 1 else raw * 2)]
    return _emit(importer, x, Pool("adaptive", (1, 1), (1, 1), (0, 0), out=(out[0], out[1])))


CONVERTERS = {
    "avg_pool2d.default": convert_avg_pool2d,
    "max_pool2d.default": convert_max_pool2d,
    "max_pool2d_with_indices.default": convert_max_pool2d_with_indices,
    "adaptive_avg_pool2d.default": convert_adaptive_avg_pool2d,
    "_adaptive_avg_pool2d.default": convert_adaptive_avg_pool2d,
}
