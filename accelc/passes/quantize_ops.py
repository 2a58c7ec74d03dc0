"""accelc's quantization ops, defined as torch custom ops in the `accelc` namespace.

Custom ops (not torch.ao) because they pass through torch.export and run_decompositions as
single nodes: the TVM importer finds them by name (backends/tvm/lower/quant.py maps them to
int8 Relax) and eager PyTorch runs them as the reference the artifact is verified against.
One scheme, written once here:

  activations  uint8, asymmetric: q = clamp(round_half_even(x * (1 / scale)) + zp, qmin, qmax)
               (a multiply by the float32 reciprocal: cheaper than a divide in the GEMM epilogue)
               scale/zp are 0-d (per tensor) or keep the reduced dims as 1 (per sample, dynamic)
  weights      int8, symmetric per output channel (dim 0), values in [-127, 127]
  int8 layer   acc = sum (q - zp) * w_int8, exact (int32 in the kernel; float64 here, exact for
               any realistic depth), then y = float32(acc) * (scale * w_scale) + bias

The eager layer ops compute the sum exactly and round in the kernel's order, so the compiled
int8 model matches its graph to the last bit instead of flipping an occasional rounding of the
next layer's quantize (which a float32 fake-quant reference, summing in another order, would).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LIB = torch.library.Library("accelc", "DEF")  # noqa: TOR901 - ops are defined once per process

SCHEMAS = {
    "quantize": "quantize(Tensor x, Tensor scale, Tensor zero_point, int qmin, int qmax) -> Tensor",
    "choose_qparams": "choose_qparams(Tensor x, int qmin, int qmax, int[]? dims) -> (Tensor, Tensor)",
    "dequantize_weight": "dequantize_weight(Tensor w, Tensor scale) -> Tensor",
    "linear_int8": "linear_int8(Tensor q, Tensor scale, Tensor zero_point, Tensor w, Tensor w_scale, "
                   "Tensor? bias) -> Tensor",
    "conv2d_int8": "conv2d_int8(Tensor q, Tensor scale, Tensor zero_point, Tensor w, Tensor w_scale, "
                   "Tensor? bias, int[] stride, int[] padding, int[] dilation) -> Tensor",
    "linear_int8w": "linear_int8w(Tensor x, Tensor w, Tensor w_scale, Tensor? bias) -> Tensor",
}


def quantize(x, scale, zero_point, qmin: int, qmax: int):
    return torch.clamp(torch.round(x * torch.reciprocal(scale)) + zero_point, qmin, qmax).to(torch.uint8)


def choose_qparams(x, qmin: int, qmax: int, dims):
    """Runtime (dynamic) qparams from the range of `x` over `dims` (kept as size-1 dims; None: the
    whole tensor, 0-d qparams). The range always includes 0 so that zero padding (convolutions,
    the runtime's batch padding) is exact and cannot widen it."""
    keep = dims is not None
    dims = list(dims) if keep else list(range(x.dim()))
    low = torch.amin(x, dim=dims, keepdim=keep).clamp(max=0)
    high = torch.amax(x, dim=dims, keepdim=keep).clamp(min=0)
    scale = (high - low) / float(qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero input
    zero_point = torch.clamp(qmin - torch.round(low / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def dequantize_weight(w, scale):
    return w.to(torch.float32) * scale.reshape(-1, *([1] * (w.dim() - 1)))


def _centred(q, zero_point) -> torch.Tensor:
    """q - zp as float64: integers, so every sum over them is exact."""
    return (q.to(torch.int32) - zero_point).to(torch.float64)


def _requantize(acc, factor, bias, channel_shape: list[int]):
    """float32(acc) * factor + bias, in the kernel's order of roundings (factor = scale * w_scale)."""
    out = acc.to(torch.float32) * factor
    return out + bias.reshape(channel_shape) if bias is not None else out


def linear_int8(q, scale, zero_point, w, w_scale, bias):
    acc = F.linear(_centred(q, zero_point), w.to(torch.float64))
    return _requantize(acc, scale * w_scale, bias, [-1])  # scale: 0-d or [..., 1] per row


def conv2d_int8(q, scale, zero_point, w, w_scale, bias, stride, padding, dilation):
    acc = F.conv2d(_centred(q, zero_point), w.to(torch.float64), None, stride, padding, dilation)
    factor = scale.reshape(-1, 1, 1, 1) * w_scale.reshape(1, -1, 1, 1) if scale.dim() else \
        scale * w_scale.reshape(-1, 1, 1)  # per image [N, 1, 1, 1] or 0-d
    return _requantize(acc, factor, bias, [-1, 1, 1])


def linear_int8w(x, w, w_scale, bias):
    out = F.linear(x, w.to(x.dtype)) * w_scale
    return out + bias if bias is not None else out


def _fake_qparams(x, qmin, qmax, dims):
    shape = [1 if d in dims else size for d, size in enumerate(x.shape)] if dims is not None else []
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.int32)


# Shapes for export's fake tensors: the eager functions run on fake tensors too, except these.
FAKES = {
    "quantize": lambda x, *rest: torch.empty_like(x, dtype=torch.uint8),
    "choose_qparams": _fake_qparams,
}

for _name, _schema in SCHEMAS.items():
    LIB.define(_schema)
    LIB.impl(_name, globals()[_name], "CompositeExplicitAutograd")
    torch.library.register_fake(f"accelc::{_name}", FAKES.get(_name, globals()[_name]), lib=LIB)

ops = torch.ops.accelc
OPS = {getattr(ops, name).default for name in SCHEMAS}
