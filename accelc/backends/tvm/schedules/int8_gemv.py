"""The int8 GEMV (tags.INT8_GEMV: a few output columns, weights row-major) with its epilogue: one
contiguous int8 dot product per output (LLVM vectorises the k loop), the epilogue applied as each
result is stored, rows split across threads when there are many."""
from __future__ import annotations

from tvm import tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.schedules.loops import TILE_SCOPE
from accelc.backends.tvm.schedules.rule import root_blocks

PARALLEL_ROWS = 64  # rows before the outputs are split across threads


class Int8Gemv(CPUScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        if not blocks or tags.of(sch.get(blocks[0])) != tags.INT8_GEMV:
            return None
        gemv = blocks[0]
        m, n, k = sch.get_loops(gemv)
        rows = int(sch.get(m).extent)
        for block in blocks[1:-1]:
            sch.compute_inline(block)
        outer = sch.fuse(m, n)
        tile = sch.cache_write(gemv, 0, TILE_SCOPE)
        sch.reverse_compute_at(tile, outer)
        if len(blocks) > 1:
            sch.reverse_compute_inline(blocks[-1])
        if rows >= PARALLEL_ROWS:
            sch.parallel(outer)
        sch.decompose_reduction(gemv, k)
        return sch
