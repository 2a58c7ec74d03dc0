"""ISA capabilities of a TVM target, derived once from its mtriple/mcpu/mattr (LLVM's feature query)
into a frozen value every schedule rule reads, instead of each rule parsing mcpu strings."""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, fields

# capability -> LLVM's feature name
LLVM_FEATURES = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512_vnni": "avx512vnni",
                 "neon": "neon", "dotprod": "dotprod", "i8mm": "i8mm"}


@dataclass(frozen=True)
class Isa:
    arch: str  # "x86_64", "aarch64", ...; a non-CPU target's kind ("cuda")
    avx2: bool = False
    fma: bool = False
    avx512f: bool = False
    avx512_vnni: bool = False  # vpdpbusd: uint8 x int8 dot products of 4 into int32
    neon: bool = False
    dotprod: bool = False  # sdot/udot: int8 x int8 (uint8 x uint8) dot products of 4 into int32
    i8mm: bool = False

    @property
    def x86(self) -> bool:
        return self.arch == "x86_64"

    @property
    def vector_bits(self) -> int:
        """Register width the schedules vectorise for: LLVM splits 256-bit vectors on x86 CPUs
        without AVX, so 256 stays the x86 width even there; 128 (NEON) elsewhere."""
        return 512 if self.avx512f else 256 if self.x86 else 128

    def lanes(self, bits: int = 32) -> int:
        """Elements of `bits` per vector register: float32 lanes are 16 (AVX-512), 8 (AVX2), 4 (NEON)."""
        return self.vector_bits // bits

    def has(self, capability: str | None) -> bool:
        """Whether the target has `capability` (a field name); None: any target."""
        return capability is None or bool(getattr(self, capability))


CAPABILITIES = tuple(f.name for f in fields(Isa) if f.name != "arch")
assert set(CAPABILITIES) == set(LLVM_FEATURES)


_KNOWN: dict[str, Isa] = {}  # by the target's exported description


def of(target) -> Isa:
    """The ISA of a TVM target (a Target, its dict or its string), computed once per target."""
    import tvm
    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    key = json.dumps(target.export(), sort_keys=True, default=str)
    if key not in _KNOWN:
        _KNOWN[key] = _derive(target)
    return _KNOWN[key]


def _derive(target) -> Isa:
    import tvm
    if target.kind.name != "llvm":
        return Isa(arch=target.kind.name)
    triple = str(target.attrs.get("mtriple", "")) or _host_triple()
    try:
        features = set(tvm.target.codegen.llvm_get_cpu_features(target))
    except Exception:  # TVM built without LLVM: no CPU code at all, so no features either
        features = set()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(triple.split("-")[0], triple.split("-")[0])
    return Isa(arch=arch, **{cap: LLVM_FEATURES[cap] in features for cap in CAPABILITIES})


def _host_triple() -> str:
    """An llvm target without mtriple compiles for this machine."""
    return platform.machine().lower()
