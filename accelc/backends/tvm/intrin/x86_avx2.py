"""AVX2 pairs: uint8 x int8 dot products of 4 for 8 output columns, in three instructions.

Without VNNI, AVX2's fastest int8 dot product is vpmaddubsw (uint8 x int8 pairs -> int16,
saturating) + vpmaddwd with ones (int16 pairs -> int32): 32 multiply-adds in three instructions
against 8 per fp32 FMA. With activations <= 127 and weights in [-127, 127] a pair sum stays below
32767, so the saturation never happens and the intrinsic is exactly the int32 sum it replaces
(the micro-kernel table records it as exact for 7-bit activations).
"""
from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from accelc.backends.tvm.intrin.dot_product import dot_product

NAME = "accelc_dot_8x4_u8i8i32_avx2"


@T.macro
def _pair_multiply(A, B, C):
    # One expression, no named temporaries: TVMScript would turn them into workspace buffers.
    C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
        T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
            T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8), dtype="uint8x32"),
            B.vload([0, 0], dtype="int8x32"), dtype="int16x16"),
        T.int16x16(1), dtype="int32x8")


TensorIntrin.register(NAME, *dot_product(8, 4, _pair_multiply))
