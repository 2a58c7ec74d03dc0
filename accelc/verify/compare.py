"""Verification: run the compiled artifact on seeded samples and compare with the original
eager model, per output, against the recipe's tolerances. Torch-free apart from the reference
callable the caller passes in."""
from __future__ import annotations

from typing import Callable

import numpy as np


def compare(reference: list[np.ndarray], compiled: list[np.ndarray], atol: float, rtol: float,
            names: list[str]) -> list[dict]:
    """Per-output errors; an element passes when |got - want| <= atol + rtol * |want|."""
    rows = []
    for name, want, got in zip(names, reference, compiled):
        want64, got64 = np.asarray(want, np.float64), np.asarray(got, np.float64)
        if want64.shape != got64.shape:
            rows.append({"output": name, "max_abs": float("inf"), "max_rel": float("inf"), "mismatched": want64.size,
                         "elements": want64.size, "passed": False,
                         "note": f"shape {list(got64.shape)} != {list(want64.shape)}"})
            continue
        diff = np.abs(got64 - want64)
        nan_mismatch = np.isnan(got64) != np.isnan(want64)
        diff = np.where(np.isnan(got64) & np.isnan(want64), 0.0, diff)
        bad = (diff > atol + rtol * np.abs(want64)) | nan_mismatch
        rel = diff / np.maximum(np.abs(want64), 1e-12)
        rows.append({"output": name, "max_abs": float(np.nanmax(diff)) if diff.size else 0.0,
                     "max_rel": float(np.nanmax(rel)) if rel.size else 0.0,
                     "mismatched": int(bad.sum()), "elements": int(bad.size), "passed": not bad.any()})
    return rows


def verify(run_compiled: Callable, run_reference: Callable, sample_sets: list[tuple[int, list]],
           atol: float, rtol: float, output_names: list[str]) -> dict:
    """Compare compiled and reference outputs over (batch, [input arrays ...]) sample sets; a set's
    optional third item ({"bucket": {dim: size}}) goes into its rows."""
    rows = []
    for batch, samples, *extra in sample_sets:
        per_output: dict[str, dict] = {}
        for arrays in samples:
            for row in compare(run_reference(arrays), run_compiled(arrays), atol, rtol, output_names):
                merged = per_output.setdefault(row["output"], {**row, "batch": batch, **(extra[0] if extra else {}),
                                                               "mismatched": 0,
                                                               "elements": 0, "max_abs": 0.0, "max_rel": 0.0})
                merged["max_abs"] = max(merged["max_abs"], row["max_abs"])
                merged["max_rel"] = max(merged["max_rel"], row["max_rel"])
                merged["mismatched"] += row["mismatched"]
                merged["elements"] += row["elements"]
                merged["passed"] = merged["passed"] and row["passed"]
        rows.extend({**r, "samples": len(samples)} for r in per_output.values())
    passed = bool(rows) and all(r["passed"] for r in rows)  # nothing compared is not a pass
    return {"status": "passed" if passed else "failed", "tolerance": {"atol": atol, "rtol": rtol}, "rows": rows}


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason, "rows": []}


def format_report(report: dict) -> str:
    """The verification table the CLI prints."""
    if report["status"] == "skipped":
        return f"verification skipped: {report['reason']}"
    tol = report["tolerance"]
    lines = [f"verification vs {report.get('reference', 'original model')} (atol={tol['atol']:g}, "
             f"rtol={tol['rtol']:g})",
             f"  {'batch':>6} {'output':<10} {'samples':>7} {'max abs err':>12} {'max rel err':>12} "
             f"{'mismatched':>14}  result"]
    for r in report["rows"]:
        bucket = "".join(f" {n}={v}" for n, v in (r.get("bucket") or {}).items())
        lines.append(f"  {str(r['batch']) + bucket:>6} {r['output']:<10} {r['samples']:>7} {r['max_abs']:>12.3e} "
                     f"{r['max_rel']:>12.3e} {r['mismatched']:>6}/{r['elements']:<7}  "
                     f"{'ok' if r['passed'] else 'FAIL'}")
    metric = report.get("metric")
    if metric:
        lines.append(f"  metric {metric['name']}: original {metric['original']:.6f}, compiled "
                     f"{metric['compiled']:.6f}, drop {metric['drop']:+.6f} (max {metric['max_drop']:g}) -> "
                     f"{'ok' if metric['passed'] else 'FAIL'}")
    lines.append(f"  => {report['status'].upper()}")
    return "\n".join(lines)
