"""Validation data for the metric gate: the recipe's `data.validation` callable or a CSV file
(`data.csv` + `data.label`). Every way a CSV can fail to fit is a DataError that names the
column and the first bad row. Torch-free (the callable is imported only when it is used).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from accelc.errors import DataError, did_you_mean

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})  # compared lower-cased: a missing value
BINARY_METRICS = ("auc", "accuracy", "logloss")
INF = float("inf")


def _number(text: str) -> float | None:
    """The cell as a float (NaN when missing), or None when it is not a finite number."""
    try:
        value = float(text)  # takes surrounding blanks and "nan"
    except ValueError:
        return float("nan") if text.strip().lower() in MISSING else None
    return None if value in (INF, -INF) else value


def _open_rows(path: Path, display: str):
    """Header and a reader positioned after it; an empty file is an error."""
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}", code="E350", location=display)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
        reader = csv.reader(handle)
        header = next(reader, None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the CSV: {exc}", code="E350", location=display) from None
    if not header or all(not cell.strip() for cell in header):
        handle.close()
        raise DataError("the CSV is empty: no header row", code="E351", location=display)
    return handle, reader, [cell.strip() for cell in header]


def _positions(header: list[str], wanted: list[str], display: str) -> list[int]:
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"the header repeats column(s) {repeated}", code="E352", location=f"{display}:1")
    missing = [c for c in wanted if c not in header]
    if missing:
        hint = did_you_mean(missing[0], header)
        raise DataError(f"missing column(s) {missing}; the header has {len(header)} columns", code="E352",
                        location=f"{display}:1", hint=hint)
    return [header.index(c) for c in wanted]


def _parse(reader, header: list[str], positions: list[int], names: list[str], display: str) -> np.ndarray:
    """Rows of the wanted columns as float64 [rows, len(names)]; NaN where a cell is missing."""
    rows = []
    try:
        for cells in reader:
            if not cells:
                continue  # blank line
            line, row = reader.line_num, len(rows) + 1
            if len(cells) != len(header):
                raise DataError(f"row {row} has {len(cells)} fields, the header has {len(header)}", code="E353",
                                location=f"{display}:{line}")
            values = [_number(cells[i]) for i in positions]
            if None in values:
                k = values.index(None)
                raise DataError(f"column '{names[k]}', row {row}: {cells[positions[k]].strip()!r:.40} is not a "
                                "number (categorical columns take numeric codes; missing values are empty)",
                                code="E353", location=f"{display}:{line}")
            rows.append(values)
    except csv.Error as exc:
        raise DataError(f"malformed CSV: {exc}", code="E353", location=f"{display}:{reader.line_num}") from None
    if not rows:
        raise DataError("the CSV has a header but no data rows", code="E351", location=display)
    return np.array(rows, dtype=np.float64)


def _check_label(labels: np.ndarray, label: str, binary: bool, display: str) -> None:
    bad = np.isnan(labels) | (~np.isin(labels, (0.0, 1.0)) if binary else False)
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        value = "missing" if np.isnan(labels[row - 1]) else f"{labels[row - 1]:g}"
        expected = "0 or 1" if binary else "a number"
        raise DataError(f"label column '{label}', row {row}: expected {expected}, got {value}", code="E355",
                        location=display)


def load_csv(path: str | Path, columns: list[str] | None, label: str, binary_label: bool = True,
             display: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [rows, columns], labels float32 [rows]) from a CSV with a header row.

    `columns` picks and orders the feature columns (default: every column but the label)."""
    path = Path(path)
    display = display or str(path)
    handle, reader, header = _open_rows(path, display)
    with handle:
        names = list(columns) if columns is not None else [c for c in header if c != label]
        positions = _positions(header, names + [label], display)
        table = _parse(reader, header, positions, names + [label], display)
    features, labels = table[:, :-1], table[:, -1]
    empty = np.isnan(features).all(axis=0)
    if empty.any():
        raise DataError(f"column '{names[int(np.flatnonzero(empty)[0])]}' is missing in every row (first: row 1)",
                        code="E354", location=display)
    _check_label(labels, label, binary_label, display)
    return features.astype(np.float32), labels.astype(np.float32)


def _as_arrays(inputs) -> list[np.ndarray]:
    if isinstance(inputs, dict):
        return [np.asarray(v) for v in inputs.values()]
    if isinstance(inputs, (tuple, list)):
        return [np.asarray(v) for v in inputs]
    return [np.asarray(inputs)]


def _check_inputs(arrays: list[np.ndarray], labels: np.ndarray, specs, where: str) -> list[np.ndarray]:
    """Arrays in the specs' dtypes and shapes, one label per row."""
    if len(arrays) != len(specs):
        raise DataError(f"the validation data has {len(arrays)} input(s), the model takes {len(specs)}",
                        code="E357", location=where)
    checked = []
    for spec, array in zip(specs, arrays):
        want = np.dtype(spec.dtype)
        if array.dtype != want and array.dtype.kind != want.kind:
            raise DataError(f"validation input '{spec.name}' is {array.dtype}, the model takes {spec.dtype}",
                            code="E357", location=where)
        fixed = [d for d in spec.shape if d != "batch"]
        got = [d for i, d in enumerate(array.shape) if "batch" not in spec.shape or i != spec.shape.index("batch")]
        if array.ndim != len(spec.shape) or got != fixed:
            raise DataError(f"validation input '{spec.name}' has shape {list(array.shape)}, the model takes "
                            f"{spec.shape}", code="E357", location=where)
        checked.append(np.ascontiguousarray(array, dtype=want))
    rows = {len(a) for a in checked}
    if rows != {len(labels)}:
        raise DataError(f"{len(labels)} labels for {sorted(rows)} input rows", code="E357", location=where)
    return checked


def validation_data(loaded) -> tuple[list[np.ndarray], np.ndarray]:
    """(inputs, labels) on which verify.metric is evaluated, checked against the model's inputs."""
    recipe = loaded.recipe
    section, specs, gate = recipe.data, recipe.model.inputs, recipe.verify.metric
    if section.validation:
        from accelc.capture.export import import_entrypoint
        where = loaded.where("data", "validation")
        result = import_entrypoint(section.validation, loaded.root, where)()
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise DataError(f"'{section.validation}' must return (inputs, labels), got {type(result).__name__}",
                            code="E357", location=where)
        inputs, labels = _as_arrays(result[0]), np.asarray(result[1]).reshape(-1)
    elif section.csv:
        where = loaded.where("data", "csv")
        if len(specs) != 1 or len(specs[0].shape) != 2:
            raise DataError("data.csv feeds models with one input of shape [batch, columns]", code="E357",
                            location=where)
        features, labels = load_csv(loaded.resolve(section.csv, "data", "csv"), specs[0].columns, section.label,
                                    binary_label=gate is None or gate.name in BINARY_METRICS,
                                    display=section.csv)
        inputs = [features]
    else:
        raise DataError("verify.metric needs validation data: data.validation or data.csv + data.label",
                        code="E357", location=loaded.where("verify", "metric"))
    return _check_inputs(inputs, labels, specs, where), labels
