"""Checks every registered pass must pass (after sklearn's estimator checks): its config is
documented and round-trips through YAML, running it never mutates the input graph, a no-op
configuration is the identity, value-preserving passes match eager PyTorch, and passes that
should be idempotent are. A new pass kind needs an entry in EXAMPLES."""
from __future__ import annotations

import pytest
import torch
import yaml

from accelc.passes import PASSES, PassContext, run_passes

from tests.fixtures.pass_models import captured

# kind -> (config that must leave outputs unchanged, "exact" | "close" tolerance, idempotent?)
EXAMPLES = {
    "prune": ({"kind": "prune", "method": "l1_structured", "amount": 0.0}, "exact", True),
    "fold_batchnorm": ({"kind": "fold_batchnorm"}, "close", True),
    "simplify": ({"kind": "simplify"}, "exact", True),
    "merge_linear": ({"kind": "merge_linear"}, "close", True),
    "quantize": ({"kind": "quantize", "mode": "dynamic", "skip": ["*"]}, "exact", True),
}
# configs that do change the graph: they must still not mutate their input
CHANGING = [{"kind": "prune", "method": "l2_structured", "amount": 0.5, "round_to": 2},
            {"kind": "prune", "method": "magnitude", "amount": 0.5, "skip": ["head"]},
            {"kind": "quantize", "mode": "dynamic"}]
MODELS = ("mlp", "cnn", "encoder")


def example(kind: str):
    if kind not in EXAMPLES:
        pytest.fail(f"pass kind '{kind}' has no entry in EXAMPLES of {__file__}: add a no-op config for it")
    data, tolerance, idempotent = EXAMPLES[kind]
    return PASSES[kind].Config.model_validate(data), tolerance, idempotent


def snapshot(gm) -> tuple:
    return gm.code, {k: v.detach().clone() for k, v in gm.state_dict().items()}


def assert_unchanged(gm, before: tuple) -> None:
    code, state = before
    assert gm.code == code
    now = gm.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(now[key], value), key


@pytest.mark.parametrize("kind", sorted(PASSES))
def test_config_is_documented_strict_and_round_trips_through_yaml(kind):
    config, _, _ = example(kind)
    cls = PASSES[kind].Config
    assert cls.model_config.get("extra") == "forbid"
    assert all(field.description for field in cls.model_fields.values()), kind
    text = yaml.safe_dump(config.model_dump(mode="json"))
    assert cls.model_validate(yaml.safe_load(text)) == config
    with pytest.raises(Exception):
        cls.model_validate({**config.model_dump(mode="json"), "no_such_key": 1})


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", sorted(PASSES))
def test_noop_config_identity_and_input_untouched(kind, name):
    config, tolerance, idempotent = example(kind)
    model, inputs, gm = captured(name)
    before = snapshot(gm)
    ctx = PassContext(inputs, None)
    graph, reports = run_passes(gm, [config], ctx)
    assert_unchanged(gm, before)
    graph.graph.lint()
    expected = model(*inputs)
    if tolerance == "exact":
        torch.testing.assert_close(graph(*inputs), expected, rtol=0, atol=0)
    else:
        torch.testing.assert_close(graph(*inputs), expected, rtol=1e-4, atol=1e-5)
    assert reports[0]["after"]["params"] <= reports[0]["before"]["params"]
    if idempotent:
        _, again = run_passes(graph, [config], ctx)
        assert not again[0]["changed"], f"{kind} is not idempotent on {name}"


@pytest.mark.parametrize("data", CHANGING, ids=lambda d: d.get("method") or d["kind"])
@pytest.mark.parametrize("name", MODELS)
def test_changing_pass_leaves_its_input_alone(data, name):
    config = PASSES[data["kind"]].Config.model_validate(data)
    model, inputs, gm = captured(name)
    before = snapshot(gm)
    graph, reports = run_passes(gm, [config], PassContext(inputs, None))
    assert reports[0]["changed"]
    assert_unchanged(gm, before)
    torch.testing.assert_close(gm(*inputs), model(*inputs), rtol=0, atol=0)
