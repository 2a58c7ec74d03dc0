"""quantize: where q/dq go (MLP, CNN, transformer encoder), the numerics of static, dynamic and
weight-only int8 against an independent numpy implementation of the scheme, the observers,
half-precision casts, and every bad input as one coded error."""
from __future__ import annotations

import logging
import textwrap
from collections import Counter

import numpy as np
import pytest
import torch

from accelc.config import recipe as recipe_mod
from accelc.capture.export import import_entrypoint
from accelc.errors import PassError, RecipeError
from accelc.passes import PassContext, run_passes
from accelc.passes.fold import fetch
from accelc.passes.quantize import Quantize, QuantizeConfig
from accelc.passes.quantize_observe import observe
from accelc.passes.quantize_ops import ops
from tests.fixtures.helpers import Recording, make_repo

from tests.fixtures.passcheck import export_graph
from tests.fixtures.pass_models import captured

DATA = '''
import numpy as np

def mlp_rows():
    return np.random.default_rng(1).standard_normal((600, 12)).astype(np.float32)

def mlp_rows_labelled():
    x = mlp_rows()
    return x, (x[:, 0] > 0).astype(np.float32)

def branch_rows():
    return np.random.default_rng(2).standard_normal((48, 3, 8, 8)).astype(np.float32)

def tokens():
    return np.random.default_rng(3).integers(0, 50, (48, 6))

def wrong_width():
    return np.zeros((10, 7), np.float32)

def broken():
    raise RuntimeError("the warehouse is closed")

def with_nan():
    x = mlp_rows()
    x[3, 4] = np.nan
    return x
'''

RECIPE = """\
version: 1
name: q
model:
  entrypoint: nowhere:build
  inputs:
    - {name: x, shape: [batch, 12]}
data:
  calibration: qdata:mlp_rows
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = make_repo(tmp_path_factory.mktemp("qrepo"))
    (root / "qdata.py").write_text(DATA)
    return root


def loaded_recipe(repo, text: str = RECIPE, name: str = "r.yaml"):
    (repo / name).write_text(textwrap.dedent(text))
    return recipe_mod.load(repo / name)


@pytest.fixture(scope="module")
def loaded(repo):
    return loaded_recipe(repo)


def run(gm, inputs, loaded, logger=None, **config):
    """The pass on `gm`; every layer is eligible (min_outputs 1) unless a test says otherwise."""
    cfg = QuantizeConfig(kind="quantize", **{"min_outputs": 1, **config})
    return Quantize(cfg).run(gm, PassContext(inputs, loaded, logger))


def targets(gm) -> Counter:
    return Counter(getattr(n.target, "_opname", str(n.target)) for n in gm.graph.nodes if n.op == "call_function")


# ---- where the ops go ---------------------------------------------------------------------------

def test_static_mlp_replaces_every_linear_by_an_int8_op_fed_by_one_quantize(loaded):
    model, inputs, gm = captured("mlp")
    result = run(gm, inputs, loaded, mode="static")
    ops_after = targets(result.graph)
    assert ops_after["linear_int8"] == 3 and ops_after["linear"] == 0 and ops_after["quantize"] == 3
    for node in result.graph.graph.find_nodes(op="call_function", target=ops.linear_int8.default):
        q, weight = node.args[0], result.graph.get_parameter(node.args[3].target)
        assert q.target == ops.quantize.default and q.args[3:] == (0, 127)  # 7-bit activations
        assert weight.dtype == torch.int8 and int(weight.abs().max()) <= 127
    assert result.changed and [r["dtype"] for r in result.stats["layers"]] == ["int8"] * 3
    assert result.stats["size"]["ratio"] > 2.5  # tiny layers: the float32 biases and scales weigh in
    export_graph(result.graph, *inputs)  # lowering re-exports it


def test_cnn_quantizes_each_conv_input_once_and_keeps_depthwise_float(repo):
    text = RECIPE.replace("[batch, 12]", "[batch, 3, 8, 8]").replace("mlp_rows", "branch_rows")
    loaded = loaded_recipe(repo, text, "cnn.yaml")
    model, inputs, gm = captured("branch")
    result = run(gm, inputs, loaded, mode="dynamic")
    ops_after = targets(result.graph)
    # left and right read the same image: one quantize for both
    assert ops_after["conv2d_int8"] == 4 and ops_after["conv2d"] == 1 and ops_after["linear_int8"] == 2
    assert ops_after["quantize"] == 5 and ops_after["choose_qparams"] == 5
    rows = {r["layer"]: r for r in result.stats["layers"]}
    assert rows["depthwise"]["dtype"] == "float32" and "depthwise" in rows["depthwise"]["reason"]
    torch.testing.assert_close(result.graph(*inputs), model(*inputs), atol=2e-2, rtol=0)


def test_encoder_quantizes_projections_and_lists_attention_as_float32(repo):
    loaded = loaded_recipe(repo, RECIPE.replace("[batch, 12]", "[batch, 6]").replace("mlp_rows", "tokens"), "enc.yaml")
    model, inputs, gm = captured("encoder")
    result = run(gm, inputs, loaded, mode="dynamic")
    names = [r["layer"] for r in result.stats["layers"]]
    assert len(set(names)) == len(names) == 5  # two F.linear calls of one attention module, told apart
    assert all(r["dtype"] == "int8" for r in result.stats["layers"])
    assert [o["op"] for o in result.stats["float32_ops"]] == ["scaled_dot_product_attention"]
    assert targets(result.graph)["linear_int8"] == 5
    torch.testing.assert_close(result.graph(*inputs), model(*inputs), atol=2e-2, rtol=0)
    export_graph(result.graph, *inputs)


def test_skip_keeps_layers_float_and_an_unmatched_glob_warns_with_candidates(loaded):
    model, inputs, gm = captured("mlp")
    log = Recording()
    result = run(gm, inputs, loaded, log.logger, mode="dynamic", skip=["head", "body.9*"])
    rows = {r["layer"]: r for r in result.stats["layers"]}
    assert rows["head"]["dtype"] == "float32" and "skip" in rows["head"]["reason"]
    assert targets(result.graph)["linear"] == 1
    (warning,) = result.stats["warnings"]
    assert "'body.9*' matches no Linear/Conv" in warning and "body.0" in warning
    assert any(r.levelname == "WARNING" and r.getMessage().startswith("  quantize: ") for r in log.records)


def test_input_graph_untouched_and_second_run_changes_nothing(loaded):
    model, inputs, gm = captured("mlp")
    code = gm.code
    graph, reports = run_passes(gm, [QuantizeConfig(kind="quantize", mode="static")],
                                PassContext(inputs, loaded))
    assert gm.code == code and reports[0]["changed"]
    _, again = run_passes(graph, [QuantizeConfig(kind="quantize", mode="static")],
                          PassContext(inputs, loaded))
    assert not again[0]["changed"]


# ---- numerics vs numpy ----------------------------------------------------------------------------

def np_weights(w: np.ndarray, per_channel: bool = True):
    amax = np.abs(w).max(axis=1) if per_channel else np.full(len(w), np.abs(w).max(), np.float32)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    return np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8), scale


def np_qparams(low: float, high: float, qmin: int = 0, qmax: int = 127):
    low, high = min(low, 0.0), max(high, 0.0)
    scale = np.float32((high - low) / (qmax - qmin))
    return scale, int(np.clip(qmin - np.round(np.float32(low) / scale), qmin, qmax))


def np_quantize(x, scale, zero_point, qmin: int = 0, qmax: int = 127):
    return np.clip(np.round(x * (np.float32(1) / scale)) + zero_point, qmin, qmax).astype(np.uint8)


def np_linear_int8(q, scale, zero_point, wq, w_scale, bias):
    acc = (q.astype(np.int64) - zero_point) @ wq.astype(np.int64).T  # the exact integer sum
    return acc.astype(np.float32) * (scale * w_scale) + bias


def np_dynamic_qparams(x, qmin: int = 0, qmax: int = 127):
    low, high = np.minimum(x.min(axis=-1, keepdims=True), 0), np.maximum(x.max(axis=-1, keepdims=True), 0)
    scale = (high - low) / np.float32(qmax - qmin)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    return scale, np.clip(qmin - np.round(low / scale), qmin, qmax).astype(np.int32)


def mlp_layers(model):
    return [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in (model.body[0], model.body[3], model.head)]


def np_float_activations(model, x: np.ndarray) -> list[np.ndarray]:
    """The input of each Linear of the float MLP, in numpy."""
    seen, h = [], x
    for i, (w, b) in enumerate(mlp_layers(model)):
        seen.append(h)
        h = h @ w.T + b
        h = np.maximum(h, 0) if i < 2 else h
    return seen


def test_static_numerics_equal_numpy_reference(loaded):
    model, inputs, gm = captured("mlp")
    result = run(gm, inputs, loaded, mode="static", samples=400)
    rows = result.stats["layers"]
    data = import_entrypoint("qdata:mlp_rows", loaded.root, "test")()
    keep = torch.randperm(600, generator=torch.Generator().manual_seed(0))[:400].sort().values.numpy()
    observed = np_float_activations(model, data[keep])
    x = np.random.default_rng(7).standard_normal((64, 12)).astype(np.float32)
    h = x
    for i, ((w, b), row, seen) in enumerate(zip(mlp_layers(model), rows, observed)):
        np.testing.assert_allclose(row["act_range"], [min(seen.min(), 0), max(seen.max(), 0)], rtol=1e-5)
        scale, zero_point = np_qparams(*row["act_range"])  # qparams from the range: exactly the scheme
        assert (np.float32(row["act_scale"]), row["act_zero_point"]) == (scale, zero_point)
        wq, w_scale = np_weights(w)
        h = np_linear_int8(np_quantize(h, scale, zero_point), scale, zero_point, wq, w_scale, b)
        h = np.maximum(h, 0) if i < 2 else 1 / (1 + np.exp(-h))
    with torch.no_grad():
        got = result.graph(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, h, rtol=1e-6, atol=1e-7)
    assert np.abs(got - model(torch.from_numpy(x)).detach().numpy()).max() < 5e-3  # and close to float


def test_dynamic_numerics_equal_numpy_reference_per_row(loaded):
    model, inputs, gm = captured("mlp")
    result = run(gm, inputs, loaded, mode="dynamic")
    x = np.random.default_rng(8).standard_normal((33, 12)).astype(np.float32) * 3
    h = x
    for i, (w, b) in enumerate(mlp_layers(model)):
        scale, zero_point = np_dynamic_qparams(h)
        wq, w_scale = np_weights(w)
        h = np_linear_int8(np_quantize(h, scale, zero_point), scale, zero_point, wq, w_scale, b)
        h = np.maximum(h, 0) if i < 2 else 1 / (1 + np.exp(-h))
    with torch.no_grad():
        got = result.graph(torch.from_numpy(x)).numpy()
        one_row = result.graph(torch.from_numpy(x[5:6])).numpy()
    np.testing.assert_allclose(got, h, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(one_row, got[5:6])  # per row: a result never depends on its batch


def test_weight_only_per_tensor_numerics_equal_numpy_reference(loaded):
    model, inputs, gm = captured("mlp")
    result = run(gm, inputs, loaded, mode="weight_only", weights="per_tensor")
    assert targets(result.graph)["linear_int8w"] == 3 and targets(result.graph)["quantize"] == 0
    x = np.random.default_rng(9).standard_normal((16, 12)).astype(np.float32)
    h = x
    for i, (w, b) in enumerate(mlp_layers(model)):
        wq, w_scale = np_weights(w, per_channel=False)
        assert len(set(w_scale)) == 1
        h = (h @ wq.astype(np.float32).T) * w_scale + b
        h = np.maximum(h, 0) if i < 2 else 1 / (1 + np.exp(-h))
    with torch.no_grad():
        np.testing.assert_allclose(result.graph(torch.from_numpy(x)).numpy(), h, rtol=1e-5, atol=1e-6)


def test_half_precision_is_cast_only(loaded):
    model, inputs, gm = captured("mlp")
    result = run(gm, inputs, loaded, dtype="float16")
    linears = list(result.graph.graph.find_nodes(op="call_function", target=torch.ops.aten.linear.default))
    assert len(linears) == 3
    assert all(result.graph.get_parameter(n.args[1].target).dtype == torch.float16 for n in linears)
    assert targets(result.graph)["_to_copy"] == 6  # ReLU runs in float32 between layers: in and out each
    x = torch.randn(8, 12)
    out = result.graph(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x), atol=2e-3, rtol=0)


def test_half_precision_drops_a_cast_back_followed_by_a_cast_down(loaded):
    model = torch.nn.Sequential(torch.nn.Linear(12, 16, bias=False), torch.nn.Linear(16, 4)).eval()
    inputs = (torch.randn(4, 12),)
    result = run(export_graph(model, *inputs), inputs, loaded, dtype="bfloat16")
    assert targets(result.graph)["_to_copy"] == 2  # into the first Linear, out of the last
    torch.testing.assert_close(result.graph(*inputs), model(*inputs), atol=3e-2, rtol=0)


# ---- observers ----------------------------------------------------------------------------------

def _identity_graph():
    return export_graph(torch.nn.Identity(), torch.zeros(2, 4))


def _observe(values: np.ndarray, method: str, **kw):
    gm = _identity_graph()
    node = next(iter(gm.graph.find_nodes(op="placeholder")))
    return observe(gm, [node], [torch.from_numpy(values)], method, logging.getLogger("accelc.tests"), **kw)[node]


def test_minmax_range_is_the_observed_range_with_zero():
    values = np.random.default_rng(0).uniform(0.5, 3.0, (1000, 4)).astype(np.float32)
    low, high = _observe(values, "minmax")
    assert (low, high) == (0.0, pytest.approx(float(values.max())))


def test_percentile_cuts_both_tails_at_histogram_resolution():
    values = np.random.default_rng(1).uniform(-1.0, 1.0, (50000, 4)).astype(np.float32)
    low, high = _observe(values, "percentile", percentile=99.0)
    assert low == pytest.approx(-0.98, abs=2e-3) and high == pytest.approx(0.98, abs=2e-3)


def test_entropy_clips_rare_outliers():
    rng = np.random.default_rng(2)
    values = np.abs(rng.standard_normal((20000, 4))).astype(np.float32)
    values[0, 0] = 100.0  # one outlier stretches the min/max range 25x
    low, high = _observe(values, "entropy")
    assert low == 0.0 and 3.0 < high < 20.0


# ---- bad input --------------------------------------------------------------------------------

def from_recipe(repo, text: str, name: str):
    """(pass, context) exactly as a build makes them: the pass config comes from the recipe."""
    loaded = loaded_recipe(repo, text + "passes:\n  - {kind: quantize, mode: static}\n", name)
    model, inputs, gm = captured("mlp")
    return Quantize(loaded.recipe.passes[0]), gm, PassContext(inputs, loaded)


def test_static_without_calibration_data_names_the_field_to_add(repo):
    quantize, gm, ctx = from_recipe(repo, RECIPE.replace("data:\n  calibration: qdata:mlp_rows\n", ""), "nocal.yaml")
    with pytest.raises(PassError) as info:
        quantize.run(gm, ctx)
    problem = info.value.problems[0]
    assert info.value.code == "E453" and problem.field == "data.calibration"
    assert "calibration:" in problem.hint and "nocal.yaml:8:" in problem.location  # at the pass
    Quantize(QuantizeConfig(kind="quantize", mode="dynamic")).run(gm, ctx)  # dynamic needs none


@pytest.mark.parametrize("source, message", [("wrong_width", "takes [batch, 12]"),
                                             ("broken", "the warehouse is closed")])
def test_bad_calibration_data_is_one_located_error(repo, source, message):
    quantize, gm, ctx = from_recipe(repo, RECIPE.replace("mlp_rows", source), f"{source}.yaml")
    with pytest.raises(PassError) as info:
        quantize.run(gm, ctx)
    problem = info.value.problems[0]
    assert info.value.code == "E454" and message in problem.message and problem.field == "data.calibration"
    assert f"{source}.yaml:8:" in problem.location  # the data.calibration line


def test_non_finite_calibration_activations_name_the_layer(repo):
    quantize, gm, ctx = from_recipe(repo, RECIPE.replace("mlp_rows", "with_nan"), "nan.yaml")
    with pytest.raises(PassError) as info:
        quantize.run(gm, ctx)
    assert info.value.code == "E454" and "non-finite activations" in str(info.value) and "body.0" in str(info.value)
    assert "tlparse" not in str(info.value)


def test_calibration_may_return_inputs_and_labels(loaded):
    model, inputs, gm = captured("mlp")
    result = run(gm, inputs, loaded, mode="static", data="qdata:mlp_rows_labelled")
    assert result.stats["samples"] == {"source": "quantize.data", "rows": 512}


@pytest.mark.parametrize("config, message", [
    ("{kind: quantize, mode: static, activations: per_sample}", "per_sample needs mode: dynamic"),
    ("{kind: quantize, dtype: float16, mode: dynamic}", "cast-only"),
    ("{kind: quantize, mode: dynamic, calibration: entropy}", "mode: static only"),
    ("{kind: quantize, mode: sometimes}", "static"),
    ("{kind: quantize, fallback: {strategy: random}}", "sensitivity"),
])
def test_inconsistent_config_is_a_recipe_error(repo, config, message):
    with pytest.raises(RecipeError) as info:
        loaded_recipe(repo, RECIPE + f"passes:\n  - {config}\n", "bad.yaml")
    assert message in str(info.value) and "bad.yaml:10:" in str(info.value)


def test_layers_narrower_than_min_outputs_stay_float_and_say_why(loaded):
    """By default a one-output head is not quantized (as an int8 GEMV it is slower than float32);
    min_outputs 1 quantizes it too."""
    model, inputs, gm = captured("mlp")
    narrow = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.linear.default
              and fetch(gm, n.args[1]).shape[0] < 8]
    result = Quantize(QuantizeConfig(kind="quantize", mode="static")).run(gm, PassContext(inputs, loaded))
    rows = {row["layer"]: row for row in result.stats["layers"]}
    kept = [row for row in rows.values() if row["dtype"] == "float32"]
    assert narrow and len(kept) == len(narrow) and all("quantize.min_outputs: 8" in row["reason"] for row in kept)
    assert targets(result.graph)["linear"] == len(narrow)
    everything = run(gm, inputs, loaded, mode="static")  # the helper's min_outputs 1
    assert targets(everything.graph)["linear"] == 0
