"""The shape every int8 micro-kernel intrinsic shares: C[columns] int32 += the dot products of the
k_group uint8 of A with each of B's `columns` rows of k_group int8 (B one packed weight block)."""
from __future__ import annotations

from tvm.script import tirx as T


def dot_product(columns: int, k_group: int, body) -> tuple:
    """(description, implementation) of a dot-product intrinsic whose implementation is the
    TVMScript macro `body(A, B, C)`, one vector expression that updates all of C."""

    @T.prim_func(s_tir=True)
    def description(A: T.Buffer((k_group,), "uint8", offset_factor=1),
                    B: T.Buffer((columns, k_group), "int8", offset_factor=1),
                    C: T.Buffer((columns,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:columns], A[0:k_group], B[0:columns, 0:k_group])
            T.writes(C[0:columns])
            for i in T.serial(0, columns):
                for k in T.serial(0, k_group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def implementation(A: T.Buffer((k_group,), "uint8", offset_factor=1),
                       B: T.Buffer((columns, k_group), "int8", offset_factor=1),
                       C: T.Buffer((columns,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:columns], A[0:k_group], B[0:columns, 0:k_group])
            T.writes(C[0:columns])
            body(A, B, C)

    return description, implementation
