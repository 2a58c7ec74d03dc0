"""Kernels that read a model input directly take it at the element's alignment, so the runtime can
pass numpy arrays as they are.

TVM assumes every kernel argument is 64-byte aligned (an llvm.assume in each kernel, aligned vector
loads), and numpy aligns arrays to 16 bytes: the runtime copied most inputs into an aligned buffer
first, 4-10 us of the edu_churn MLP's ~90 at batch 256. This pass re-declares the argument buffers
that receive an entry function's input with the element's alignment (LLVM then emits unaligned
vector loads, as fast on aligned data). An input counts as free of the 64-byte requirement only when
every use of it, in every entry function, is such an argument: a reshape or any other use keeps it.
TVM 0.27's Python API has no TIR mutator, so the buffer is re-declared through TVMScript.
"""
from __future__ import annotations

import re

import tvm
from tvm import relax

CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def _uses(func: relax.Function, inputs: list) -> tuple[list, set]:
    """([(kernel, argument index, input index)] for inputs passed straight to kernels, {inputs used
    any other way})."""
    position = {var: i for i, var in enumerate(inputs)}
    direct, other = [], set()
    if not isinstance(func.body, relax.SeqExpr):
        return direct, set(position.values())

    def note_others(expr) -> None:
        other.update(position[v] for v in relax.analysis.all_vars(expr) if v in position)

    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op.same_as(CALL_TIR) and isinstance(value.args[1], relax.Tuple):
                for index, arg in enumerate(value.args[1].fields):
                    if isinstance(arg, relax.Var) and arg in position:
                        direct.append((value.args[0], index, position[arg]))
                    else:
                        note_others(arg)
                for rest in value.args[2:]:
                    note_others(rest)
            else:
                note_others(value)
    note_others(func.body.body)
    return direct, other


def _unaligned(kernel: tvm.tirx.PrimFunc, indices: set[int]) -> tvm.tirx.PrimFunc | None:
    """The kernel with the buffers of parameters `indices` declared at element alignment (None if
    TVMScript cannot carry it back)."""
    text = kernel.script()
    for index in indices:
        name = re.escape(str(kernel.params[index]))
        text, found = re.subn(rf'(\b{name}: T\.Buffer\(\(.*?\), "(\w+)")\)',
                              lambda m: f"{m.group(1)}, align={max(1, tvm.DataType(m.group(2)).bits // 8)})", text,
                              count=1)
        if not found:
            return None
    try:
        return tvm.script.from_source(text)
    except Exception:  # a construct the parser does not take back: keep the kernel as it was
        return None


@tvm.transform.module_pass(opt_level=0, name="UnalignedInputs")
class UnalignedInputs:
    """Remembers, in `free`, the input indices that every entry function's kernels take unaligned."""

    def __init__(self):
        self.free: set[int] = set()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        params: dict = {}  # kernel -> its parameter indices that receive an input
        feeds: dict = {}  # kernel -> the input indices it receives
        free = None
        for func in mod.functions.values():
            count = int(func.attrs["num_input"]) if isinstance(func, relax.Function) and func.attrs is not None \
                and "num_input" in func.attrs else 0
            if not count:  # transform_params (weights only), helpers
                continue
            direct, other = _uses(func, list(func.params[:count]))
            for kernel, index, position in direct:
                params.setdefault(kernel, set()).add(index)
                feeds.setdefault(kernel, set()).add(position)
            free = (set(range(count)) if free is None else free) - other
        for kernel, indices in params.items():
            rewritten = _unaligned(mod[kernel], indices) if isinstance(mod[kernel], tvm.tirx.PrimFunc) else None
            if rewritten is None:
                free -= feeds[kernel]
            else:
                mod[kernel] = rewritten
        self.free = free or set()
        return mod
