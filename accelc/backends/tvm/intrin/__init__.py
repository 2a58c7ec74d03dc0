"""Named per-ISA tensor intrinsics for the int8 micro-kernels (kernels/microkernels.py), one module
per intrinsic: registering one means importing its module, done only for the kernels a target can
use (TVM's own families are slow to import as a package, see tvm_families.py).

Modules: x86_avx2 (vpmaddubsw + vpmaddwd pair multiplies, 8 x 4), x86_vnni (vpdpbusd, 16 x 4: TVM's
description of `dot_16x4_vnni`, with operands its LLVM accepts). TVM 0.27 also ships Arm dot
products in tensor_intrin/arm_cpu.py (`dot_4x4_i8i8s32_sdot`, `dot_4x4_u8u8u32_udot`,
`dot_4x4_u8u8i32_hdot`, `dot_4x4_i8i8s32_neon`): int8 x int8 or uint8 x uint8, none uint8 x int8
as accelc's activations x weights are, so an Arm row needs either activations shifted by 128 into
int8 (sdot, with the shift folded into the zero-point correction) or an i8mm `usdot` intrinsic.
"""
from __future__ import annotations

import importlib

from accelc.backends.tvm.kernels import microkernels
from accelc.backends.tvm.kernels.isa import Isa


def register(kernel: microkernels.MicroKernel) -> str | None:
    """Register a micro-kernel's intrinsic (idempotent); its name, None for a kernel without one."""
    if kernel.intrin_module is None:
        return None
    module = importlib.import_module(f"{__name__}.{kernel.intrin_module}")
    assert module.NAME == kernel.intrin, f"{kernel.intrin_module}.py registers {module.NAME}, not {kernel.intrin}"
    return module.NAME


def register_for(isa: Isa) -> list[str]:
    """Register the intrinsics of every kernel `isa` can use: before tuning records are replayed
    (a record's trace names its intrinsic) and before the default schedules tensorize."""
    return [name for kernel in microkernels.usable(isa) if (name := register(kernel)) is not None]
