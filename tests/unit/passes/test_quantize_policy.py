"""quantize on a target: `auto` settings come from the target's int8 policy (targets/*.yaml
`int8:`), an explicit setting wins and is checked against that policy, and the report says where
each setting came from. Numerics are judged against eager PyTorch."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

from accelc.config import recipe as recipe_mod
from accelc.config import targets
from accelc.errors import RecipeError, TargetError
from accelc.passes import PassContext
from accelc.passes.quantize import Quantize, QuantizeConfig
from accelc.passes.quantize_ops import ops
from tests.fixtures.helpers import TINY_RECIPE, at, make_repo, write_recipe

from tests.fixtures.passcheck import export_graph

LAB_TARGET = textwrap.dedent("""\
    name: lab-box
    description: a lab board whose int8 kernel wants wide layers
    tvm: {kind: llvm, mtriple: x86_64-linux-gnu}
    dtypes: [float32, int8]
    """)
LAB_POLICY = "int8: {activation_bits: 7, min_outputs: 33, reason: the lab kernel tiles 33 columns}\n"


def mlp() -> tuple[nn.Module, torch.Tensor, torch.fx.GraphModule]:
    """16 -> 32 -> 48 -> 4: a 32- and a 48-column layer, and a narrow head (4 < 8 columns)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 4)).eval()
    x = torch.randn(512, 16)
    return model, x, export_graph(model, x)


def quantize(gm, x, target, loaded=None, **config):
    cfg = QuantizeConfig(kind="quantize", **{"mode": "dynamic", **config})
    return Quantize(cfg).run(gm, PassContext((x,), loaded, target=target))


def quantize_ranges(gm) -> set[tuple[int, int]]:
    """(qmin, qmax) of every activation quantize in the graph."""
    return {tuple(n.args[3:5]) for n in gm.graph.nodes if n.op == "call_function" and n.target == ops.quantize.default}


def lab(tmp_path, policy: str = LAB_POLICY) -> targets.Target:
    (tmp_path / "targets").mkdir(exist_ok=True)
    (tmp_path / "targets" / "lab.yaml").write_text(LAB_TARGET + policy)
    return targets.resolve("lab-box", tmp_path)


@pytest.mark.parametrize("name, qmax", [("x86", 127), ("x86-avx512", 127), ("x86-avx512-vnni", 255),
                                        ("aarch64", 255)])
def test_auto_activations_follow_the_target(name, qmax):
    _, x, gm = mlp()
    target = targets.resolve(name)
    result = quantize(gm, x, target)
    assert quantize_ranges(result.graph) == {(0, qmax)}
    policy = result.stats["int8_policy"]
    assert result.stats["activations"]["range"] == [0, qmax] and policy["activation_bits"] == qmax.bit_length()
    assert policy["source"]["activation_bits"] == f"target '{name}' (int8.activation_bits)"
    assert policy["reason"] == target.int8.reason


def test_without_a_target_the_default_is_seven_bits():
    _, x, gm = mlp()
    result = quantize(gm, x, None)
    assert quantize_ranges(result.graph) == {(0, 127)}
    assert result.stats["int8_policy"]["source"] == {"activation_bits": "accelc default (no target)",
                                                    "min_outputs": "accelc default (no target)"}


def test_eight_bit_activations_halve_the_error_against_eager():
    """Where the target's kernel takes 8 bits, each activation step is half as wide: the quantized
    graph lands about twice as close to the float model."""
    model, x, gm = mlp()
    with torch.no_grad():
        expected = model(x)
        error = {name: (quantize(gm, x, targets.resolve(name), min_outputs=1).graph(x) - expected).abs().mean()
                 for name in ("x86", "x86-avx512-vnni")}
    assert error["x86-avx512-vnni"] < 0.7 * error["x86"], error


def test_min_outputs_auto_follows_the_target_and_an_explicit_value_wins(tmp_path):
    _, x, gm = mlp()
    result = quantize(gm, x, lab(tmp_path))
    rows = {row["layer"]: row for row in result.stats["layers"]}
    assert [row["dtype"] for row in rows.values()] == ["float32", "int8", "float32"]  # only 48 >= 33 columns
    assert "32 output channel(s)" in rows["0"]["reason"] and "quantize.min_outputs: 33" in rows["0"]["reason"]
    assert result.stats["int8_policy"]["source"]["min_outputs"] == "target 'lab-box' (int8.min_outputs)"
    everything = quantize(gm, x, lab(tmp_path), min_outputs=1)
    assert {row["dtype"] for row in everything.stats["layers"]} == {"int8"}
    assert everything.stats["int8_policy"]["source"]["min_outputs"] == "quantize.min_outputs: 1"


def test_target_without_an_int8_policy_gets_the_default(tmp_path):
    _, x, gm = mlp()
    result = quantize(gm, x, lab(tmp_path, policy=""))
    assert quantize_ranges(result.graph) == {(0, 127)}
    assert [row["dtype"] for row in result.stats["layers"]] == ["int8", "int8", "float32"]  # 4 < 8 columns
    assert result.stats["int8_policy"]["source"]["activation_bits"] == \
        "accelc default (target 'lab-box' has no int8 policy)"


def test_explicit_seven_bits_run_on_an_eight_bit_target():
    _, x, gm = mlp()
    result = quantize(gm, x, targets.resolve("x86-avx512-vnni"), reduce_range=True)
    assert quantize_ranges(result.graph) == {(0, 127)}
    assert result.stats["int8_policy"]["source"]["activation_bits"] == "quantize.reduce_range: true"


def test_explicit_eight_bits_on_avx2_are_refused_by_the_pass_at_the_field(tmp_path):
    """Outside a build (which refuses it before any work) the pass itself refuses it."""
    _, x, gm = mlp()
    text = TINY_RECIPE + "passes: [{kind: simplify}, {kind: quantize, mode: dynamic, reduce_range: false}]\n"
    loaded = recipe_mod.load(write_recipe(make_repo(tmp_path), text))
    with pytest.raises(TargetError) as info:
        Quantize(loaded.recipe.passes[1]).run(gm, PassContext((x,), loaded, target=targets.resolve("x86")))
    [problem] = info.value.problems
    assert (problem.code, problem.field, problem.location) == ("E202", "passes.1.reduce_range",
                                                               at(loaded.path, text, "false"))
    assert "vpmaddubsw" in problem.message


def test_a_build_passes_its_target_to_the_passes(tmp_path):
    """The artifact's report names the build's target as the source of the policy."""
    from accelc.compile import build
    text = TINY_RECIPE + "passes: [{kind: quantize, mode: dynamic}]\n"
    out = tmp_path / "out"
    build(write_recipe(make_repo(tmp_path), text), output=out)
    [report] = json.loads((out / "manifest.json").read_text())["passes"]
    assert report["int8_policy"]["source"]["activation_bits"] == "target 'x86' (int8.activation_bits)"
    assert report["activations"]["range"] == [0, 127]


@pytest.mark.parametrize("setting, value, message", [
    ("reduce_range", "maybe", "reduce_range is auto, true or false, got 'maybe'"),
    ("min_outputs", "0", "min_outputs is auto or an integer in [1, 1048576], got 0"),
    ("min_outputs", "some", "min_outputs is auto or an integer in [1, 1048576], got 'some'"),
])
def test_a_bad_setting_is_one_located_problem(tmp_path, setting, value, message):
    text = TINY_RECIPE + f"passes: [{{kind: quantize, mode: dynamic, {setting}: {value}}}]\n"
    path = write_recipe(make_repo(tmp_path), text)
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(path)
    [problem] = info.value.problems
    assert (problem.code, problem.field, problem.message) == ("E102", f"passes.0.{setting}", message)
    assert problem.location == at(path, text, f"{setting}: {value}", offset=len(setting) + 2)
