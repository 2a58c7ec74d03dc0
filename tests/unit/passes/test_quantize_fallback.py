"""Accuracy-aware fallback: with a layer planted to quantize badly, the sensitivity ranking puts
it first, the fallback reverts exactly it, the budget holds, and the report says so; when nothing
can stay int8 or there is no metric to judge by, one coded error explains why."""
from __future__ import annotations

import textwrap

import pytest
import torch

from accelc.config import recipe as recipe_mod
from accelc.capture.export import import_entrypoint
from accelc.errors import PassError
from accelc.passes import PassContext
from accelc.passes.quantize import Quantize
from tests.fixtures.helpers import Recording, make_repo

from tests.fixtures.passcheck import export_graph

DATA = '''
import numpy as np
import torch
from torch import nn


def planted():
    """12 -> 32 -> 24 -> 1 with a weight of 1000 in the second layer that changes nothing in
    float (it reads hidden unit 5, always 0 after the ReLU, into unit 3, which the head ignores).
    With one weight scale per tensor it leaves every other weight of that layer rounding to 0;
    per channel it only spoils the ignored unit."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 1))
    with torch.no_grad():
        model[0].weight[5] = 0.0
        model[0].bias[5] = -1.0
        model[2].weight[3, 5] = 1000.0
        model[4].weight[0, 3] = 0.0
    return model.eval()


def rows(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 12)).astype(np.float32)


def calibration():
    return rows(512, 1)


def validation():
    x = rows(2000, 2)
    with torch.no_grad():
        score = planted()(torch.from_numpy(x)).numpy().reshape(-1)
    noise = np.random.default_rng(3).standard_normal(len(x)) * score.std()
    return x, (score + noise > np.median(score)).astype(np.float32)  # AUC of the float model < 1
'''

RECIPE = """\
version: 1
name: fb
model:
  entrypoint: fbdata:planted
  inputs:
    - {name: x, shape: [batch, 12]}
data:
  calibration: fbdata:calibration
  validation: fbdata:validation
verify:
  metric: {name: auc, max_drop: 0.002}
passes:
  - PASS
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = make_repo(tmp_path_factory.mktemp("fbrepo"))
    (root / "fbdata.py").write_text(DATA)
    return root


@pytest.fixture(scope="module")
def planted(repo):
    model = import_entrypoint("fbdata:planted", repo, "test")()
    return model, (torch.randn(4, 12),)


def run(repo, planted, config: str, text: str = RECIPE, name: str = "fb.yaml"):
    (repo / name).write_text(textwrap.dedent(text).replace("PASS", config))
    loaded = recipe_mod.load(repo / name)
    model, inputs = planted
    log = Recording()
    ctx = PassContext(inputs, loaded, log.logger)
    result = Quantize(loaded.recipe.passes[0]).run(export_graph(model, *inputs), ctx)
    return result, log.lines


def test_the_planted_layer_is_ranked_worst_and_is_the_one_reverted(repo, planted):
    result, lines = run(repo, planted, "{kind: quantize, mode: static, weights: per_tensor, min_outputs: 1, fallback: {}}")
    report = result.stats["fallback"]
    assert [r["layer"] for r in report["ranking"]][0] == "2"  # nn.Sequential index of the planted layer
    assert report["reverted"] == ["2"]
    first, last = report["steps"][0], report["steps"][-1]
    assert first["drop"] > report["max_drop"] == 0.002  # everything int8 breaks the budget...
    assert last["drop"] <= 0.002 and last["int8_layers"] == 2  # ...and one revert restores it
    rows = {r["layer"]: r for r in result.stats["layers"]}
    assert rows["2"]["dtype"] == "float32" and "fallback" in rows["2"]["reason"]
    assert rows["0"]["dtype"] == rows["4"]["dtype"] == "int8"
    assert rows["2"]["sqnr_db"] < min(rows["0"]["sqnr_db"], rows["4"]["sqnr_db"]) - 20
    assert any("reverted ['2']" in line for line in lines)
    kinds = [getattr(n.target, "_opname", "") for n in result.graph.graph.nodes if n.op == "call_function"]
    assert kinds.count("linear_int8") == 2 and kinds.count("linear") == 1


def test_per_channel_weights_need_no_fallback(repo, planted):
    result, _ = run(repo, planted, "{kind: quantize, mode: static, min_outputs: 1, fallback: {max_drop: 0.002}}")
    assert result.stats["fallback"]["reverted"] == []
    assert len(result.stats["fallback"]["steps"]) == 1


def test_nothing_left_quantized_is_an_error_that_says_why(repo, planted):
    with pytest.raises(PassError) as info:
        run(repo, planted, "{kind: quantize, mode: static, weights: per_tensor, skip: ['0', '4'], fallback: {}}")
    problem = info.value.problems[0]
    assert info.value.code == "E455" and "nothing is left quantized" in problem.message
    assert problem.field == "passes.0.fallback" and "fb.yaml:13:" in problem.location
    assert "2 (" in problem.hint  # the ranking, with SQNR


def test_fallback_without_a_metric_names_what_to_add(repo, planted):
    text = RECIPE.replace("verify:\n  metric: {name: auc, max_drop: 0.002}\n", "")
    with pytest.raises(PassError) as info:
        run(repo, planted, "{kind: quantize, mode: dynamic, fallback: {max_drop: 0.01}}", text, "nometric.yaml")
    assert info.value.code == "E455" and "verify.metric" in str(info.value)
