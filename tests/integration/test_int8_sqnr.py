"""Int8 tier 1 by SQNR. Deep dynamic int8 graphs miss any per-element tolerance against their own
quantized graph (quantum flips compound through the layers: BERT 8x64 misses 1e-4, BERT-base by
0.07); a zero tolerance makes a small encoder miss it the same way, deterministically and fast. The
build passes by SQNR, `accelc verify` applies the same contract, and a broken int8 layer fails with
E600 naming the reference, the output, the batch and the numbers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from accelc import compile as compile_mod
from accelc.errors import VerificationError
from accelc.verify import sqnr
from accelc.verify.artifact_check import reverify
from accelc.verify.compare import format_report
from tests.fixtures import int8_faults
from tests.fixtures.helpers import Recording, make_repo, write_recipe

CONFIG = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 64, "max_position_embeddings": 64}
SOURCE = {"task": "feature-extraction", "outputs": ["last_hidden_state", "pooler_output"], "config": CONFIG, "random_weights": True}
RECIPE = (f"version: 1\nname: deep_bert\nmodel:\n  huggingface: {json.dumps(SOURCE)}\n  inputs:\n"
          "    - {name: input_ids, shape: [batch, 16], dtype: int64, range: [0, 100]}\n"
          "    - {name: attention_mask, shape: [batch, 16], dtype: int64, range: [0, 2]}\n"
          "  batch: [2]\npasses: [{kind: quantize, mode: dynamic}]\ntarget: x86\n"
          "verify: {samples: 2, tolerance: {atol: 0, rtol: 0}}\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("int8_sqnr"))


@pytest.fixture(scope="module")
def deep(repo):
    log = Recording()
    built = compile_mod.build(write_recipe(repo, RECIPE, "deep.yaml"), output=repo / "deep", logger=log.logger)
    return built, log.lines


def test_deep_int8_misses_the_tolerance_and_passes_by_sqnr(deep):
    built, lines = deep
    report = built.report
    assert report["status"] == "passed" and report["reference"] == "rewritten graph (after passes)"
    assert report["sqnr"] == sqnr.INT8_DEFAULTS  # no verify.sqnr in the recipe: the int8 defaults
    by_sqnr = [r for r in report["rows"] if r["criterion"] == "sqnr"]
    assert by_sqnr, report["rows"]  # not a test of the criterion unless some output missed the tolerance
    for row in by_sqnr:
        assert row["mismatched"] > 0 and row["max_abs"] > 0
        assert np.isfinite(row["sqnr_db"]) and row["sqnr_db"] >= sqnr.INT8_DEFAULTS["vs_rewritten"]
    assert all(r["sqnr_original_db"] >= sqnr.INT8_DEFAULTS["vs_original"] for r in report["rows"])
    assert any("ok (sqnr)" in line for line in lines)
    assert built.manifest.verification.rows[0].sqnr_db == report["rows"][0]["sqnr_db"]


def test_accelc_verify_applies_the_same_contract(deep):
    built, _ = deep
    again = reverify(built.output, samples=2)
    assert again["reference"] == "rewritten graph (after passes)"  # the quantized graph, not the float model
    assert again["status"] == "passed" and again["sqnr"] == built.report["sqnr"]
    assert [(r["batch"], r["criterion"]) for r in again["rows"]] == \
        [(r["batch"], r["criterion"]) for r in built.report["rows"]]
    for mine, theirs in zip(again["rows"], built.report["rows"]):
        assert mine["sqnr_db"] == pytest.approx(theirs["sqnr_db"], abs=0.5)
    assert "ok (sqnr)" in format_report(again)


def test_a_wrong_scale_in_one_int8_layer_fails_with_e600(repo):
    with int8_faults.injected("scale_2x", which=1.0) as broken, pytest.raises(VerificationError) as info:
        compile_mod.build(write_recipe(repo, RECIPE, "fault.yaml"), output=repo / "fault", logger=Recording().logger)
    assert broken and info.value.code == "E600"
    message = str(info.value)
    # the last int8 layer is the pooler's: a random-weight encoder's residual stream hides a broken
    # inner layer from any output-level SQNR (per element, a shallow build still catches it)
    assert "output 'pooler_output' at batch 2 does not match the rewritten graph (after passes)" in message
    assert "max abs err" in message and "elements outside the tolerance, SQNR" in message
    assert f"(floor {sqnr.INT8_DEFAULTS['vs_rewritten']:g} dB)" in message
    assert not (repo / "fault").exists()
