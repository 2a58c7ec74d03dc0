"""`accelc build recipes/edu_churn.yaml` end to end: the artifact takes raw vectors (NaNs and all)
and matches the numpy pipeline, the AUC gate reports original vs compiled, the manifest records
the raw schema, and an impossible metric budget fails the build with exit 1."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file


from accelc.config import recipe as recipe_mod  # noqa: E402
from accelc.runtime import predictor as runtime
from accelc.compile import build  # noqa: E402
from examples.edu_churn import data, schema  # noqa: E402
from tests.fixtures.helpers import cli  # noqa: E402
from tests.fixtures.edu_churn import WEIGHTS, edge_rows, numpy_pipeline  # noqa: E402
from tests.fixtures.helpers import ROOT  # noqa: E402

RECIPE = ROOT / "recipes" / "edu_churn.yaml"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(RECIPE, output=tmp_path_factory.mktemp("edu_churn") / "artifact")


def test_recipe_columns_are_the_examples_schema():
    spec = recipe_mod.load(RECIPE).recipe.model.inputs[0]
    assert tuple(spec.columns) == schema.NAMES
    assert tuple(spec.units) == tuple(c.unit for c in schema.COLUMNS)
    assert spec.shape == ["batch", schema.RAW_WIDTH]


def test_build_passes_the_auc_gate_with_equal_original_and_compiled_auc(built):
    metric = built.report["metric"]
    assert built.report["status"] == "passed" and metric["passed"]
    assert metric["name"] == "auc" and metric["examples"] == 7500
    assert metric["original"] >= 0.80
    assert abs(metric["original"] - metric["compiled"]) <= 1e-4
    manifest = json.loads((built.output / "manifest.json").read_text())
    assert manifest["verified"] and manifest["verification"]["metric"] == metric


def test_manifest_records_the_raw_input_schema(built):
    manifest = json.loads((built.output / "manifest.json").read_text())
    (spec,) = manifest["inputs"]
    assert spec["columns"] == list(schema.NAMES)
    assert spec["units"][schema.INDEX["video_minutes_per_week"]] == "minutes/week"


@pytest.mark.parametrize("batch", [1, 64, 70])
def test_artifact_on_raw_vectors_equals_the_numpy_pipeline(built, batch):
    raw = np.concatenate([edge_rows(), data.sample_inputs(batch, seed=4242 + batch)])[:batch]
    got = runtime.load(built.output)(raw)
    want = numpy_pipeline(raw, load_file(str(WEIGHTS)))
    assert got.shape == (batch, 1) and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_impossible_metric_budget_exits_1_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """Compiled outputs flipped (p -> 1 - p): within a loose per-element tolerance, but the
    AUC collapses, so only the metric gate can fail the build."""
    monkeypatch.setenv("ACCELC_ALLOW_OUTSIDE_REPO", "1")  # the weights come through a symlink
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    (repo / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    validation = data.default_splits()["validation"].take(np.arange(400))
    data.write_csv(validation, repo / "learners.csv")
    text = RECIPE.read_text()
    for old, new in (("batch: [1, 64, 1024]", "batch: [64]"),
                     ("  validation: examples.edu_churn.data:validation_set", "  csv: learners.csv\n  label: churned"),
                     ("tolerance: {atol: 1.0e-5, rtol: 1.0e-4}", "tolerance: {atol: 1.0, rtol: 0.0}"),
                     ("samples: 4", "samples: 1"), ("max_drop: 0.001", "max_drop: 0.0")):
        assert old in text
        text = text.replace(old, new)
    (repo / "recipe.yaml").write_text(text)
    real_predict = runtime.Predictor.predict
    monkeypatch.setattr(runtime.Predictor, "predict", lambda self, *a, **k: [1 - out for out in real_predict(
        self, *a, **k)])
    code, out, err = cli(["build", repo / "recipe.yaml", "--output", tmp_path / "out"], capsys)
    assert code == 1, (out, err)
    assert "metric auc: original" in err and "-> FAIL" in err and "FAILED" in err  # the report, with the progress
    assert " ok" in err  # the per-element rows passed: the metric alone failed the build
    assert "error[E600]" in err and "metric auc got worse by" in err and "max_drop is 0" in err
    assert "Traceback" not in out + err
    assert not (tmp_path / "out").exists()
