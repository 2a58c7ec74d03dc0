"""AVX-512 VNNI: one vpdpbusd adds, to each of 16 int32 accumulators, the dot product of the 4 uint8
of A with 4 int8 of B's row (B packed [16, 4]: 64 bytes, one zmm). The sums go straight into int32,
with no intermediate saturation: exact for any uint8 activations.

The description is TVM's own (tvm/s_tir/tensor_intrin/x86.py). Its implementation there,
`dot_16x4_vnni`, passes the operands as <16 x i32>, which the LLVM that TVM 0.27 ships (22)
rejects: LLVM 21 declared them <64 x i8>. This one passes what the linked LLVM declares.
"""
from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.target.codegen import llvm_version_major

from accelc.backends.tvm.intrin.dot_product import dot_product
from accelc.backends.tvm.intrin.tvm_families import family

NAME = "accelc_dot_16x4_u8i8i32_vnni"
BYTES = llvm_version_major() >= 21  # vpdpbusd's multiplicands: <64 x i8> since LLVM 21, <16 x i32> before
A_TYPE, B_TYPE = ("uint8x64", "int8x64") if BYTES else ("int32x16", "int32x16")


@T.macro
def _vpdpbusd(A, B, C):
    C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
        C.vload([0], dtype="int32x16"),
        T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16), dtype=A_TYPE),
        T.reinterpret(B.vload([0, 0], dtype="int8x64"), dtype=B_TYPE),
        dtype="int32x16")


_, _implementation = dot_product(16, 4, _vpdpbusd)
TensorIntrin.register(NAME, family("x86").dot_product_16x4_u8i8i32_desc, _implementation)
