"""Default CPU schedules for kernels no tuning record covers, one rule per file (after TVM's
s_tir/dlight/cpu/: `apply` returns None where a rule does not apply).

`RULES` is the table the CPU pipeline applies: a kernel goes to the first rule whose tag pattern
matches one of its blocks' tags (kernels/tags.py; "*" matches every kernel) and that schedules it.
A new rule is a file here and a row below. (vector_math.py is no rule of the table: it lowers
`log` and `exp` to polynomials LLVM keeps in vector registers, for the loops these rules vectorise.)
"""
from __future__ import annotations

from tvm.s_tir import Schedule, dlight
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.schedules.concat import Concat
from accelc.backends.tvm.schedules.depthwise import Depthwise
from accelc.backends.tvm.schedules.elementwise import Elementwise
from accelc.backends.tvm.schedules.im2col import Im2col
from accelc.backends.tvm.schedules.inner_kept_reduction import InnerKeptReduction
from accelc.backends.tvm.schedules.int8_gemm import Int8Gemm
from accelc.backends.tvm.schedules.int8_gemv import Int8Gemv
from accelc.backends.tvm.schedules.matmul import Matmul
from accelc.backends.tvm.schedules.pool import Pool
from accelc.backends.tvm.schedules.row_reduction import RowReduction
from accelc.backends.tvm.schedules.rule import Tagged
from accelc.backends.tvm.schedules.tolerant import Tolerant

RULES: tuple[tuple[str, CPUScheduleRule], ...] = (
    (tags.INT8_GEMM, Int8Gemm()),  # int8 GEMM (+ input quantize, patches, epilogue): the layer's micro-kernel
    (tags.INT8_GEMV, Int8Gemv()),  # int8, a few output columns: one contiguous dot product per output
    (tags.IM2COL, Im2col()),  # patches alone (before an int8 GEMV): one vector copy per tap
    (tags.GEMM, Matmul()),  # float GEMM or convolution: register tile, vectorised, parallel; one column: GEMV
    (tags.DEPTHWISE, Depthwise()),  # depthwise convolutions: pixels x a vector of channels, taps unrolled
    (tags.POOL, Pool()),  # NHWC pools: pixels x a vector of channels, window taps unrolled
    ("*", Tolerant(dlight.cpu.GEMV())),  # TVM's matrix-vector rule, where its analysis holds
    ("*", InnerKeptReduction()),  # sums over outer axes into a kept inner axis (NHWC pools, column sums)
    ("*", RowReduction()),  # softmax, LayerNorm, GroupNorm, RMSNorm: rows of vector partial sums, in parallel
    ("*", Tolerant(dlight.cpu.Reduction())),  # TVM's row reductions
    (tags.CONCAT, Concat()),  # concatenations: inputs computed row by row beside the copy
    ("*", Elementwise()),  # everything injective: rows in vectors, else one flat vector loop
)



def choose(func, target) -> tuple[CPUScheduleRule, Schedule] | None:
    """The rule of RULES that schedules `func` on `target` and its schedule, as the pipeline's
    ApplyDefaultSchedule picks it (the first that applies); None when none does."""
    for pattern, rule in RULES:
        space = Tagged(pattern, rule).apply(func, target, False)
        if space is not None:
            return rule, space if isinstance(space, Schedule) else space[0]
    return None
