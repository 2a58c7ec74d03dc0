"""The int8 micro-kernels: per (operand dtypes, ISA), the instruction sequence that computes a
uint8 x int8 -> int32 GEMM, the weight layout it reads and the activations it is exact for.

This table is the one place that knows them. The lowering (lower/quant.py) picks a row per layer
with `select` and packs the weights for it; the int8 GEMM rule (schedules/int8_gemm.py) tiles the
layer for that row and tensorizes with its intrinsic (intrin/). Adding a kernel for a new ISA is a
row here, its intrinsic in intrin/ and a test.

Rows are in order of preference: the first row whose ISA the target has, whose output columns
divide the layer's and whose activations cover the layer's, is the layer's kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

from accelc.backends.tvm.kernels.isa import Isa
from accelc.backends.tvm.kernels.isa import of as isa_of


@dataclass(frozen=True)
class MicroKernel:
    name: str  # what the lowering annotates a GEMM block with (kernels/tags.MICROKERNEL)
    requires: str | None  # the Isa capability it needs; None: every target
    columns: int  # output columns per intrinsic call: weights packed [N/columns, K/k_group, columns, k_group]
    k_group: int  # k values summed per call (the innermost weight axis)
    rows: int  # rows of the register tile (each packed weight vector is read once per `rows` rows)
    calls: tuple[int, ...]  # intrinsic calls side by side per tile row, widest first that divides N
    intrin: str | None  # the tensor intrinsic (registered by intrin/<intrin_module>.py); None: LLVM's code
    intrin_module: str | None
    activation_bits: int  # widest uint8 activations it is exact for: 7 means values 0..127
    operands: tuple[str, str, str] = ("uint8", "int8", "int32")  # activations, weights, accumulator

    @property
    def packing(self) -> tuple[int, int]:
        """(columns, k) of one packed weight block: the layout the lowering writes."""
        return self.columns, self.k_group


KERNELS: tuple[MicroKernel, ...] = (
    # AVX-512 VNNI vpdpbusd: 16 columns x 4 k of uint8 x int8 summed into int32 in one instruction,
    # no intermediate saturation, so full 8-bit activations are exact; 2 calls: 8 zmm accumulators
    MicroKernel("avx512_vnni", "avx512_vnni", columns=16, k_group=4, rows=4, calls=(2, 1),
                intrin="accelc_dot_16x4_u8i8i32_vnni", intrin_module="x86_vnni", activation_bits=8),
    # AVX2 pairs: vpmaddubsw (uint8 x int8 pairs -> int16, saturating) + vpmaddwd with ones; a pair
    # sum stays below 32767 only for activations <= 127 (7 bits); 4 x 16 tile: 8 ymm accumulators
    MicroKernel("avx2_pairs", "avx2", columns=8, k_group=4, rows=4, calls=(2, 1),
                intrin="accelc_dot_8x4_u8i8i32_avx2", intrin_module="x86_avx2", activation_bits=7),
    # every target: int32 multiply-adds that LLVM vectorises as it can, exact for any uint8
    MicroKernel("int32", None, columns=8, k_group=4, rows=4, calls=(1,), intrin=None, intrin_module=None,
                activation_bits=8),
)
PORTABLE = KERNELS[-1]  # the row every target has; its k_group also pads the few-column GEMV's depth
assert PORTABLE.requires is None and len({k.name for k in KERNELS}) == len(KERNELS)


def usable(isa: Isa) -> tuple[MicroKernel, ...]:
    """The rows an ISA can run, in order of preference."""
    return tuple(k for k in KERNELS if isa.has(k.requires))


def select(isa: Isa, columns: int, activation_bits: int) -> MicroKernel | None:
    """The kernel for a GEMM with `columns` outputs and activations of `activation_bits` on `isa`;
    None when no row's columns divide it (a few-column layer: the GEMV)."""
    return next((k for k in usable(isa) if columns % k.columns == 0 and activation_bits <= k.activation_bits),
                None)


def by_name(name: str) -> MicroKernel:
    return next(k for k in KERNELS if k.name == name)


def activation_bits(isa) -> int:
    """The activation width an ISA's preferred int8 kernel is exact for (7 on AVX2: the quantizer
    should keep activations to 0..127; 8 with VNNI or on targets without a pair-multiply kernel).
    `isa` is an Isa, or a TVM target (or its dict) to derive one from."""
    if not isinstance(isa, Isa):
        isa = isa_of(isa)
    return usable(isa)[0].activation_bits
