"""Concatenations (tags.CONCAT last, with the blocks computing its inputs).

A concatenation along the last axis keeps its inputs as separate blocks, computed row by row into
small buffers that the row's copy reads while they are in L1: fused into the concat, their
per-column branches and broadcast statistics turn into gathers LLVM cannot vectorise (2x slower on
edu_churn), and computed whole before the copy they cost another pass over memory (3x slower).
Along another axis, each input and the copy run as separate row-vectorised loops.
"""
from __future__ import annotations

import math

from tvm import tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from accelc.backends.tvm.kernels import isa as isa_info
from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.schedules.loops import PARALLEL_MIN, by_rows, static_extent, vector_width
from accelc.backends.tvm.schedules.rule import data_parallel, root_blocks

UNROLL_MAX = 64  # columns up to which a row loop is unrolled (its branches fold away)


class Concat(CPUScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        if len(blocks) < 2 or tags.of(sch.get(blocks[-1])) != tags.CONCAT or not data_parallel(sch, blocks):
            return None
        concat = blocks[-1]
        keep = {sch.get(b).name_hint for b in sch.get_producers(concat)}
        try:
            for block in blocks[:-1]:
                if sch.get(block).name_hint not in keep:
                    sch.compute_inline(block)
            shape = [static_extent(sch, loop) for loop in sch.get_loops(concat)]
            if not shape or None in shape:
                return None
            return _concat(sch, concat, shape, isa_info.of(target).lanes())
        except Exception:  # a producer that cannot be inlined (e.g. read twice at other indices)
            return None


def _concat(sch, concat, shape: list[int], lanes: int):
    """Row by row when the concat is along the last axis; otherwise each input and the copy as
    separate row-vectorised loops."""
    attempt = sch.copy()
    try:
        _concat_by_rows(attempt, concat, shape, lanes)
        return attempt
    except Exception:  # along another axis: compute_at cannot cut its inputs into rows
        for block in [*sch.get_producers(concat), concat]:
            by_rows(sch, block, [static_extent(sch, loop) for loop in sch.get_loops(block)], lanes)
        return sch


def _concat_by_rows(sch, concat, shape: list[int], lanes: int) -> None:
    """Each input of the concat computed for one output row just before that row is copied."""
    *outer, inner = sch.get_loops(concat)
    if not outer:
        raise ValueError("a one-dimensional concatenation: nothing to compute row by row")
    for producer in sch.get_producers(concat):
        sch.compute_at(producer, outer[-1])
        row = sch.get_loops(producer)[len(outer):]
        if len(row) != 1:  # the concat is not along the last axis
            raise ValueError("not a concatenation of rows")
        width = static_extent(sch, row[0])
        if width is not None and (vector := vector_width(width, lanes)):
            sch.vectorize(sch.split(row[0], [None, vector])[1])
        elif width is not None and width <= UNROLL_MAX:
            sch.unroll(row[0])
    if shape[-1] <= UNROLL_MAX:
        sch.unroll(inner)  # the copy's column branches fold away
    if math.prod(shape) >= PARALLEL_MIN:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
