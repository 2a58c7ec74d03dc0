"""Coverage: every mainstream model family builds for x86 and verifies against eager PyTorch, in
float32 and in the int8 mode that applies to it, with no internal error at any batch list."""
from __future__ import annotations

import json

import pytest

from accelc import compile as compile_mod
from tests.fixtures.helpers import make_repo, write_recipe
from tests.models.families import FAMILIES

QUANTIZE = {"dynamic": "[{kind: quantize, mode: dynamic}]",
            "static": "[{kind: quantize, mode: static}]\ndata: {calibration: tests.models.families:images}"}


def recipe(family: str, batch: str, passes: str = "[]") -> str:
    source, inputs, _ = FAMILIES[family]
    model = f"  entrypoint: {source}" if isinstance(source, str) else \
        f"  huggingface: {json.dumps({**source, 'random_weights': True})}"
    lines = "\n".join(f"    - {spec}" for spec in inputs)
    return (f"version: 1\nname: {family}\nmodel:\n{model}\n  inputs:\n{lines}\n  batch: {batch}\n"
            f"passes: {passes}\ntarget: x86\nverify: {{samples: 2}}\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("families"))


def build(repo, text: str, tag: str, size: int):
    lines: list[str] = []
    built = compile_mod.build(write_recipe(repo, text, f"{tag}.yaml"), output=repo / tag, log=lines.append)
    assert built.report["status"] == "passed", "\n".join(lines)
    assert {row["batch"] for row in built.report["rows"]} == {size, size + 1}  # built, and padded or split
    return built, lines


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float32_builds_and_verifies(repo, family):
    built, _ = build(repo, recipe(family, "[2]"), f"{family}-fp32", 2)
    assert built.report["reference"] == "original model"
    source = FAMILIES[family][0]
    if not isinstance(source, str):  # named outputs of a Hugging Face model
        assert [o["name"] for o in built.manifest["outputs"]] == source["outputs"]
    if family in ("gpt2", "llama"):  # causal masks: (ids != pad).cumsum(-1) in torch's int64
        assert "integer_cumsum" in {r["repair"] for r in built.manifest["repairs"]}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_int8_builds_and_verifies_at_batch_one(repo, family):
    mode = FAMILIES[family][2]
    built, _ = build(repo, recipe(family, "[1]", QUANTIZE[mode]), f"{family}-{mode}", 1)
    report = built.manifest["passes"][0]
    assert report["kind"] == "quantize" and report["mode"] == mode
    assert any(row["dtype"] == "int8" for row in report["layers"]), report["layers"]
    # every layer left in float32 says why (depthwise/grouped convolutions, narrow layers, fallback)
    assert all("reason" in row for row in report["layers"] if row["dtype"] == "float32")
