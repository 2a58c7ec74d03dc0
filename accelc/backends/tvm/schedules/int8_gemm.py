"""The int8 GEMM (tags.INT8_GEMM: uint8 x int8 -> int32 over packed weights) with its elementwise
epilogue (requantize, bias, activation, the next layer's quantize), and what the lowering fused
before it: the quantize of its input (tags.QUANTIZE_INPUT) and a convolution's patches
(tags.IM2COL).

The block names its micro-kernel (kernels/microkernels.py), chosen by the lowering, which packed
the weights for it. Where the target has the kernel's ISA and the activations are within the bits
it is exact for, the register tile (rows x calls x columns of int32 accumulators) is tensorized
with the kernel's intrinsic, each packed weight vector read once per `rows` rows; otherwise the
same tiling runs as plain int32 arithmetic.
"""
from __future__ import annotations

from tvm import tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from accelc.backends.tvm import intrin
from accelc.backends.tvm.kernels import isa as isa_info
from accelc.backends.tvm.kernels import microkernels, tags
from accelc.backends.tvm.schedules.loops import TILE_SCOPE, flat, largest_divisor, patches_per_tile
from accelc.backends.tvm.schedules.rule import block_tags, root_blocks


def kernel_of(block) -> tuple[microkernels.MicroKernel, int]:
    """(micro-kernel, activation bits) a GEMM block was lowered for."""
    notes = block.annotations
    kernel = microkernels.by_name(str(notes[tags.MICROKERNEL])) if tags.MICROKERNEL in notes else microkernels.PORTABLE
    return kernel, int(notes.get(tags.ACTIVATION_BITS, 8))


class Int8Gemm(CPUScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        isa = isa_info.of(target)
        tagged = block_tags(sch, blocks)
        if tags.QUANTIZE_INPUT in tagged:  # the input's quantize (lower/quant.quantizing_qgemm)
            at = tagged.index(tags.QUANTIZE_INPUT)
            for block in blocks[:at]:
                sch.compute_inline(block)
            flat(sch, blocks[at], isa.lanes())
            blocks, tagged = blocks[at + 1:], tagged[at + 1:]
        patches = None
        if tagged[:1] == [tags.IM2COL]:  # a convolution (lower/quant.patches_qgemm)
            patches, blocks, tagged = blocks[0], blocks[1:], tagged[1:]
        if tagged[:1] != [tags.INT8_GEMM]:
            return None
        kernel, bits = kernel_of(sch.get(blocks[0]))
        vector = kernel.intrin is not None and isa.has(kernel.requires) and bits <= kernel.activation_bits
        _tile(sch, blocks, patches, kernel, vector)
        return sch


def _tile(sch, blocks, patches, kernel: microkernels.MicroKernel, vector: bool) -> None:
    gemm = blocks[0]
    m, n, k = sch.get_loops(gemm)
    rows_total, cols_total = (int(sch.get(loop).extent) for loop in (m, n))
    rows = largest_divisor(rows_total, kernel.rows)
    mo, mi = sch.split(m, [None, rows])
    if vector:
        calls = next(c for c in kernel.calls if cols_total % (c * kernel.columns) == 0)
        no, nt, ni = sch.split(n, [None, calls, kernel.columns])
        ko, ki = sch.split(k, [None, kernel.k_group])
        sch.reorder(mo, no, ko, mi, nt, ni, ki)
    else:
        no, ni = sch.split(n, [None, kernel.columns])
        ko = k
        sch.reorder(mo, no, ko, mi, ni)
    for block in blocks[1:-1]:
        sch.compute_inline(block)
    tile = sch.cache_write(gemm, 0, TILE_SCOPE)  # accumulators stay in registers across k
    sch.reverse_compute_at(tile, no)
    if len(blocks) > 1:
        sch.reverse_compute_inline(blocks[-1])  # the epilogue runs as the tile is stored
    if patches is not None:
        patches_per_tile(sch, patches, mo)
    outer = sch.fuse(mo, no) if patches is None else mo
    if rows_total // rows >= 2:
        sch.parallel(outer)
    init = sch.decompose_reduction(gemm, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    if vector:
        sch.tensorize(ni, intrin.register(kernel))
        sch.unroll(nt)
    sch.unroll(mi)
    sch.vectorize(sch.get_loops(tile)[-1])
