"""Which model code and which schedule each compiled kernel comes from, recorded while the build's
pipeline runs (the manifest's `kernels`, which `accelc profile` reads).

A pass instrument watches three passes. Before them, every binding is named after the fx node it
comes from (lower/origins.py), and legalization keeps the names. FuseOps moves each group of
bindings into a fused function and keeps their names but its output's: that one is found again by
what it computes (the same PrimFunc on the same arguments as a binding before fusion). FuseTIR
turns each fused function into the kernel called where the function was. ApplyDefaultSchedule
schedules each kernel that no tuning record did by the first rule of RULES that applies
(schedules/rule.py reports which).
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax, tirx

from accelc.backends.tvm.lower.origins import Origins

NAIVE = "none (TVM's naive loops)"
SEARCHED = "MetaSchedule record"
TVM_DEFAULT = "TVM's default (dlight)"  # a GPU rule of TVM's: accelc's own rules schedule CPU kernels
PRESCHEDULED = "its own (scheduled where it was made)"


def rule_label(rule) -> str:
    """A rule's name in reports: its class, and the TVM rule inside a Tolerant(...)."""
    inner = getattr(rule, "rule", None)
    return f"{type(rule).__name__}({type(inner).__name__})" if inner is not None else type(rule).__name__


@tvm.instrument.pass_instrument
class KernelRecorder:
    """Put in the build's PassContext; `kernels(origins)` afterwards."""

    def __init__(self):
        self._unfused = self._scheduling = self._token = None
        self._groups: dict[tuple[str, str], list[str]] = {}  # (function, var) -> names fused into its call
        self._fused_tir: dict = {}  # the functions right after FuseTIR: kernels before any record applies
        self.bindings: dict[str, list[str]] = {}  # kernel -> names of the bindings it computes
        self.rules: dict[str, tuple[str, tuple[str, ...]]] = {}  # kernel -> (rule, tags)

    def run_before_pass(self, mod, info) -> None:
        # snapshots of the functions: a Python pass (ApplyDefaultSchedule) updates its module in place
        if info.name == "FuseOps":
            self._unfused = _functions(mod)
        elif info.name == "ApplyDefaultSchedule":
            from accelc.backends.tvm.schedules import rule
            self._scheduling, self._token = _functions(mod), rule.RECORDING.set([])

    def run_after_pass(self, mod, info) -> None:
        if info.name == "FuseOps" and self._unfused is not None:
            self._groups = fused_groups(self._unfused, mod)
        elif info.name == "FuseTIR":
            self._fused_tir = _functions(mod)
            for function, var, kernel in tir_calls(mod):
                names = self._groups.get((function, var), [var])
                self.bindings.setdefault(kernel, []).extend(n for n in names if n is not None)
        elif info.name == "ApplyDefaultSchedule" and self._token is not None:
            from accelc.backends.tvm.schedules import rule
            chosen = rule.RECORDING.get()
            rule.RECORDING.reset(self._token)
            self._token = None
            self._record_rules(self._scheduling, _functions(mod), chosen)

    def _record_rules(self, before: dict, after: dict, chosen: list) -> None:
        from accelc.backends.tvm.schedules.rule import kernel_tags
        for name, func in before.items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            unscheduled = self._fused_tir.get(name, func)
            if _scheduled(func):  # a tuning record's schedule, applied before the defaults, or its own
                label = PRESCHEDULED if _scheduled(unscheduled) else _tuned_rule(func, unscheduled)
                self.rules[name] = (label, _tags(kernel_tags(unscheduled)))
                continue
            rule = next((r for f, r in chosen if f.same_as(func)), None)
            label = rule_label(rule) if rule is not None else TVM_DEFAULT if _scheduled(after.get(name)) else NAIVE
            self.rules[name] = (label, _tags(kernel_tags(func)))

    def kernels(self, origins: Origins) -> list[dict]:
        """Per kernel, by name: {kernel, rule, tags, nodes, ops, modules, sources} (nodes, ops,
        modules and sources empty where no fx node is known; rule "-" where no rule was recorded)."""
        rows = []
        for kernel in sorted(set(self.bindings) | set(self.rules)):
            found = [node for node in map(origins.of, self.bindings.get(kernel, ())) if node is not None]
            rule, tags = self.rules.get(kernel, ("-", ()))
            rows.append({"kernel": kernel, "rule": rule, "tags": list(tags),
                         **{key: _unique(node[key[:-1]] for node in found)
                            for key in ("nodes", "ops", "modules", "sources")}})
        return rows


def _functions(mod: tvm.IRModule) -> dict:
    return {gvar.name_hint: func for gvar, func in mod.functions_items()}


def _unique(values) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _tags(tags) -> tuple[str, ...]:
    return tuple(sorted(set(tags) - {""}))


def _scheduled(func) -> bool:
    return isinstance(func, tirx.PrimFunc) and bool(func.attrs and func.attrs.get("tirx.is_scheduled", False))


def _tuned_rule(scheduled, unscheduled) -> str:
    """The default rule's name when the record holds that rule's own schedule, else SEARCHED."""
    from accelc.backends.tvm.schedules import choose
    chosen = choose(unscheduled, tvm.target.Target.current())
    if chosen is not None:
        default = chosen[1].mod["main"].with_attr("tirx.is_scheduled", True)
        if tvm_ffi.structural_equal(default, scheduled):
            return rule_label(chosen[0])
    return SEARCHED


def _tir_call(value) -> tuple[str, list] | None:
    """(kernel name, its tensor arguments) of an R.call_tir, else None."""
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op) or value.op.name != "relax.call_tir":
        return None
    args = value.args[1]
    return value.args[0].name_hint, list(args.fields) if isinstance(args, relax.Tuple) else [args]


def _bindings(func: relax.Function) -> list:
    body = func.body
    return [b for block in body.blocks for b in block.bindings] if isinstance(body, relax.SeqExpr) else []


def _name(expr, alias: dict) -> str | None:
    """The pre-fusion name of an argument (None for a constant or any other non-variable)."""
    return alias.get(expr.name, expr.name) if isinstance(expr, relax.Var) else None


def _primitive(func) -> bool:
    return isinstance(func, relax.Function) and bool(func.attrs) and "Primitive" in func.attrs


def fused_groups(unfused: dict, fused: tvm.IRModule) -> dict[tuple[str, str], list[str | None]]:
    """(function, the var a fused function's call is bound to) -> the pre-fusion names of the
    bindings in the fused function; `unfused` holds the functions before fusion, by name."""
    groups = {}
    for gvar, func in fused.functions_items():
        if _primitive(func) or not isinstance(func, relax.Function) or gvar.name_hint not in unfused:
            continue
        index: dict[tuple, list[str]] = {}  # (kernel, argument names) -> names of bindings computing it
        for binding in _bindings(unfused[gvar.name_hint]):
            call = _tir_call(binding.value)
            if call is not None:
                index.setdefault((call[0], tuple(_name(a, {}) for a in call[1])), []).append(binding.var.name)
        alias: dict = {}  # var after fusion -> its name before (a list for a tuple of outputs)
        for binding in _bindings(func):
            value, var = binding.value, binding.var.name
            if isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar) \
                    and _primitive(fused[value.op]):
                names, output = _group(fused[value.op], [_name(a, alias) for a in value.args], index)
                groups[(gvar.name_hint, var)], alias[var] = names, output
            elif isinstance(value, relax.TupleGetItem) and isinstance(alias.get(_var(value.tuple_value)), list):
                alias[var] = alias[value.tuple_value.name][value.index]
    return groups


def _var(expr) -> str | None:
    return expr.name if isinstance(expr, relax.Var) else None


def _group(func: relax.Function, args: list, index: dict) -> tuple[list, str | list | None]:
    """(the pre-fusion names of a fused function's bindings, that of its output or outputs)."""
    local = {param.name: arg for param, arg in zip(func.params, args)}
    names = []
    for binding in _bindings(func):
        call, name = _tir_call(binding.value), binding.var.name
        if call is not None:
            same = index.get((call[0], tuple(local.get(a.name) if isinstance(a, relax.Var) else None
                                              for a in call[1])))
            name = same.pop(0) if same else name  # an output binding gets a new name; inner ones keep theirs
        local[binding.var.name] = name
        names.append(name)
    result = func.body.body
    if isinstance(result, relax.Tuple):
        return names, [local.get(_var(field)) for field in result.fields]
    return names, local.get(_var(result))


def tir_calls(mod: tvm.IRModule):
    """(function, var, kernel) for every R.call_tir bound in the module's Relax functions."""
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function) and not _primitive(func):
            for binding in _bindings(func):
                call = _tir_call(binding.value)
                if call is not None:
                    yield gvar.name_hint, binding.var.name, call[0]
