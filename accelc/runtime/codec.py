"""JSON values <-> checked arrays, shared by both protocols of `accelc serve` (/predict and KServe v2).

A value per input (nested lists as JSON decodes them) becomes an array of the artifact's dtype, its
shape, batch rows and values checked, 64-byte aligned so that the predictor takes it without a copy.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import numpy as np

from accelc.artifact.manifest import TensorSpec
from accelc.runtime import predictor as runtime
from accelc.errors import InputError, did_you_mean

# HTTP status per error code, both protocols. Other InputErrors (E801-E806: the inputs do not fit the
# artifact's signature) are 422 on /predict and 400 on v2. Codes E81x belong to the HTTP layer.
STATUS = {"E807": 413, "E810": 400, "E811": 400, "E812": 413, "E813": 404, "E815": 408}
KINDS = {"f": "numbers", "i": "integers", "u": "integers", "b": "booleans", "U": "strings", "S": "strings"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: list  # as in the manifest: "batch" for the batch dimension (shown in errors)
    dims: tuple  # None for the batch dimension
    batched: bool


class Decoder:
    """JSON body -> arrays in input order, each of the artifact's dtype, shape checked, 64-byte aligned."""

    def __init__(self, specs: tuple[TensorSpec, ...], max_rows: int, reject_nonfinite: bool):
        self.inputs = [InputSpec(s.name, np.dtype(s.dtype), list(s.shape), s.dims, s.batched) for s in specs]
        self.names = [i.name for i in self.inputs]
        self.max_rows, self.reject_nonfinite = max_rows, reject_nonfinite

    def decode(self, body: bytes) -> tuple[list[np.ndarray], int]:
        """The arrays and the request's batch rows (1 when no input is batched)."""
        return self.arrays(self._values(parse_json(body)))

    def arrays(self, values: list) -> tuple[list[np.ndarray], int]:
        """Checked arrays from one value (nested lists or an array) per input in input order, and the rows."""
        arrays = [self._array(spec, value) for spec, value in zip(self.inputs, values)]
        rows = {a.shape[0] for a, spec in zip(arrays, self.inputs) if spec.batched}
        if len(rows) > 1:
            raise InputError(f"inputs disagree on the batch size: {sorted(rows)}", code="E802")
        return arrays, rows.pop() if rows else 1

    def _values(self, data) -> list:
        if not isinstance(data, dict) or "inputs" not in data or set(data) != {"inputs"}:
            raise InputError('the body must be a JSON object {"inputs": {name: nested list, ...}} or '
                             '{"inputs": [nested list, ...]} in input order', code="E811")
        given = data["inputs"]
        if isinstance(given, list):
            if len(given) != len(self.names):
                raise InputError(f"expected {len(self.names)} input(s) {self.names} in this order, got {len(given)}",
                                 code="E801")
            return given
        if not isinstance(given, dict):
            raise InputError('"inputs" must be an object {name: nested list} or a list in input order', code="E811")
        return self.by_name(given)

    def by_name(self, given: dict) -> list:
        """The values of `given` ({input name: value}) in input order; unknown or missing names are E801."""
        unknown = [n for n in given if n not in self.names]
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r}; the artifact takes {self.names}", code="E801",
                             hint=did_you_mean(unknown[0], self.names))
        missing = [n for n in self.names if n not in given]
        if missing:
            raise InputError(f"missing input(s) {missing}; the artifact takes {self.names}", code="E801")
        return [given[n] for n in self.names]

    def _array(self, spec: InputSpec, value) -> np.ndarray:
        where = f"input '{spec.name}'"
        array = rectangular(where, value)
        if array.dtype.kind in "USV":
            raise InputError(f"{where} must hold {KINDS[spec.dtype.kind]} ({spec.dtype}), got strings", code="E803")
        if array.ndim != len(spec.dims) or any(d is not None and d != n for d, n in zip(spec.dims, array.shape)):
            raise InputError(f"{where} must have shape {spec.shape}, got {list(array.shape)}", code="E802")
        if spec.batched and array.shape[0] < 1:
            raise InputError(f"{where}: empty batch", code="E802")
        if spec.batched and array.shape[0] > self.max_rows:
            raise InputError(f"{where}: {array.shape[0]} rows is more than this server takes per request "
                             f"({self.max_rows})", code="E807", hint="split the request, or raise --max-batch-rows")
        if array.dtype.kind == "O":  # null among numbers, an integer beyond 64 bits, or an object
            array = _from_objects(where, spec.dtype, array)
        return self._cast(where, spec.dtype, array)

    def _cast(self, where: str, dtype: np.dtype, array: np.ndarray) -> np.ndarray:
        kind = array.dtype.kind
        accepted = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}.get(dtype.kind, dtype.kind)
        if kind not in accepted:
            got = "numbers with a fraction or exponent (1.5, 2.0)" if kind == "f" else KINDS.get(kind, str(array.dtype))
            raise InputError(f"{where} must hold {KINDS.get(dtype.kind, dtype.name)} ({dtype}), got {got}",
                             code="E803")
        if dtype.kind in "iu" and array.size:
            info = np.iinfo(dtype)
            outside = (array < info.min) | (array > info.max)
            if outside.any():
                bad = int(np.flatnonzero(outside)[0])
                raise InputError(f"{where}: value {array.flat[bad]} at flat index {bad} does not fit in {dtype}",
                                 code="E803")
        out = runtime.aligned_empty(array.shape, dtype)  # aligned: the predictor takes it without a copy
        with np.errstate(over="ignore", invalid="ignore"):  # 1e39 -> inf in float32, checked below
            np.copyto(out, array, casting="unsafe")
        if self.reject_nonfinite:
            runtime.check_finite(where, out, "this server rejects NaN and infinities (--reject-nonfinite)")
        return out


def rectangular(where: str, value) -> np.ndarray:
    """`value` as an array, or E802 when its nested lists are ragged or mix lists with numbers."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        raise InputError(f"{where} is not a rectangular nested list: rows of different lengths, "
                         "or lists mixed with numbers", code="E802") from None


def parse_json(body: bytes):
    """JSON, or a coded error. NaN/Infinity literals are accepted (Python's json writes them)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise InputError("the body is not valid JSON: nested too deeply", code="E810") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"the body is not valid JSON: {exc}", code="E810") from None


def _from_objects(where: str, dtype: np.dtype, array: np.ndarray) -> np.ndarray:
    """Numbers from an object array: null is NaN for float inputs; other objects, and numbers the
    input's dtype cannot hold (integers beyond 64 bits, say), are errors."""
    low, high = ((-sys.float_info.max, sys.float_info.max) if dtype.kind == "f" else
                 (np.iinfo(dtype).min, np.iinfo(dtype).max) if dtype.kind in "iu" else (1, 0))
    for index, item in enumerate(array.flat):
        if item is None and dtype.kind == "f":
            continue
        if item is None or isinstance(item, bool) or not isinstance(item, (int, float)) or (
                isinstance(item, float) and dtype.kind != "f"):
            what = ("null (only float inputs take null, as NaN)" if item is None else
                    "a number with a fraction" if isinstance(item, float) else _json_type(item))
            raise InputError(f"{where}: element at flat index {index} is {what}, not {KINDS[dtype.kind]}",
                             code="E803")
        if not low <= item <= high:
            raise InputError(f"{where}: value {item} at flat index {index} does not fit in {dtype}", code="E803")
    return np.array([math.nan if x is None else x for x in array.flat],
                    np.float64 if dtype.kind == "f" else dtype).reshape(array.shape)


def _json_type(item) -> str:
    return {bool: "a boolean", str: "a string", dict: "an object", list: "a list"}.get(type(item), type(item).__name__)


def jsonable(array: np.ndarray):
    """Nested lists; NaN and infinities become null (JSON has neither)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        objects = array.astype(object)
        objects[~np.isfinite(array)] = None
        return objects.tolist()
    return array.tolist()
