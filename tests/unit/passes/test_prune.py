"""Structured pruning (l1/l2_structured): the pruned graph really shrinks, runs, matches an
independent eager reference, and the report tells the truth about what changed."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from accelc.passes import PassContext
from accelc.passes.prune import Prune, PruneConfig
from tests.fixtures.helpers import Recording

from tests.fixtures.pass_models import MODELS, captured, export

# Independent description of each test model's channel coupling:
# [(producers pruned together, [(consumer, repeat, offset)])] where consumer input column
# offset + k*repeat + r belongs to channel k of the group.
GROUPS = {
    "mlp": [(["body.0"], [("body.3", 1, 0)]), (["body.3"], [("head", 1, 0)])],
    "cnn": [(["stem.0", "layer1.conv2.0"], [("layer1.conv1.0", 1, 0), ("layer2.conv1.0", 1, 0),
                                            ("layer2.shortcut.0", 1, 0)]),
            (["layer1.conv1.0"], [("layer1.conv2.0", 1, 0)]),
            (["layer2.conv1.0"], [("layer2.conv2.0", 1, 0)]),
            (["layer2.conv2.0", "layer2.shortcut.0"], [("head", 1, 0)])],
    "branch": [(["left"], [("mix", 1, 0)]), (["right"], [("mix", 1, 8)]), (["reduce"], [("fc", 16, 0)]),
               (["fc"], [("head", 1, 0)])],
    "encoder": [(["encoder.layers.0.linear1"], [("encoder.layers.0.linear2", 1, 0)])],
}


def prune(gm, inputs, logger=None, **config):
    cfg = PruneConfig(kind="prune", **{"method": "l1_structured", **config})
    return Prune(cfg).run(gm, PassContext(inputs, None, logger))


def masked_reference(model: nn.Module, name: str, amount: float, p: int, round_to: int = 1) -> nn.Module:
    """The eager model with the input columns of removed channels zeroed in every consumer: removing
    a channel group must compute exactly this (up to float summation order)."""
    ref = copy.deepcopy(model)
    plans = []
    for producers, consumers in GROUPS[name]:  # importance from the original weights, then zero
        weights = [model.get_submodule(path).weight.detach() for path in producers]
        score = sum(w.reshape(len(w), -1).abs().sum(1) if p == 1 else w.reshape(len(w), -1).pow(2).sum(1).sqrt()
                    for w in weights)
        size = len(score)
        keep = min(size, max(1, math.ceil((size - math.floor(amount * size + 1e-9)) / round_to) * round_to))
        plans.append((sorted(set(range(size)) - set(torch.topk(score, keep).indices.tolist())), consumers))
    with torch.no_grad():
        for removed, consumers in plans:
            for path, repeat, offset in consumers:
                columns = [offset + k * repeat + r for k in removed for r in range(repeat)]
                ref.get_submodule(path).weight[:, columns] = 0
    return ref


def float_elements(gm) -> int:
    return sum(t.numel() for t in gm.state_dict().values() if t.is_floating_point())


def rows_by_layer(result) -> dict:
    return {row["layer"]: row for row in result.stats["layers"]}


@pytest.mark.parametrize("method", ["l1_structured", "l2_structured"])
@pytest.mark.parametrize("name", MODELS)
def test_amount_zero_is_identity(name, method):
    model, inputs, gm = captured(name)
    result = prune(gm, inputs, method=method, amount=0.0)
    assert not result.changed
    torch.testing.assert_close(result.graph(*inputs), model(*inputs), rtol=0, atol=0)
    assert result.stats["params"]["before"] == result.stats["params"]["after"]
    assert all(r["out_before"] == r["out_after"] for r in result.stats["layers"])


@pytest.mark.parametrize("method,p", [("l1_structured", 1), ("l2_structured", 2)])
@pytest.mark.parametrize("name", MODELS)
def test_pruned_graph_equals_masked_eager_model(name, method, p):
    model, inputs, gm = captured(name)
    result = prune(gm, inputs, method=method, amount=0.5)
    assert result.changed
    result.graph.graph.lint()
    reference = masked_reference(model, name, 0.5, p)
    torch.testing.assert_close(result.graph(*inputs), reference(*inputs), rtol=1e-4, atol=1e-5)
    more = tuple(torch.cat([x, x[:1]]) for x in inputs)  # another batch size still works
    torch.testing.assert_close(result.graph(*more), reference(*more), rtol=1e-4, atol=1e-5)


def test_mlp_report_counts_by_hand():
    model, inputs, gm = captured("mlp")  # 12 -> 32 -> 24 -> 1
    result = prune(gm, inputs, amount=0.5)
    rows = rows_by_layer(result)
    assert [(rows[k]["out_after"], rows[k]["in_after"]) for k in ("body.0", "body.3", "head")] == \
        [(16, 12), (12, 16), (1, 12)]
    assert result.stats["params"] == {"before": 12 * 32 + 32 + 32 * 24 + 24 + 24 + 1,
                                      "after": 12 * 16 + 16 + 16 * 12 + 12 + 12 + 1}
    assert result.stats["macs_per_sample"] == {"before": 12 * 32 + 32 * 24 + 24, "after": 12 * 16 + 16 * 12 + 12}
    assert result.stats["params"]["after"] == float_elements(result.graph)


def test_cnn_residual_groups_bn_and_output_layer():
    model, inputs, gm = captured("cnn")
    result = prune(gm, inputs, amount=0.5)
    rows = rows_by_layer(result)
    # residual partners keep the same count; the head keeps its 5 classes and loses input columns
    assert rows["stem.0"]["out_after"] == rows["layer1.conv2.0"]["out_after"] == 4
    assert rows["layer2.conv2.0"]["out_after"] == rows["layer2.shortcut.0"]["out_after"] == 8
    assert "coupled" in rows["stem.0"]["status"] and "layer1.conv2.0" in rows["stem.0"]["status"]
    assert (rows["head"]["out_after"], rows["head"]["in_after"]) == (5, 8)
    assert "model output" in rows["head"]["status"]
    bn_sizes = {t.shape[0] for name, t in result.graph.state_dict().items() if "running_mean" in name}
    assert bn_sizes == {4, 8}
    assert result.stats["params"]["after"] == float_elements(result.graph)
    assert result.stats["macs_per_sample"]["after"] < 0.35 * result.stats["macs_per_sample"]["before"]


def test_branch_model_concat_flatten_and_depthwise():
    model, inputs, gm = captured("branch")
    result = prune(gm, inputs, amount=0.5)
    rows = rows_by_layer(result)
    assert rows["mix"]["in_after"] == 4 + 3  # both concatenated branches shrank
    assert rows["fc"]["in_after"] == 3 * 16  # flatten: each channel carries 4x4 features
    assert "depthwise" in rows["depthwise"]["status"] and rows["depthwise"]["out_after"] == 8
    assert rows["mix"]["status"].startswith("skipped") and "groups=8" in rows["mix"]["status"]


def test_encoder_prunes_ffn_and_explains_attention():
    model, inputs, gm = captured("encoder")
    result = prune(gm, inputs, amount=0.5)
    rows = result.stats["layers"]
    ffn = next(r for r in rows if r["layer"] == "encoder.layers.0.linear1")
    assert (ffn["out_before"], ffn["out_after"]) == (32, 16)
    skipped = [r for r in rows if r["status"].startswith("skipped")]
    assert len(skipped) == 4 and all(len(r["status"]) > len("skipped: ") + 10 for r in skipped)


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_keeps_multiples(round_to):
    model, inputs, gm = captured("cnn")
    result = prune(gm, inputs, amount=0.4, round_to=round_to)
    for row in result.stats["layers"]:
        if row["status"].startswith("pruned"):
            assert row["out_after"] % round_to == 0
    torch.testing.assert_close(result.graph(*inputs), masked_reference(model, "cnn", 0.4, 1, round_to)(*inputs),
                               rtol=1e-4, atol=1e-5)


def test_layers_globs_and_skip_with_coupling():
    model, inputs, gm = captured("cnn")
    result = prune(gm, inputs, amount=0.5, layers={"layer2.*": 0.25}, skip=["layer1.conv2.*"])
    rows = rows_by_layer(result)
    assert rows["layer2.conv1.0"]["out_after"] == 12  # 16 - floor(0.25 * 16)
    assert rows["layer1.conv1.0"]["out_after"] == 4  # global amount
    assert rows["layer1.conv2.0"]["out_after"] == rows["stem.0"]["out_after"] == 8  # skipped, and its partner
    assert "coupled with skipped layer(s) layer1.conv2.0" in rows["stem.0"]["status"]
    assert result.stats["warnings"] == []


def test_glob_matching_nothing_warns_with_candidates():
    model, inputs, gm = captured("mlp")
    log = Recording()
    result = prune(gm, inputs, logger=log.logger, amount=0.5, skip=["hed"], layers={"nope.*": 0.1})
    warnings = result.stats["warnings"]
    assert len(warnings) == 2
    assert "skip glob 'hed'" in warnings[0] and "did you mean 'head'" in warnings[0] and "body.0" in warnings[0]
    assert "layers glob 'nope.*'" in warnings[1]
    assert any(r.levelname == "WARNING" and "prune: skip glob 'hed'" in r.getMessage() for r in log.records)


class InputResidual(nn.Module):
    """conv(x) + x: the channels are tied to the model input, which cannot shrink."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x) + x))


def test_unresolvable_coupling_is_skipped_with_a_reason():
    torch.manual_seed(0)
    model, inputs = InputResidual().eval(), (torch.randn(2, 3, 8, 8),)
    result = prune(export(model, inputs), inputs, amount=0.5)
    row = rows_by_layer(result)["conv"]
    assert row["out_after"] == 3 and row["status"].startswith("skipped")
    assert "no prunable layer produces" in row["status"] and "x" in row["status"]
    assert not result.changed
    torch.testing.assert_close(result.graph(*inputs), model(*inputs), rtol=0, atol=0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["mlp", "cnn"]), amount=st.floats(0, 0.95), round_to=st.sampled_from([1, 2, 4]),
       method=st.sampled_from([("l1_structured", 1), ("l2_structured", 2)]))
def test_property_random_amounts(name, amount, round_to, method):
    model, inputs, gm = captured(name)
    result = prune(gm, inputs, method=method[0], amount=amount, round_to=round_to)
    result.graph.graph.lint()
    reference = masked_reference(model, name, amount, method[1], round_to)
    torch.testing.assert_close(result.graph(*inputs), reference(*inputs), rtol=1e-4, atol=1e-5)
    assert result.stats["params"]["after"] == float_elements(result.graph)
    assert result.stats["params"]["after"] <= result.stats["params"]["before"]
    assert all(r["out_after"] >= 1 for r in result.stats["layers"])


@pytest.fixture(scope="module")
def compiled_cnn():
    """The 50%-pruned CNN compiled by TVM (built once for the module)."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from accelc.backends.tvm.lower import relax as lower
    model, inputs, gm = captured("cnn")
    result = prune(gm, inputs, amount=0.5)
    target = tvm.target.Target({"kind": "llvm"})
    lowered = lower.to_relax({None: lower.export_program(result.graph, inputs, None)}, target)
    vm = VirtualMachine(lower.compile_module(lowered, target), tvm.cpu())
    params = vm["transform_params"]([tvm.runtime.tensor(v) for v in lowered.params.values()])

    def run(x):
        out = vm["main"](tvm.runtime.tensor(x), *params)
        return (out if hasattr(out, "numpy") else out[0]).numpy()  # one output may come unwrapped
    return result, lowered, run, inputs


def test_pruned_cnn_compiles_with_tvm_and_matches(compiled_cnn):
    result, lowered, run, inputs = compiled_cnn
    got = run(inputs[0].numpy())
    np.testing.assert_allclose(got, result.graph(*inputs).detach().numpy(), rtol=1e-4, atol=1e-5)
    # the artifact's parameters are exactly what the report counts
    assert sum(v.size for v in lowered.params.values()) == result.stats["params"]["after"]


RECIPE = """\
version: 1
name: t
model:
  entrypoint: m:build
  inputs:
    - {name: x, shape: [batch, 4]}
passes:
  - kind: prune
    method: l1_structured
    amount: 1.0
  - {kind: prune, method: l2_structured, layers: {"a.*": -0.5}}
  - {kind: prune, method: l2_structured}
  - {kind: prune, method: magnitude, amount: 0.5, round_to: 8}
"""


def test_bad_configs_are_located_recipe_errors(tmp_path):
    from accelc.config import recipe as recipe_mod
    from accelc.errors import RecipeError
    (tmp_path / "r.yaml").write_text(RECIPE)
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(tmp_path / "r.yaml")
    found = [(p.location.rsplit("/", 1)[-1], p.field, p.message) for p in info.value.problems]
    assert found[0][:2] == ("r.yaml:10:13", "passes.0.amount") and "less than 1" in found[0][2]
    assert found[1][:2] == ("r.yaml:11:58", "passes.1.layers.a.*") and "greater than or equal to 0" in found[1][2]
    assert found[2][1] == "passes.2" and "give 'amount'" in found[2][2]
    assert found[3][1] == "passes.3" and "round_to applies to the structured methods only" in found[3][2]
