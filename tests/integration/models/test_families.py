"""Coverage: every mainstream model family builds for x86 and verifies against eager PyTorch, in
float32 and in the int8 mode that applies to it, with no internal error at any batch list."""
from __future__ import annotations

import pytest

from accelc import compile as compile_mod, emulate
from accelc.config import targets
from tests.fixtures.helpers import ROOT, Recording, make_repo, require, write_recipe
from tests.fixtures.families import FAMILIES, quantize, recipe


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("families"))


def build(repo, text: str, tag: str, size: int, target: str | None = None):
    log = Recording()
    built = compile_mod.build(write_recipe(repo, text, f"{tag}.yaml"), target=target, output=repo / tag,
                              logger=log.logger)
    assert built.report["status"] == "passed", "\n".join(log.lines)
    assert {row["batch"] for row in built.report["rows"]} == {size, size + 1}  # built, and padded or split
    return built, log.lines


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float32_builds_and_verifies(repo, family):
    built, _ = build(repo, recipe(family, "[2]"), f"{family}-fp32", 2)
    assert built.report["reference"] == "original model"
    source = FAMILIES[family][0]
    if not isinstance(source, str):  # named outputs of a Hugging Face model
        assert [o.name for o in built.manifest.outputs] == source["outputs"]
    if family in ("gpt2", "llama"):  # causal masks: (ids != pad).cumsum(-1) in torch's int64
        assert "integer_cumsum" in {r.repair for r in built.manifest.repairs}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_int8_builds_and_verifies_at_batch_one(repo, family):
    mode = FAMILIES[family][2]
    built, _ = build(repo, recipe(family, "[1]", quantize(family, mode)), f"{family}-{mode}", 1)
    report = built.manifest.passes[0]
    assert report.kind == "quantize" and report.stats["mode"] == mode
    assert any(row["dtype"] == "int8" for row in report.stats["layers"]), report.stats["layers"]
    if family == "gpt2":  # its Conv1D layers (addmm over [in, out] weights) as Linears: 4 per block + the head
        assert sum(row["dtype"] == "int8" for row in report.stats["layers"]) == 9, report.stats["layers"]
    # every layer left in float32 says why (depthwise/grouped convolutions, narrow layers, fallback)
    assert all("reason" in row for row in report.stats["layers"] if row["dtype"] == "float32")


@pytest.mark.slow
@pytest.mark.parametrize("family, mode", [("bert", "static"), ("resnet", "dynamic"), ("gpt2", "weight_only")])
def test_the_other_int8_modes_build_and_verify(repo, family, mode):
    """The modes beside each family's own (benchmarks/family_matrix.py builds every pair)."""
    built, _ = build(repo, recipe(family, "[2]", quantize(family, mode)), f"{family}-{mode}-other", 2)
    report = built.manifest.passes[0]
    assert report.stats["mode"] == mode
    assert any(row["dtype"] != "float32" for row in report.stats["layers"]), report.stats["layers"]


@pytest.mark.slow
@pytest.mark.arm
@pytest.mark.parametrize("family, passes", [("bert", "[]"), ("gpt2", "[]"), ("resnet", "[]"),
                                            ("bert", quantize("bert", "dynamic")),
                                            ("resnet", quantize("resnet", "static"))])
def test_arm_subset_verifies_under_emulation(repo, family, passes):
    """Cross-compiled for aarch64 and verified by accelc's runtime inside an arm64 root (qemu-user)."""
    reason = emulate.unavailable(targets.resolve("arm", ROOT))
    require(reason is None, str(reason))
    tag = f"{family}-arm-{'int8' if 'quantize' in passes else 'fp32'}"
    built, _ = build(repo, recipe(family, "[2]", passes), tag, 2, target="arm")
    assert "qemu" in built.report["runner"], built.report  # verified under emulation, not skipped
