"""Depthwise convolutions (tags.DEPTHWISE, lower/conv_kinds.depthwise_nhwc) with their epilogue
(bias, activation, a folded batch norm).

A depthwise convolution is a GEMM of one column per channel, which no GEMM tiling suits, and
TVM 0.27 has no CPU schedule for it. In NHWC the channels of an output pixel are contiguous: a
register tile of a few output pixels x one vector of channels accumulates every tap (unrolled) as
one multiply-add per vector, the tap's weights loaded once for the tile's pixels; output rows run
in parallel, and the epilogue is applied as the tile is stored.
"""
from __future__ import annotations

import math

from tvm import tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from accelc.backends.tvm.kernels import isa as isa_info
from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.schedules.loops import (PARALLEL_MIN, TILE_SCOPE, largest_divisor, static_extent,
                                                 vector_width)
from accelc.backends.tvm.schedules.rule import block_tags, root_blocks

PIXELS = 8  # output pixels per register tile (x one vector of channels): 8 accumulators of AVX2's 16
# registers, each tap's weight vector loaded once for all 8 (measured faster than 2, 4 or 6)
FEWEST_PIXELS = 4  # a tile of a divisor of the row width down to this many, else PIXELS with a remainder
UNROLL_TAPS = 64  # taps unrolled up to this many (7x7 = 49); beyond, the column loop stays a loop


class Depthwise(CPUScheduleRule):
    """out[n, y, x, o] = sum_{r, s} x[n, iy, ix, c] * w[r, s, o], then elementwise blocks."""

    TAG = tags.DEPTHWISE  # the first block's tag (schedules/pool.py tiles pools the same way)

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        if block_tags(sch, blocks)[:1] != [self.TAG]:
            return None
        conv = blocks[0]
        loops = sch.get_loops(conv)
        extents = [static_extent(sch, loop) for loop in loops]
        if len(loops) != 6 or None in extents:
            return None
        try:
            for block in blocks[1:-1]:
                sch.compute_inline(block)  # the epilogue becomes one elementwise pass
            return _tiled(sch, conv, blocks[-1] if len(blocks) > 1 else None, extents, isa_info.of(target).lanes())
        except Exception:  # a block after it that is no elementwise epilogue: left to the other rules
            return None


def _tiled(sch, conv, epilogue, extents: list[int], lanes: int):
    """Rows (n, y) in parallel; per row, tiles of PIXELS output pixels x a vector of channels that
    sum every tap in registers (a small buffer of their own) before the epilogue stores them."""
    n, y, x, o, r, s = sch.get_loops(conv)
    vector = vector_width(extents[3], lanes)
    xo, xi = sch.split(x, [None, _pixels(extents[2])])
    oo, oi = sch.split(o, [None, vector or extents[3]])
    sch.reorder(n, y, xo, oo, r, s, xi, oi)
    tile = sch.cache_write(conv, 0, TILE_SCOPE)
    sch.reverse_compute_at(tile, oo)
    if epilogue is not None:
        sch.reverse_compute_inline(epilogue)  # bias/activation applied as the tile is stored
    if vector:
        sch.vectorize(oi)
        sch.vectorize(sch.get_loops(tile)[-1])
    sch.unroll(xi)
    if extents[4] * extents[5] <= UNROLL_TAPS:
        sch.unroll(r)
        sch.unroll(s)
    rows = sch.fuse(n, y)
    if math.prod(extents) >= PARALLEL_MIN and extents[0] * extents[1] >= 2:
        sch.parallel(rows)
    sch.decompose_reduction(conv, r)
    return sch


def _pixels(width: int) -> int:
    """Output pixels per tile: a divisor of the row width if one is large enough (no remainder)."""
    divisor = largest_divisor(width, PIXELS)
    return divisor if divisor >= min(FEWEST_PIXELS, width) else PIXELS
