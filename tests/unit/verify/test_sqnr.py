"""The SQNR criterion of tier 1 and the vs_original gate: arithmetic against numpy, which criterion
passed each output, the E600 wording, the report table and the manifest record."""
from __future__ import annotations

import math

import numpy as np
import pytest

from accelc.artifact.manifest import Verification
from accelc.config import recipe as recipe_mod
from accelc.verify import compare, sqnr

TOL = (1e-4, 1e-3)
RNG = np.random.default_rng(0)


def numpy_sqnr(refs: list[np.ndarray], gots: list[np.ndarray]) -> float:
    ref, got = np.concatenate([r.ravel() for r in refs]), np.concatenate([g.ravel() for g in gots])
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((got.astype(np.float64) - ref) ** 2))


def run(reference: list, compiled: list, floors: dict | None, original: list | None = None, batch: int = 2):
    """verify() over samples i = 0..n-1, each with one output 'y'."""
    pick = lambda outputs: lambda arrays: [outputs[arrays[0]]]  # noqa: E731
    return compare.verify(pick(compiled), pick(reference), [(batch, [[i] for i in range(len(reference))])], *TOL,
                          ["y"], floors, pick(original) if original is not None else None)


def test_sqnr_is_pooled_over_all_samples_of_a_batch_size():
    refs = [RNG.standard_normal((2, 16)).astype(np.float32) for _ in range(3)]
    gots = [r + RNG.normal(0, 0.01, r.shape).astype(np.float32) for r in refs]
    row, = run(refs, gots, {"vs_rewritten": 20.0})["rows"]
    assert row["sqnr_db"] == pytest.approx(numpy_sqnr(refs, gots), abs=1e-9)
    assert 35 < row["sqnr_db"] < 45  # noise 1e-2 on unit signal: ~40 dB
    assert row["samples"] == 3 and row["elements"] == 96


def test_an_output_outside_the_tolerance_passes_by_sqnr_above_the_floor_only():
    refs = [RNG.standard_normal((2, 64)).astype(np.float32)]
    gots = [refs[0] + np.where(np.arange(64) % 8 == 0, 0.05, 0).astype(np.float32)]  # flipped quanta
    db = numpy_sqnr(refs, gots)
    passed = run(refs, gots, {"vs_rewritten": db - 1})
    assert passed["status"] == "passed"
    row, = passed["rows"]
    assert row["mismatched"] == 16 and row["criterion"] == "sqnr" and row["passed"]
    assert "ok (sqnr)" in compare.format_report(passed)
    failed = run(refs, gots, {"vs_rewritten": db + 1})
    assert failed["status"] == "failed" and failed["rows"][0]["criterion"] is None
    assert run(refs, gots, None)["status"] == "failed"  # no floor: the per-element tolerance alone


def test_within_tolerance_is_passed_by_the_tolerance_whatever_the_floor():
    refs = [RNG.standard_normal((2, 8)).astype(np.float32)]
    report = run(refs, [refs[0] * (1 + 1e-7)], {"vs_rewritten": 300.0})
    assert report["status"] == "passed" and report["rows"][0]["criterion"] == "tolerance"
    assert "ok (sqnr)" not in compare.format_report(report)


def test_exact_silent_and_nan_outputs():
    assert sqnr.sqnr_db(*sqnr.energies(np.ones(3), np.ones(3))) == math.inf
    assert sqnr.sqnr_db(*sqnr.energies(np.zeros(3), np.array([0, 0, 1e-3]))) == -math.inf
    both_nan = np.array([np.nan, 1.0])
    assert sqnr.energies(both_nan, both_nan.copy()) == (1.0, 0.0)  # NaN where the reference has it: no noise
    assert sqnr.energies(np.array([1.0, 2.0]), np.array([np.nan, 2.0]))[1] == math.inf
    refs = [np.array([[1.0, 2.0]])]
    report = run(refs, [np.array([[np.nan, 2.0]])], {"vs_rewritten": 0.0})
    assert report["status"] == "failed" and report["rows"][0]["sqnr_db"] == -math.inf


def test_vs_original_gates_the_artifact_against_the_float_model():
    refs = [RNG.standard_normal((2, 32)).astype(np.float32)]
    original = [refs[0] + RNG.normal(0, 0.1, refs[0].shape).astype(np.float32)]  # what quantizing cost
    db = numpy_sqnr(original, refs)
    ok = run(refs, refs, {"vs_rewritten": 30.0, "vs_original": db - 1}, original)
    assert ok["status"] == "passed" and ok["rows"][0]["sqnr_original_db"] == pytest.approx(db, abs=1e-6)
    bad = run(refs, refs, {"vs_rewritten": 30.0, "vs_original": db + 1}, original)
    row, = bad["rows"]
    assert bad["status"] == "failed" and row["criterion"] == "tolerance" and not row["passed"]
    assert "FAIL (vs original)" in compare.format_report(bad)
    message, = compare.failures({**bad, "reference": "rewritten graph (after passes)"})
    assert "output 'y' at batch 2 is too far from the original model" in message
    assert f"SQNR {db:.1f} dB < verify.sqnr.vs_original {db + 1:g} dB" in message


def test_failure_names_the_reference_the_output_the_batch_and_the_numbers():
    refs = [np.ones((2, 4), np.float32)]
    report = {**run(refs, [refs[0] * 1.5], {"vs_rewritten": 30.0}, batch=3),
              "reference": "rewritten graph (after passes)"}
    message, = compare.failures(report)
    assert message.startswith("output 'y' at batch 3 does not match the rewritten graph (after passes)")
    db = 10 * np.log10(8 / (8 * 0.25))
    assert f"max abs err 0.5, 8/8 elements outside the tolerance, SQNR {db:.1f} dB (floor 30 dB)" in message


def test_floors_default_only_with_an_int8_quantize_pass():
    base = {"version": 1, "name": "m", "model": {"entrypoint": "a.b:c", "batch": [1],
                                                 "inputs": [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]}}
    plain = recipe_mod.Recipe.model_validate(base)
    int8 = recipe_mod.Recipe.model_validate({**base, "passes": [{"kind": "quantize", "mode": "dynamic"}]})
    half = recipe_mod.Recipe.model_validate({**base, "passes": [{"kind": "quantize", "dtype": "float16"}]})
    assert sqnr.floors(plain) is None and sqnr.floors(half) is None
    assert sqnr.floors(int8) == sqnr.INT8_DEFAULTS
    off = recipe_mod.Recipe.model_validate({**base, "passes": [{"kind": "quantize", "mode": "dynamic"}],
                                            "verify": {"sqnr": {}}})
    assert sqnr.floors(off) == {"vs_rewritten": None, "vs_original": None}
    chosen = recipe_mod.Recipe.model_validate({**base, "verify": {"sqnr": {"vs_rewritten": 25}}})
    assert sqnr.floors(chosen) == {"vs_rewritten": 25, "vs_original": None}


def test_the_report_round_trips_through_the_manifest_record():
    refs = [RNG.standard_normal((2, 8)).astype(np.float32)]
    report = {**run(refs, [refs[0] + 0.01], {"vs_rewritten": 20.0, "vs_original": 10.0}, refs),
              "reference": "rewritten graph (after passes)"}
    record = Verification.parse(report)
    assert record.rows[0].criterion == "sqnr" and record.sqnr.vs_original == 10.0
    assert Verification.parse(record.to_json()) == record
    exact = run(refs, refs, {"vs_rewritten": 20.0})
    assert Verification.parse(exact).rows[0].sqnr_db == math.inf


def test_the_schema_states_the_int8_defaults():
    text = recipe_mod.VerifySection.model_fields["sqnr"].description
    assert "{vs_rewritten: %g, vs_original: %g}" % tuple(sqnr.INT8_DEFAULTS.values()) in text
