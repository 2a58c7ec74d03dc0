"""Pass kinds: each kind's config class (torch-free, imported here) and its implementation as
"module:Class", imported on first use (as Olive's pass registry does). The recipe schema reads
PASS_CONFIGS without loading torch; run_passes asks `implementation(kind)` for the class.

A new pass: its config in configs/<pass>.py, its implementation in <pass>.py, one row here, and an
entry in tests/unit/passes/test_conformance.py EXAMPLES."""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from accelc.passes.configs.base import PassConfig
from accelc.passes.configs.fold import FoldBatchNormConfig
from accelc.passes.configs.merge_linear import MergeLinearConfig
from accelc.passes.configs.prune import PruneConfig
from accelc.passes.configs.quantize import QuantizeConfig
from accelc.passes.configs.simplify import SimplifyConfig

if TYPE_CHECKING:
    from accelc.passes.base import Pass


@dataclass(frozen=True)
class Entry:
    config: type[PassConfig]
    implementation: str  # "module:Class", imported when the kind first runs


# kind -> config and implementation; the order is the order of the schema's union
REGISTRY: dict[str, Entry] = {
    "fold_batchnorm": Entry(FoldBatchNormConfig, "accelc.passes.fold:FoldBatchNorm"),
    "merge_linear": Entry(MergeLinearConfig, "accelc.passes.merge_linear:MergeLinear"),
    "prune": Entry(PruneConfig, "accelc.passes.prune:Prune"),
    "quantize": Entry(QuantizeConfig, "accelc.passes.quantize:Quantize"),
    "simplify": Entry(SimplifyConfig, "accelc.passes.simplify:Simplify"),
}
PASS_CONFIGS: dict[str, type[PassConfig]] = {kind: entry.config for kind, entry in REGISTRY.items()}


def implementation(kind: str) -> type[Pass]:
    """The pass class of `kind`, imported now; a row that names the wrong class is a bug."""
    module, _, name = REGISTRY[kind].implementation.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if cls.Config is not REGISTRY[kind].config:
        raise TypeError(f"{module}.{name}.Config is not the registered config of pass kind '{kind}'")
    return cls


class _Implementations(Mapping):
    """kind -> pass class, each imported on first access: `PASSES["prune"]`."""

    def __getitem__(self, kind: str) -> type[Pass]:
        return implementation(kind)

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


PASSES: Mapping[str, type[Pass]] = _Implementations()
