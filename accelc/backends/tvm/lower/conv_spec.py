"""What a float32 convolution on a CPU target is (aten.convolution's arguments, 1-D as 2-D with
H = 1) and the NCHW <-> NHWC layout changes around the kernels that compute it in NHWC.

Every lowering of lower/conv.py and lower/conv_kinds.py reads an NHWC image and returns rows of
output channels ([N*OH*OW, O] or [N, OH, OW, O]); `to_nhwc` and `from_nhwc` are the transposes
around them, written so that those of consecutive convolutions cancel (layout_sink.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import relax

from accelc.backends.tvm.lower import bn_fold
from accelc.backends.tvm.lower.patches import conv_geometry
from accelc.backends.tvm.lower.shapes import static_shape


@dataclass(frozen=True)
class Conv:
    x: relax.Expr  # the input as imported: [N, C, H, W], or [N, C, W] when one_d
    w: relax.Expr  # the weight as imported ([O, C/g, KH, KW]; transposed: [C, O/g, KH, KW]; 1-D: no KH)
    bias: relax.Expr | None
    shape: tuple[int, int, int, int]  # (N, C, H, W), H = 1 for 1-D
    weight_shape: tuple[int, int, int, int]  # as above, KH = 1 for 1-D
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    output_padding: tuple[int, int]
    groups: int
    transposed: bool
    one_d: bool

    @property
    def kernel(self) -> tuple[int, int]:
        return self.weight_shape[2], self.weight_shape[3]

    @property
    def kind(self) -> str:
        """dense, depthwise (a group per input channel), grouped or transposed."""
        if self.transposed:
            return "transposed"
        if self.groups == 1:
            return "dense"
        return "depthwise" if self.groups == self.shape[1] else "grouped"

    @property
    def out_channels(self) -> int:
        return self.weight_shape[1] * self.groups if self.transposed else self.weight_shape[0]

    def out_size(self) -> tuple[int, int]:
        """Output height and width."""
        if not self.transposed:
            return conv_geometry(*self.shape[2:], self.kernel, self.stride, self.padding, self.dilation)
        return tuple((size - 1) * self.stride[i] - 2 * self.padding[i] + self.dilation[i] * (self.kernel[i] - 1)
                     + self.output_padding[i] + 1 for i, size in enumerate(self.shape[2:]))


def _ints(value, default: int, one_d: bool) -> tuple[int, int]:
    value = [default] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
    value = [int(v) for v in value]
    if one_d:
        return 1 if default else 0, value[0]  # H = 1: stride and dilation 1, padding 0 along it
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def parse(node, importer) -> Conv | None:
    """The convolution of an aten.convolution node, or None when accelc leaves it to TVM (not float32,
    not 1-D or 2-D, symbolic shapes, transposed with groups or dilation); an eval BatchNorm after it
    that bn_fold.annotate marked is folded into its weight and bias."""
    args = list(node.args) + [None] * (9 - len(node.args))
    x, w = importer.env[args[0]], importer.env[args[1]]
    if x.ty.shape is None or str(x.ty.dtype) != "float32" or len(x.ty.shape) not in (3, 4):
        return None
    try:
        shape, weight_shape = static_shape(x), static_shape(w)
    except TypeError:  # a symbolic dimension
        return None
    one_d = len(shape) == 3
    if one_d:
        shape, weight_shape = [shape[0], shape[1], 1, shape[2]], [*weight_shape[:2], 1, weight_shape[2]]
    conv = Conv(x, w, importer.env[args[2]] if args[2] is not None else None, tuple(shape), tuple(weight_shape),
                _ints(args[3], 1, one_d), _ints(args[4], 0, one_d), _ints(args[5], 1, one_d),
                _ints(args[7], 0, one_d), int(args[8] or 1), bool(args[6]), one_d)
    if conv.transposed and (conv.groups != 1 or conv.dilation != (1, 1)):
        return None
    return bn_fold.fold(node, importer, conv)  # a BatchNorm after it, into its weight and bias


def weight_4d(bb, conv: Conv) -> relax.Expr:
    """The weight with KH = 1 added for a 1-D convolution (runs once at load)."""
    if not conv.one_d:
        return conv.w
    return bb.emit(relax.op.reshape(conv.w, list(conv.weight_shape)))


def to_nhwc(bb, conv: Conv) -> relax.Expr:
    """The input as an NHWC image ([N, 1, W, C] for 1-D)."""
    if not conv.one_d:
        return bb.emit(relax.op.permute_dims(conv.x, [0, 2, 3, 1]))
    batch, channels, _, width = conv.shape
    return bb.emit(relax.op.reshape(relax.op.permute_dims(conv.x, [0, 2, 1]), [batch, 1, width, channels]))


def from_nhwc(bb, conv: Conv, out: relax.Expr) -> relax.Expr:
    """Output rows ([N*OH*OW, O] or [N, OH, OW, O]) plus the bias, back in NCHW (NCW for 1-D)."""
    if conv.bias is not None:
        out = relax.op.add(out, conv.bias)  # on the rows: fused into the kernel's epilogue
    out = bb.emit(out)
    (oh, ow), batch = conv.out_size(), conv.shape[0]
    if conv.one_d:
        return bb.emit(relax.op.permute_dims(relax.op.reshape(out, [batch, ow, conv.out_channels]), [0, 2, 1]))
    if len(static_shape(out)) != 4:
        out = relax.op.reshape(out, [batch, oh, ow, conv.out_channels])
    return bb.emit(relax.op.permute_dims(out, [0, 3, 1, 2]))
