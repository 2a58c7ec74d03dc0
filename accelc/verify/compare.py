"""Verification: run the compiled artifact on seeded samples and compare it, per output, with a
reference (the rewritten graph, or the original eager model): within the recipe's tolerance per
element, or by SQNR per output (verify/sqnr.py) where the recipe or an int8 pass sets a floor;
and, with a `vs_original` floor, by SQNR against the original model too. Torch-free apart from
the callables the caller passes in."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from accelc.verify import sqnr as sqnr_mod


def compare(reference: list[np.ndarray], compiled: list[np.ndarray], atol: float, rtol: float,
            names: list[str]) -> list[dict]:
    """Per-output errors; an element passes when |got - want| <= atol + rtol * |want|."""
    rows = []
    for name, want, got in zip(names, reference, compiled):
        want64, got64 = np.asarray(want, np.float64), np.asarray(got, np.float64)
        if want64.shape != got64.shape:
            rows.append({"output": name, "max_abs": float("inf"), "max_rel": float("inf"), "mismatched": want64.size,
                         "elements": want64.size, "passed": False, "sqnr_db": -math.inf,
                         "note": f"shape {list(got64.shape)} != {list(want64.shape)}"})
            continue
        diff = np.abs(got64 - want64)
        nan_mismatch = np.isnan(got64) != np.isnan(want64)
        diff = np.where(np.isnan(got64) & np.isnan(want64), 0.0, diff)
        bad = (diff > atol + rtol * np.abs(want64)) | nan_mismatch
        rel = diff / np.maximum(np.abs(want64), 1e-12)
        rows.append({"output": name, "max_abs": float(np.nanmax(diff)) if diff.size else 0.0,
                     "max_rel": float(np.nanmax(rel)) if rel.size else 0.0,
                     "mismatched": int(bad.sum()), "elements": int(bad.size), "passed": not bad.any(),
                     "sqnr_db": sqnr_mod.sqnr_db(*sqnr_mod.energies(want64, got64))})
    return rows


def verify(run_compiled: Callable, run_reference: Callable, sample_sets: list[tuple[int, list]],
           atol: float, rtol: float, output_names: list[str], sqnr: dict | None = None,
           run_original: Callable | None = None) -> dict:
    """Compare compiled and reference outputs over (batch, [input arrays ...]) sample sets; a set's
    optional third item ({"bucket": {dim: size}}) goes into its rows. `sqnr` holds the floors in dB
    ({"vs_rewritten", "vs_original"}, each None when not checked); `run_original` is the original
    model when the reference is the rewritten graph (None: the reference is the original)."""
    floors = {"vs_rewritten": None, "vs_original": None, **(sqnr or {})}
    rows = []
    for batch, samples, *extra in sample_sets:
        per_output: dict[str, dict] = {}
        for arrays in samples:
            want, got = run_reference(arrays), run_compiled(arrays)
            original = run_original(arrays) if run_original and floors["vs_original"] is not None else want
            for row, w, g, o in zip(compare(want, got, atol, rtol, output_names), want, got, original):
                merged = per_output.setdefault(row["output"], {**row, "batch": batch, **(extra[0] if extra else {}),
                                                               "mismatched": 0, "elements": 0, "max_abs": 0.0,
                                                               "max_rel": 0.0, "energy": [0.0] * 4})
                _merge(merged, row, (*sqnr_mod.energies(w, g), *sqnr_mod.energies(o, g)))
        rows.extend(_judge(r, floors, len(samples)) for r in per_output.values())
    passed = bool(rows) and all(r["passed"] for r in rows)  # nothing compared is not a pass
    report = {"status": "passed" if passed else "failed", "tolerance": {"atol": atol, "rtol": rtol}, "rows": rows}
    if sqnr is not None:
        report["sqnr"] = dict(floors)
    return report


def _merge(merged: dict, row: dict, energy: tuple[float, ...]) -> None:
    merged["max_abs"] = max(merged["max_abs"], row["max_abs"])
    merged["max_rel"] = max(merged["max_rel"], row["max_rel"])
    merged["mismatched"] += row["mismatched"]
    merged["elements"] += row["elements"]
    merged["passed"] = merged["passed"] and row["passed"]
    merged["energy"] = [a + b for a, b in zip(merged["energy"], energy)]


def _judge(row: dict, floors: dict, samples: int) -> dict:
    """One output at one batch size: SQNR over all its samples, which criterion passed it
    ("tolerance" per element, "sqnr" above the floor, None: neither), and the original-model floor."""
    signal, noise, original_signal, original_noise = row.pop("energy")
    row = {**row, "samples": samples, "sqnr_db": sqnr_mod.sqnr_db(signal, noise)}
    floor = floors["vs_rewritten"]
    row["criterion"] = ("tolerance" if row["passed"] else
                        "sqnr" if floor is not None and "note" not in row and row["sqnr_db"] >= floor else None)
    if floors["vs_original"] is not None:
        row["sqnr_original_db"] = sqnr_mod.sqnr_db(original_signal, original_noise)
    row["passed"] = row["criterion"] is not None and row.get("sqnr_original_db", math.inf) >= (
        floors["vs_original"] if floors["vs_original"] is not None else -math.inf)
    return row


def failures(report: dict) -> list[str]:
    """What failed, one phrase per failing row: the reference, the output, the batch and the numbers."""
    floors, reference = report.get("sqnr") or {}, report.get("reference", "original model")
    out = []
    for r in report.get("rows", []):
        where = f"output '{r['output']}' at batch {r['batch']}" + "".join(
            f", {n}={v}" for n, v in (r.get("bucket") or {}).items())
        if r.get("criterion") is None and not r["passed"]:
            floor = floors.get("vs_rewritten")
            out.append(f"{where} does not match the {reference}: max abs err {r['max_abs']:.3g}, "
                       f"{r['mismatched']}/{r['elements']} elements outside the tolerance, SQNR "
                       f"{_db(r.get('sqnr_db'))}" + (f" (floor {floor:g} dB)" if floor is not None else "")
                       + (f"; {r['note']}" if r.get("note") else ""))
        elif not r["passed"]:
            out.append(f"{where} is too far from the original model: SQNR {_db(r['sqnr_original_db'])} "
                       f"< verify.sqnr.vs_original {floors['vs_original']:g} dB")
    return out


def _db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} dB"


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason, "rows": []}


def format_report(report: dict) -> str:
    """The verification table the CLI prints."""
    if report["status"] == "skipped":
        return f"verification skipped: {report['reason']}"
    tol, floors = report["tolerance"], report.get("sqnr") or {}
    gates = "".join(f"; {label} >= {floors[key]:g} dB" for key, label in (("vs_rewritten", "or sqnr"),
                                                                          ("vs_original", "sqnr vs original"))
                    if floors.get(key) is not None)
    original = any("sqnr_original_db" in r for r in report["rows"])
    lines = [f"verification vs {report.get('reference', 'original model')} (atol={tol['atol']:g}, "
             f"rtol={tol['rtol']:g}{gates})",
             f"  {'batch':>6} {'output':<10} {'samples':>7} {'max abs err':>12} {'max rel err':>12} "
             f"{'mismatched':>14} {'sqnr dB':>8}" + (f" {'vs orig':>8}" if original else "") + "  result"]
    for r in report["rows"]:
        bucket = "".join(f" {n}={v}" for n, v in (r.get("bucket") or {}).items())
        lines.append(f"  {str(r['batch']) + bucket:>6} {r['output']:<10} {r['samples']:>7} {r['max_abs']:>12.3e} "
                     f"{r['max_rel']:>12.3e} {r['mismatched']:>6}/{r['elements']:<7} {_cell(r.get('sqnr_db'))}"
                     + (f" {_cell(r.get('sqnr_original_db'))}" if original else "") + f"  {_result(r)}")
    metric = report.get("metric")
    if metric:
        lines.append(f"  metric {metric['name']}: original {metric['original']:.6f}, compiled "
                     f"{metric['compiled']:.6f}, drop {metric['drop']:+.6f} (max {metric['max_drop']:g}) -> "
                     f"{'ok' if metric['passed'] else 'FAIL'}")
    lines.append(f"  => {report['status'].upper()}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return f"{'-' if value is None else f'{value:.1f}':>8}"


def _result(row: dict) -> str:
    if row["passed"]:
        return "ok (sqnr)" if row.get("criterion") == "sqnr" else "ok"
    return "FAIL (vs original)" if row.get("criterion") else "FAIL"
