"""Injective kernels (preprocessing, activations, reshapes): the default legalization leaves them
as scalar loop nests, slower than numpy on edu_churn's folded preprocessing.

Rows whose width is a multiple of the vector width are vectorised along the row; other shapes
run as one flat loop in vector chunks. Concatenations are the Concat rule's (schedules/concat.py).
"""
from __future__ import annotations

from tvm import tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from accelc.backends.tvm.kernels import isa as isa_info
from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.schedules.loops import by_rows, flat, static_extent, vector_width
from accelc.backends.tvm.schedules.rule import data_parallel, root_blocks


class Elementwise(CPUScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        if not blocks or not data_parallel(sch, blocks):
            return None
        last = blocks[-1]
        if len(blocks) > 1 and tags.of(sch.get(last)) == tags.CONCAT:
            return None  # the Concat rule's, and left as it is where that rule declines
        lanes = isa_info.of(target).lanes()
        try:
            for block in blocks[:-1]:
                sch.compute_inline(block)
            shape = [static_extent(sch, loop) for loop in sch.get_loops(last)]
            if not shape or None in shape:
                return None
            if vector_width(shape[-1], lanes):
                by_rows(sch, last, shape, lanes)
            else:
                flat(sch, last, lanes)
        except Exception:  # a producer that cannot be inlined (e.g. read twice at other indices)
            return None
        return sch
