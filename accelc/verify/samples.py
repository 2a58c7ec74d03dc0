"""The inputs verification runs on: the recipe's `data.samples` callable, called as
fn(n, seed, **args), or seeded random inputs from the input specs, whose integer inputs need a
range (declared, or the one the model's tables take: capture/index_bounds.py)."""
from __future__ import annotations

import inspect
from typing import Callable

import numpy as np

from accelc.errors import DataError, ModelError, Problem, did_you_mean

Source = Callable[[int, int], tuple]  # (n, seed) -> one array per model input, in order


def source(loaded) -> Source | None:
    """data.samples with its args bound, checked against the callable's signature before any call;
    None when the recipe has none."""
    spec = loaded.recipe.data.samples
    if spec is None:
        return None
    from accelc.capture import export as capture
    name, args = (spec, {}) if isinstance(spec, str) else (spec.fn, dict(spec.args))
    fn = capture.import_entrypoint(name, loaded.root, loaded.where("data", "samples"), field="data.samples")
    _check_signature(fn, name, args, loaded)
    names, where = [s.name for s in loaded.recipe.model.inputs], loaded.where("data", "samples")

    def call(n: int, seed: int) -> tuple[np.ndarray, ...]:
        try:
            result = fn(n, seed, **args)
        except Exception as exc:  # the user's code: one coded error, not a traceback
            raise DataError(f"'{name}' failed for n={n}, seed={seed}: {type(exc).__name__}: {exc}"[:500],
                            code="E359", location=where, field="data.samples") from None
        return _arrays(result, names, name, where)
    return call


def _check_signature(fn, name: str, args: dict, loaded) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): the call itself will tell
        return
    try:
        signature.bind(0, 0, **args)
    except TypeError as exc:
        params = signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = next((key for key in args if key not in params and not takes_any), None)
        at = ("data", "samples", "args", unknown) if unknown else ("data", "samples")
        shown = "".join(f", {key}=..." for key in args)
        location = loaded.located.where(at, prefer_key=True) if unknown and loaded.located else loaded.where(*at)
        raise DataError(f"'{name}{signature}' cannot be called as {name.partition(':')[2]}(n, seed{shown}): {exc}",
                        code="E356", location=location, field=".".join(at),
                        hint=did_you_mean(unknown, params) if unknown else None) from None


def _arrays(result, names: list[str], name: str, where: str) -> tuple[np.ndarray, ...]:
    """What the callable returned as one array per input: a tuple or list in order, a mapping by
    input name, or one array for a model with one input."""
    if isinstance(result, dict):
        missing, unknown = [n for n in names if n not in result], [k for k in result if k not in names]
        if missing or unknown:
            raise DataError(f"'{name}' returned inputs {sorted(map(str, result))}; model.inputs are {names}",
                            code="E359", location=where, field="data.samples",
                            hint=did_you_mean(unknown[0], missing) if unknown and missing else None)
        return tuple(np.asarray(result[n]) for n in names)
    arrays = tuple(result) if isinstance(result, (tuple, list)) else (result,)
    if len(arrays) != len(names):
        raise DataError(f"'{name}' returned {len(arrays)} array(s); model.inputs has {len(names)} ({names})",
                        code="E359", location=where, field="data.samples")
    return tuple(np.asarray(a) for a in arrays)


def check_ranges(loaded, ranges: dict) -> None:
    """Without data.samples, verification draws each integer input from its range: one that has
    none (declared, or derived from the tables it indexes) is refused, not sampled from a guess."""
    if loaded.recipe.data.samples is not None:
        return
    problems = [Problem("E310", f"input '{spec.name}' ({spec.dtype}) has no range and indexes no table the build "
                        "can see, so verification cannot choose realistic values for it",
                        loaded.where("model", "inputs", index), f"model.inputs.{index}.range",
                        "declare `range: [low, high)` of the values it takes (the runtime then refuses "
                        "others), or give data.samples")
                for index, spec in enumerate(loaded.recipe.model.inputs)
                if spec.dtype != "bool" and not spec.dtype.startswith(("float", "bfloat"))
                and ranges.get(spec.name) is None]
    if problems:
        raise ModelError(problems=problems)
