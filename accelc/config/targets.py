"""Targets as data: targets/*.yaml say what hardware supports; recipes say what users want."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from accelc.config import host_cpu as host
from accelc.config import yamlio
from accelc.errors import Problem, RecipeError, TargetError, ToolchainError, did_you_mean

PACKAGED_TARGETS = Path(__file__).resolve().parents[2] / "targets"


class Int8Policy(BaseModel):
    """How the target's int8 kernels want quantized layers: what the quantize pass's `auto` means here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    activation_bits: Literal[7, 8] = Field(description="Bits of the uint8 activations the target's int8 kernel "
                                           "is exact with: 7 (0..127) where products are summed in a saturating "
                                           "16-bit step, 8 where they are not. Also the most a recipe may ask for.")
    min_outputs: int = Field(ge=1, le=1 << 20, description="Layers with fewer output channels stay float32: "
                             "there int8 has no register tile to spread its requantize over.")
    reason: str = Field(description="Why, in one line: the quantization report quotes it.")


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Canonical target name.")
    aliases: list[str] = Field(default_factory=list, description="Other names --target accepts.")
    description: str = Field(description="One line for `accelc targets`.")
    tvm: dict[str, Any] = Field(description="TVM 0.27 target as a JSON dict, e.g. {kind: llvm, mcpu: haswell}.")
    host: dict[str, Any] | None = Field(None, description="Host target for device code (CUDA).")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Device the module runs on.")
    arch: Literal["x86_64", "aarch64"] = Field("x86_64", description="CPU architecture of the host code.")
    cpu_features: list[str] = Field(default_factory=list, description="CPU flags the host running the "
                                    "module must have (/proc/cpuinfo names).")
    dtypes: list[str] = Field(description="Input/compute dtypes this target supports.")
    cross_compiler: str | None = Field(None, description="C++ compiler that links the shared library.")
    cross_compiler_package: str | None = Field(None, description="Debian package that provides it.")
    emulator: str | None = Field(None, description="User-mode emulator used to verify off-host builds.")
    emulator_package: str | None = Field(None, description="Debian package that provides the emulator.")
    cuda_archs: list[Annotated[str, Field(pattern=r"^sm_\d+[af]?$")]] = Field(
        default_factory=list, description="GPU architectures (sm_XX) whose machine code is embedded.")
    int8: Int8Policy | None = Field(None, description="Policy of the target's int8 kernels (the quantize "
                                    "pass's `auto` settings); absent: accelc's default (7-bit activations).")
    _source: str | None = PrivateAttr(None)  # file:line:col of the `tvm` entry, for errors

    def tvm_target(self):
        """The TVM target; a dict TVM rejects is the target file's fault, not a bug."""
        import tvm
        spec = dict(self.tvm)
        if self.host:
            spec["host"] = dict(self.host)
        try:
            return tvm.target.Target(spec)
        except (ValueError, TypeError, RuntimeError) as exc:  # TVM 0.27 raises builtin exception types
            raise TargetError(f"TVM rejects target '{self.name}': {str(exc).splitlines()[0][:300]}", code="E203",
                              location=self._source, field="tvm") from None

    def runs_here(self) -> tuple[bool, str]:
        """Can this machine execute the module natively (for verification)?"""
        return host.can_run(self.device, self.arch, self.cpu_features)

    def check_toolchain(self) -> None:
        if self.cross_compiler and shutil.which(self.cross_compiler) is None:
            package = self.cross_compiler_package or self.cross_compiler
            raise ToolchainError(f"target '{self.name}' needs the cross compiler '{self.cross_compiler}'",
                                 code="E501", hint=f"apt-get install {package}")
        if self.device == "cuda":  # device code is compiled by nvcc at build time
            from accelc.backends.tvm import cuda
            cuda.check_toolchain(self)


def target_dirs(root: Path | None) -> list[Path]:
    dirs = [root / "targets"] if root else []
    if PACKAGED_TARGETS not in dirs:
        dirs.append(PACKAGED_TARGETS)
    return [d for d in dirs if d.is_dir()]


def load_all(root: Path | None = None) -> dict[str, Target]:
    """Every target file, keyed by canonical name; the repository's own files win."""
    found: dict[str, Target] = {}
    problems: list[Problem] = []
    for folder in reversed(target_dirs(root)):
        for path in sorted(folder.glob("*.yaml")):
            try:
                located = yamlio.load_file(path)
            except RecipeError as exc:  # the YAML layer speaks of recipes; here it is a target file
                problems.extend(Problem("E201", p.message, p.location, p.field, p.hint) for p in exc.problems)
                continue
            try:
                target = Target.model_validate(located.data)
            except ValidationError as exc:
                for err in exc.errors():
                    problems.append(Problem("E201", err["msg"], located.where(tuple(err["loc"])),
                                            yamlio.dotted(tuple(err["loc"]))))
                continue
            target._source = located.where(("tvm",))
            found[target.name] = target
    problems += _name_clashes(found)
    if problems:
        raise TargetError(problems=problems)
    return found


def _name_clashes(found: dict[str, Target]) -> list[Problem]:
    """An alias may name one target only, or `--target arm` would depend on file order."""
    owner: dict[str, str] = {}
    problems = []
    for target in found.values():
        for alias in target.aliases:
            other = owner.setdefault(alias, target.name)
            if other != target.name or alias in found and alias != target.name:
                problems.append(Problem("E201", f"alias '{alias}' of target '{target.name}' also names target "
                                        f"'{found[alias].name if alias in found else other}'", target._source,
                                        "aliases"))
    return problems


def resolve(name: str, root: Path | None = None, location: str | None = None) -> Target:
    """A target by name or alias; unknown names get a 'did you mean'."""
    targets = load_all(root)
    for target in targets.values():
        if name == target.name or name in target.aliases:
            return target
    names = [*targets, *(a for t in targets.values() for a in t.aliases)]
    raise TargetError(f"unknown target '{name}'", code="E200", location=location, field="target",
                      hint=did_you_mean(name, names) or "known targets: " + ", ".join(sorted(targets)))


def check_compatible(target: Target, recipe, where) -> None:
    """Problems that make a recipe unusable on a target, found before any work starts."""
    problems = []
    for i, spec in enumerate(recipe.model.inputs):
        if spec.dtype not in target.dtypes:
            problems.append(Problem("E202", f"target '{target.name}' does not support dtype {spec.dtype}",
                                    where("model", "inputs", i, "dtype"), f"model.inputs.{i}.dtype",
                                    "supported: " + ", ".join(target.dtypes)))
    for i, config in enumerate(recipe.passes):
        problems += pass_problems(target, config, i, where)
    if problems:
        raise TargetError(problems=problems)


def pass_problems(target: Target, config, index: int, where) -> list[Problem]:
    """What pass `index` of a recipe asks of `target` that it cannot give: a dtype, or an explicit
    setting its policy rules out (each pass config answers for itself)."""
    problems = [Problem("E202", f"pass '{config.kind}' needs {dtype}, which target '{target.name}' does not "
                        f"support", where("passes", index), f"passes.{index}")
                for dtype in config.required_dtypes() if dtype not in target.dtypes]
    for mismatch in config.target_problems(target):
        problems.append(Problem("E202", mismatch.message, where("passes", index, mismatch.field),
                                f"passes.{index}.{mismatch.field}", mismatch.hint))
    return problems
