"""fx.GraphModule -> torch.export (core ATen) -> Relax -> compiled, exported library."""
from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

from accelc.capture.export import node_location
from accelc.errors import Problem, ToolchainError, UnsupportedOpError
from accelc.backends.tvm.kernel_map import KernelRecorder
from accelc.backends.tvm.lower.origins import Origins, import_program
from accelc.backends.tvm.pipeline import build_pipeline, prepare_passes
from accelc.backends.tvm.tvm_log import known_warnings_hidden


@dataclass
class Lowered:
    mod: tvm.IRModule  # Relax, params lifted, ready for the target pipeline
    params: dict[str, np.ndarray]  # in main's parameter order
    program: torch.export.ExportedProgram
    unaligned_inputs: tuple[int, ...] = ()  # set by compile_module: inputs its kernels take at any alignment
    repairs: list[dict] = field(default_factory=list)  # repairs.py rules applied: [{repair, nodes}]
    input_ranges: dict[str, tuple] = field(default_factory=dict)  # set by compile._lower (index_bounds.py)
    origins: Origins = field(default_factory=Origins)  # the fx nodes the Relax bindings are named after
    kernels: list[dict] = field(default_factory=list)  # set by compile_module: kernel_map.KernelRecorder.kernels


def export_program(gm: torch.fx.GraphModule, example_inputs, dynamic_shapes) -> torch.export.ExportedProgram:
    """Re-export the (rewritten) graph and decompose it to the core ATen set TVM imports."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(gm, tuple(example_inputs), dynamic_shapes=dynamic_shapes, strict=False)
        return program.run_decompositions()


def export_programs(gm: torch.fx.GraphModule, specs, sizes: list[int], dims: dict | None = None) -> dict:
    """{batch: static ExportedProgram} for each built size ({None: ...} without a batch dim); with
    named dimensions (model.dims, one) {(batch, size): ...} for each batch size and bucket."""
    from accelc.capture.export import random_inputs, to_torch
    batches = sizes if any("batch" in spec.shape for spec in specs) else [None]
    if not dims:
        return {b: export_program(gm, to_torch(random_inputs(specs, b or 1, 0)), None) for b in batches}
    (name, dim), = dims.items()
    return {(b, n): export_program(gm, to_torch(random_inputs(specs, b or 1, 0, sizes={name: n})), None)
            for b in batches for n in dim.sizes}


def check_supported(program: torch.export.ExportedProgram, custom_ops=()) -> None:
    """One UnsupportedOpError listing every op the importer has no converter for."""
    known = set(ExportedProgramImporter().convert_map) | set(custom_ops)
    problems = [Problem("E400", f"op {node.target.__name__} has no TVM converter", node_location(node))
                for node in program.graph.nodes
                if node.op == "call_function" and node.target.__name__ not in known]
    if problems:
        raise UnsupportedOpError(problems=problems + [Problem(
            "E400", "replace these ops in the model, or add a converter (custom_convert_map)")])


def function_name(batch: int | None, *sizes: int) -> str:
    """One static Relax function per built batch size ('main' when the model has no batch dim) and
    size of a named dimension (main_b4_s128)."""
    return (f"main_b{batch}" if batch else "main") + "".join(f"_s{n}" for n in sizes)


@known_warnings_hidden()
def to_relax(programs: dict, target, custom_convert_map=None) -> Lowered:
    """Import one exported program per batch size into one IRModule with static shapes.

    Static functions are what MetaSchedule can tune and they run faster than a symbolic batch
    (benchmarks/batch_modes.py); weight transforms are shared by all of them.
    """
    from accelc.backends.tvm.lower import conv as conv_lower
    from accelc.backends.tvm.lower import bn_fold, embedding_bag, pools, repairs
    from accelc.backends.tvm.kernels import isa
    from accelc.backends.tvm.lower.quant import converters, merge_function
    # convolutions as im2col + matmul, Linear layers over packed weights, pools in NHWC
    cpu = {**conv_lower.converters(isa.of(target)), **pools.CONVERTERS,
           **bn_fold.CONVERTERS} if target.kind.name == "llvm" else {}  # BatchNorms folded into convolutions
    custom_convert_map = {**repairs.CONVERTERS, **embedding_bag.CONVERTERS,  # ops TVM has no converter for
                          **converters(isa.of(target)), **cpu,  # int8 ops: always known
                          **(custom_convert_map or {})}
    mod, params, first, origins = tvm.IRModule(), None, None, Origins()
    for batch, program in programs.items():
        check_supported(program, custom_convert_map or {})
        if cpu:
            bn_fold.annotate(program)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single = import_program(program, custom_convert_map, origins)  # bindings named after fx nodes
        single, detached = relax.frontend.detach_params(single)
        main = single["main"]
        names = [p.name for p in main.params[main.attrs["num_input"]:]]
        if params is None:
            params, first = {n: t.numpy() for n, t in zip(names, detached.get("main", []))}, program
        name = function_name(*batch) if isinstance(batch, tuple) else function_name(batch)
        mod = merge_function(mod, single, main.with_attr("global_symbol", name), name)  # + helper PrimFuncs
    with target:
        mod = tvm.transform.Sequential(prepare_passes(target))(mod)
    applied = repairs.import_repairs(first) + bn_fold.folded(first) if first is not None else []
    return Lowered(mod, params or {}, first, repairs=applied, origins=origins)


@known_warnings_hidden()
def compile_module(lowered: Lowered, target, database=None, cuda_archs=()):
    """Run the target pipeline and codegen; failures name the ops involved. CUDA device code is
    compiled ahead of time by nvcc for `cuda_archs` and embedded (backends/tvm/cuda.py)."""
    device_code, unaligned = contextlib.nullcontext(), None
    if target.kind.name == "llvm":
        from accelc.backends.tvm.input_alignment import UnalignedInputs
        from accelc.backends.tvm.schedules.vector_math import install
        install()  # vectorisable log/exp instead of one libm call per lane
        unaligned = UnalignedInputs()
    if target.kind.name == "cuda":
        from accelc.backends.tvm import cuda
        device_code = cuda.ahead_of_time(list(cuda_archs) or [str(target.attrs["arch"])])
    recorder = KernelRecorder()  # which rule and which model code each kernel comes from
    try:
        with device_code, target, tvm.transform.PassContext(opt_level=3, instruments=[recorder]), \
                database or contextlib.nullcontext():
            executable = tvm.compile(lowered.mod, target=target,
                                     relax_pipeline=build_pipeline(target, database, unaligned))
            lowered.unaligned_inputs = tuple(sorted(unaligned.free)) if unaligned is not None else ()
            lowered.kernels = recorder.kernels(lowered.origins)
            return executable
    except (RuntimeError, ValueError, TypeError) as exc:  # TVM raises RuntimeError subclasses
        raise _compile_error(exc, lowered, target) from None


def _compile_error(exc: Exception, lowered: Lowered, target) -> UnsupportedOpError:
    """E401 naming the ops involved: those TVM's message names, else those whose kernels fail to
    compile on their own (found by compiling each legalized kernel alone, on the error path only)."""
    text, program = str(exc), lowered.program
    summary = next((ln for ln in reversed(text.splitlines()) if ln.strip()), text)[:400]
    ops: dict[str, list] = {}
    for node in program.graph.nodes:
        if node.op == "call_function" and hasattr(node.target, "__name__"):
            ops.setdefault(node.target.__name__.split(".")[0], []).append(node)
    named = [name for name in ops if re.search(rf"\b{re.escape(name)}\b", text)]
    if not named:
        words = {word for kernel in _failing_kernels(lowered.mod, target) for word in kernel.rstrip("0123456789")
                 .split("_")}
        words |= {aten for word in list(words) for aten in RELAX_TO_ATEN.get(word, ())}
        named = [name for name in ops if name in words]
    problems = [Problem("E401", f"TVM failed to compile op {node.target.__name__}", node_location(node))
                for name in named for node in ops[name]]
    return UnsupportedOpError(f"TVM could not compile the model: {summary}", code="E401", problems=problems)


# Legalized kernels are named after Relax ops; the ATen ops they come from, where the names differ.
RELAX_TO_ATEN = {"multiply": ("mul",), "subtract": ("sub", "rsub"), "divide": ("div",), "power": ("pow",),
                 "greater": ("gt",), "less": ("lt",), "equal": ("eq",), "not": ("ne",), "take": ("embedding",
                 "index_select", "index"), "matmul": ("mm", "bmm", "addmm", "matmul", "linear"),
                 "strided": ("slice",), "concat": ("cat",), "transpose": ("permute", "transpose"),
                 "sum": ("sum", "mean"), "max": ("amax", "max"), "min": ("amin", "min")}


def _failing_kernels(mod: tvm.IRModule, target) -> list[str]:
    """Names of the legalized kernels that fail to compile alone (CPU targets: no schedule needed)."""
    if target.kind.name != "llvm":
        return []
    try:
        with target:
            legal = relax.transform.LegalizeOps()(mod)
    except Exception:  # legalization itself failed: nothing to bisect
        return []
    failing = []
    for gvar, func in legal.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
            except Exception:
                failing.append(gvar.name_hint)
    return failing


def export_library(executable, path: Path, target_spec) -> dict | None:
    """Write the shared library; cross targets link with their cross compiler. For CUDA, returns
    what device code it embeds (for the manifest)."""
    fcompile = None
    if target_spec.cross_compiler:
        target_spec.check_toolchain()
        from tvm.support import cc
        fcompile = cc.cross_compiler(target_spec.cross_compiler)
    try:
        executable.export_library(str(path), fcompile=fcompile)
    except (RuntimeError, OSError) as exc:
        raise ToolchainError(f"linking the library failed: {str(exc).strip().splitlines()[-1][:300]}",
                             code="E502") from None
    if target_spec.device == "cuda":
        from accelc.backends.tvm import cuda
        return cuda.describe_library(path, cuda.target_archs(target_spec))
    return None


def save_params(params: dict[str, np.ndarray], path: Path) -> None:
    tvm.runtime.save_param_dict_to_file({k: tvm.runtime.tensor(v) for k, v in params.items()}, str(path))
