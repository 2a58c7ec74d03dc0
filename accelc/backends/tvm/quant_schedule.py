"""CPU schedule for the int8 GEMM (`qgemm` of quant_lower.py) and its AVX2 tensor intrinsic.

Without VNNI, AVX2's fastest int8 dot product is vpmaddubsw (uint8 x int8 pairs -> int16,
saturating) + vpmaddwd with ones (int16 pairs -> int32): 32 multiply-adds in three instructions
against 8 per fp32 FMA. With 7-bit activations (quantize.reduce_range) and weights in
[-127, 127] a pair sum stays below 32767, so the saturation never happens and the intrinsic is
exactly the int32 sum it replaces. The register tile (4 rows x 16 columns of int32, 8 ymm
accumulators) reads each packed weight vector once per 4 rows, as the fp32 schedule does.
"""
from __future__ import annotations

import tvm
from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.script import tirx as T
from tvm.target import Target

from accelc.backends.tvm.cpu_schedules import TILE_SCOPE, _lanes, flat, largest_divisor, patches_per_tile, root_blocks

INTRIN = "accelc_dot_8x4_u8i8i32_avx2"


@T.prim_func(s_tir=True)
def _dot_desc(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((8, 4), "int8", offset_factor=1),
              C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dot_avx2(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((8, 4), "int8", offset_factor=1),
              C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    # One expression, no named temporaries: TVMScript would turn them into workspace buffers.
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8),
                              dtype="uint8x32"),
                B.vload([0, 0], dtype="int8x32"), dtype="int16x16"),
            T.int16x16(1), dtype="int32x8")


TensorIntrin.register(INTRIN, _dot_desc, _dot_avx2)
ROWS = 4


def has_avx2(target: Target) -> bool:
    if not str(target.attrs.get("mtriple", "x86_64")).startswith("x86_64"):
        return False
    try:
        return bool(tvm.target.codegen.llvm_cpu_has_features(["avx2"], target))
    except Exception:  # TVM built without LLVM: no CPU code at all
        return False


class QGemm(CPUScheduleRule):
    """`qgemm` followed by its elementwise epilogue (requantize, bias, activation, next quantize).

    The AVX2 intrinsic is exact only for uint8 values <= 127: `qgemm` (7-bit activations) gets
    it, `qgemm_u8` (full range) the same tiling with plain int32 arithmetic."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        names = [sch.get(b).name_hint for b in blocks]
        if names[:1] == ["qgemv"]:
            return _gemv(sch, blocks)
        if "qinput" in names:  # the input's quantize, computed in this kernel (quant_lower.quantizing_qgemm)
            at = names.index("qinput")
            for block in blocks[:at]:
                sch.compute_inline(block)
            flat(sch, blocks[at], _lanes(target))
            blocks, names = blocks[at + 1:], names[at + 1:]
        patches = None
        if names[:1] == ["im2col"]:  # a convolution (quant_lower.patches_qgemm)
            patches, blocks, names = blocks[0], blocks[1:], names[1:]
        if names[:1] not in (["qgemm"], ["qgemm_u8"]):
            return None
        gemm = blocks[0]
        m, n, k = sch.get_loops(gemm)
        rows_total, cols_total = (int(sch.get(loop).extent) for loop in (m, n))
        vector = sch.get(gemm).name_hint == "qgemm" and has_avx2(target)
        rows = largest_divisor(rows_total, ROWS)
        mo, mi = sch.split(m, [None, rows])
        if vector:
            cols = 16 if cols_total % 16 == 0 else 8
            no, nt, ni = sch.split(n, [None, cols // 8, 8])
            ko, ki = sch.split(k, [None, 4])
            sch.reorder(mo, no, ko, mi, nt, ni, ki)
        else:
            no, ni = sch.split(n, [None, 8])
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
            sch.tensorize(ni, INTRIN)
            sch.unroll(nt)
        sch.unroll(mi)
        sch.vectorize(sch.get_loops(tile)[-1])
        return sch


def _gemv(sch, blocks):
    """One contiguous int8 dot product per output (LLVM vectorises the k loop), the epilogue
    applied as each result is stored, rows split across threads when there are many."""
    gemm = blocks[0]
    m, n, k = sch.get_loops(gemm)
    rows = int(sch.get(m).extent)
    for block in blocks[1:-1]:
        sch.compute_inline(block)
    outer = sch.fuse(m, n)
    tile = sch.cache_write(gemm, 0, TILE_SCOPE)
    sch.reverse_compute_at(tile, outer)
    if len(blocks) > 1:
        sch.reverse_compute_inline(blocks[-1])
    if rows >= 64:
        sch.parallel(outer)
    sch.decompose_reduction(gemm, k)
    return sch


class Im2col(CPUScheduleRule):
    """`im2col` (quant_lower.py) with whatever fused into it (the quantize of its input, the
    layout change to NHWC, the previous layer's ReLU). The block im2col reads is computed once
    into its own buffer, everything before it inlined there; inlining it into im2col would redo
    that work for every tap (9x for a 3x3 kernel). The copy then moves one contiguous run of
    channels per tap as a vector."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        if not blocks or sch.get(blocks[-1]).name_hint != "im2col":
            return None
        copy = blocks[-1]
        group = int(sch.get(copy).annotations["accelc_group"])
        for block in blocks[:-2]:
            try:
                sch.compute_inline(block)
            except Exception:  # read twice at other indices: stays a loop nest of its own
                flat(sch, block, lanes=16, parallel_min=1 << 15)
        if len(blocks) > 1:
            flat(sch, blocks[-2], lanes=16, parallel_min=1 << 15)
        rows, taps = sch.get_loops(copy)
        total = int(sch.get(rows).extent) * int(sch.get(taps).extent)
        _, channels = sch.split(taps, [None, group])
        sch.vectorize(channels)
        if total >= 1 << 15:
            sch.parallel(rows)
        return sch
