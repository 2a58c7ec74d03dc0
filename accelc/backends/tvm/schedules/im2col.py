"""A convolution's patches on their own (tags.IM2COL as the kernel's last block: an int8 layer
with a few output channels, whose GEMM is a separate GEMV kernel), with whatever fused into them
(the quantize of the input, the layout change to NHWC, the previous layer's ReLU).

The block the patches read is computed once into its own buffer, everything before it inlined
there; inlining it into the patches would redo that work for every tap (9x for a 3x3 kernel).
The copy then moves one contiguous run of channels per tap as a vector."""
from __future__ import annotations

from tvm import tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.schedules.loops import flat
from accelc.backends.tvm.schedules.rule import root_blocks

COPY_LANES = 16  # uint8 elements per vector of the flat loops before the copy
PARALLEL_MIN = 1 << 15  # elements: the copies are cheap per element, so threads pay later than for math


class Im2col(CPUScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        if not blocks or tags.of(sch.get(blocks[-1])) != tags.IM2COL:
            return None
        copy = blocks[-1]
        group = int(sch.get(copy).annotations[tags.PATCH_GROUP])
        for block in blocks[:-2]:
            try:
                sch.compute_inline(block)
            except Exception:  # read twice at other indices: stays a loop nest of its own
                flat(sch, block, lanes=COPY_LANES, parallel_min=PARALLEL_MIN)
        if len(blocks) > 1:
            flat(sch, blocks[-2], lanes=COPY_LANES, parallel_min=PARALLEL_MIN)
        rows, taps = sch.get_loops(copy)
        total = int(sch.get(rows).extent) * int(sch.get(taps).extent)
        _, channels = sch.split(taps, [None, group])
        sch.vectorize(channels)
        if total >= PARALLEL_MIN:
            sch.parallel(rows)
        return sch
