"""Sums over outer axes into a kept innermost axis (a global average pool over NHWC, a column sum):
the reduced axes run outside the kept one, which is vectorised, so each step adds whole rows.
TVM's CPU reduction rule summed every channel on its own with a strided scalar loop (resnet_small's
pool took ~4x what MetaSchedule found)."""
from __future__ import annotations

from tvm import tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from accelc.backends.tvm.kernels import isa as isa_info
from accelc.backends.tvm.schedules.loops import flat, static_extent, vector_width
from accelc.backends.tvm.schedules.rule import data_parallel, root_blocks

SPATIAL, REDUCE = tirx.IterVar.DataPar, tirx.IterVar.CommReduce


class InnerKeptReduction(CPUScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        if not blocks:
            return None
        block = blocks[0]
        iters, loops = sch.get(block).iter_vars, sch.get_loops(block)
        kinds = [iv.iter_type for iv in iters]
        reads = sch.get(block).reads
        if (len(loops) != len(iters) or REDUCE not in kinds or len(reads) != 1
                or any(k not in (SPATIAL, REDUCE) for k in kinds) or not data_parallel(sch, blocks[1:])):
            return None
        spatial = [i for i, k in enumerate(kinds) if k == SPATIAL]
        if not spatial or not reads[0].region[-1].min.same_as(iters[spatial[-1]].var):
            return None  # the input's contiguous axis is reduced (a row sum): not this rule's case
        lanes = isa_info.of(target).lanes()
        width = static_extent(sch, loops[spatial[-1]])
        vector = vector_width(width, lanes) if width else None
        if vector is None:
            return None
        reduced = [loops[i] for i, k in enumerate(kinds) if k == REDUCE]
        sch.reorder(*[loops[i] for i in spatial[:-1]], *reduced, loops[spatial[-1]])
        sch.vectorize(sch.split(loops[spatial[-1]], [None, vector])[1])
        sch.decompose_reduction(block, reduced[0])
        for later in blocks[1:]:
            flat(sch, later, lanes)
        return sch
