"""float32 Linear layers (and the convolutions' GEMMs) on CPU targets over weights packed in column
panels.

TVM imports a Linear as a transpose and a matmul that reads B[k, j] row by row: every k step of a
register tile loads its columns from a different row, N floats apart, so the tile streams the
whole weight through the caches with a stride (and, at N = 1024 floats, into the same few cache
sets). Packed as panels [N / nr, K, nr] — nr the register tile's width (schedules/matmul.py) — a
tile reads its panel front to back, one contiguous run, and the hardware prefetcher keeps ahead of
it. Weights are parameters, so the packing runs once at load (LiftTransformParams).
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Callable

from tvm import relax, te

from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.kernels.isa import Isa
from accelc.backends.tvm.lower.shapes import static_shape

TILE_VECTORS = 2  # vectors per row of the register tile (schedules/matmul.py)


def panel_columns(isa: Isa) -> int:
    """Columns of one packed panel: the width of the float GEMM's register tile on `isa`."""
    return TILE_VECTORS * isa.lanes()


def packs(n: int, isa: Isa) -> bool:
    """Whether a GEMM with `n` output columns gets packed weights: at least one whole panel (a
    classifier's 1000 columns are padded to whole panels; narrower ones keep the plain layout)."""
    return n >= panel_columns(isa)


def pack_columns(bb, b_kn: relax.Expr, columns: int) -> relax.Expr:
    """B [K, N] -> panels [ceil(N / columns), K, columns], zero columns past N; a weight's packing
    depends on parameters only and is lifted to load time."""
    k, n = static_shape(b_kn)
    if extra := -n % columns:
        b_kn = relax.op.nn.pad(b_kn, [0, 0, 0, extra])
    return bb.emit(relax.op.permute_dims(relax.op.reshape(b_kn, [k, (n + extra) // columns, columns]), [1, 0, 2]))


def panel_matmul(a: te.Tensor, panels: te.Tensor, n: int | None = None) -> te.Tensor:
    """float32 C[i, j] = sum_k A[i, k] * B[k, j] for j < n, B given as panels [N / nr, K, nr]. Past
    the last whole panel the kernel computes whole tiles and keeps the first n columns (a vector of
    real and padding columns costs what a vector costs; a scalar tail would not)."""
    return panel_matmul_of(lambda i, k: a[i, k], int(a.shape[0]), panels, n)


def panel_matmul_of(read_a: Callable, rows: int, panels: te.Tensor, n: int | None = None) -> te.Tensor:
    """`panel_matmul` with A[i, k] given as `read_a(i, k)` over `rows` rows (a 1x1 convolution
    reads its NHWC input in place: no block of its own before the GEMM)."""
    blocks, depth, columns = (int(d) for d in panels.shape)
    k = te.reduce_axis((0, depth), name="k")
    out = te.compute((rows, blocks * columns),
                     lambda i, j: te.sum(read_a(i, k) * panels[j // columns, k, j % columns], axis=k),
                     name="matmul", attrs=tags.attrs(tags.GEMM, **{tags.PANEL_COLUMNS: columns}))
    if n is None or n == blocks * columns:
        return out
    return te.compute((rows, n), lambda i, j: out[i, j], name="matmul_columns")


def _packable(a: relax.Expr, b: relax.Expr, isa: Isa) -> bool:
    """float32 A [M, K] @ B [K, N] of static shapes, N at least a panel wide."""
    shapes = [getattr(e.ty, "shape", None) for e in (a, b)]
    return (all(s is not None and len(s) == 2 for s in shapes) and all(str(e.ty.dtype) == "float32" for e in (a, b))
            and all(isinstance(d, int) or hasattr(d, "value") for s in shapes for d in s)
            and packs(int(shapes[1][1]), isa))


def _panel_gemm(bb, a: relax.Expr, b: relax.Expr, isa: Isa) -> relax.Expr:
    n = static_shape(b)[1]
    return bb.emit_te(panel_matmul, a, pack_columns(bb, b, panel_columns(isa)), n, primfunc_name_hint="matmul")


def convert_mm(node, importer, isa: Isa):
    """aten.mm(a, b): the GEMM over panels of b (TVM's matmul where b's width is no whole panels)."""
    a, b = (importer.env[arg] for arg in node.args[:2])
    if not _packable(a, b, isa):
        return importer._binary_op(functools.partial(relax.op.matmul, out_dtype="float32"), operator.matmul)(node)
    return _panel_gemm(importer.block_builder, a, b, isa)


def convert_addmm(node, importer, isa: Isa):
    """aten.addmm(bias, a, b) as a Linear layer exports (b its transposed weight): the GEMM over
    panels of b, then the bias; scaled forms (beta, alpha != 1) as TVM imports them."""
    bias, a, b = (importer.env[arg] for arg in node.args[:3])
    if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1 or not _packable(a, b, isa):
        return importer._addmm(node)
    bb = importer.block_builder
    return bb.emit(relax.op.add(_panel_gemm(bb, a, b, isa), bias))


def convert_linear(node, importer, isa: Isa):
    """aten.linear(x, w, bias) (kept by some exports): x reshaped to 2-D, the GEMM over panels of wᵀ."""
    x, w = (importer.env[a] for a in node.args[:2])
    bias = importer.env[node.args[2]] if len(node.args) > 2 and node.args[2] is not None else None
    if x.ty.shape is None or len(w.ty.shape) != 2 or str(x.ty.dtype) != "float32" or not packs(int(w.ty.shape[0]), isa):
        return importer._linear(node)
    bb = importer.block_builder
    shape, (n, depth) = static_shape(x), static_shape(w)
    a = bb.emit(relax.op.reshape(x, [math.prod(shape[:-1]), depth])) if len(shape) != 2 else x
    out = _panel_gemm(bb, a, bb.emit(relax.op.permute_dims(w)), isa)
    out = bb.emit(relax.op.add(out, bias)) if bias is not None else out
    return bb.emit(relax.op.reshape(out, shape[:-1] + [n])) if len(shape) != 2 else out


def converters(isa: Isa) -> dict:
    """The importer's custom_convert_map entries for float GEMMs with a weight-like right operand."""
    return {name: functools.partial(convert, isa=isa)
            for name, convert in (("mm.default", convert_mm), ("addmm.default", convert_addmm),
                                  ("linear.default", convert_linear))}
