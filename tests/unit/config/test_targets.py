"""targets: the packaged target files, aliases, repository overrides, and targets a recipe cannot use."""
from __future__ import annotations

import textwrap
from types import SimpleNamespace
from typing import Literal

import pytest

from accelc.config import recipe
from accelc.config import targets
from accelc.passes.configs.base import PassConfig
from accelc.errors import TargetError, ToolchainError
from tests.fixtures.helpers import TINY_RECIPE, assert_cli_user_error, at, cli, make_repo, write_recipe

LOCAL_TARGET = textwrap.dedent("""\
    name: lab-box
    aliases: [lab]
    description: the lab's build box
    tvm: {kind: llvm, mtriple: x86_64-linux-gnu}
    dtypes: [float32]
    """)


def test_packaged_targets_load():
    found = targets.load_all()
    assert {"x86", "x86-avx512", "aarch64", "cuda-sm80", "cuda-sm90"} <= set(found)
    x86 = found["x86"]
    assert x86.tvm["kind"] == "llvm" and x86.tvm["mcpu"] == "haswell" and {"avx2", "fma"} <= set(x86.cpu_features)
    assert found["aarch64"].cross_compiler and found["cuda-sm80"].device == "cuda"


@pytest.mark.parametrize("name, canonical", [
    ("x86", "x86"), ("x86_64", "x86"), ("amd64", "x86"), ("arm", "aarch64"), ("arm64", "aarch64"),
    ("cuda", "cuda-sm90"), ("a100", "cuda-sm80")])
def test_aliases_resolve(name, canonical):
    assert targets.resolve(name).name == canonical


def test_unknown_target_gets_did_you_mean():
    with pytest.raises(TargetError) as info:
        targets.resolve("x68", location="r.yaml:8:9")
    problem = info.value.problems[0]
    assert (problem.code, problem.field, problem.location) == ("E200", "target", "r.yaml:8:9")
    assert problem.hint == "did you mean 'x86'?"


def test_unknown_target_without_close_match_lists_targets():
    with pytest.raises(TargetError) as info:
        targets.resolve("quantum-computer")
    assert info.value.problems[0].hint.startswith("known targets: ")


def test_x86_runs_here_on_an_avx2_machine():
    from accelc.config import host_cpu as host
    ok, why = targets.resolve("x86").runs_here()
    assert ok == ({"avx2", "fma"} <= host.cpu_flags() and host.host_arch() == "x86_64"), why


def test_incompatible_dtype_is_located(tmp_path):
    text = TINY_RECIPE.replace("dtype: float32", "dtype: float64")
    loaded = recipe.load(write_recipe(tmp_path, text))
    with pytest.raises(TargetError) as info:
        targets.check_compatible(targets.resolve("aarch64"), loaded.recipe, loaded.where)
    problem = info.value.problems[0]
    assert (problem.code, problem.field) == ("E202", "model.inputs.0.dtype")
    assert problem.location == at(loaded.path, text, "float64")
    assert "float32" in problem.hint
    targets.check_compatible(targets.resolve("x86"), loaded.recipe, loaded.where)  # x86 has float64


def test_repository_targets_are_added_and_win(tmp_path):
    repo = make_repo(tmp_path)
    (repo / "targets").mkdir()
    (repo / "targets" / "lab.yaml").write_text(LOCAL_TARGET)
    (repo / "targets" / "x86.yaml").write_text(LOCAL_TARGET.replace("lab-box", "x86").replace("[lab]", "[]"))
    found = targets.load_all(repo)
    assert targets.resolve("lab", repo).name == "lab-box"
    assert found["x86"].description == "the lab's build box"  # the repository's file replaces the packaged one


def test_malformed_target_file_is_located(tmp_path):
    (tmp_path / "targets").mkdir()
    path = tmp_path / "targets" / "bad.yaml"
    text = LOCAL_TARGET.replace("dtypes: [float32]", "dtypes: float32\ndevice: tpu")
    path.write_text(text)
    with pytest.raises(TargetError) as info:
        targets.load_all(tmp_path)
    found = {(p.code, p.field, p.location) for p in info.value.problems}
    assert ("E201", "dtypes", at(path, text, "float32")) in found
    assert ("E201", "device", at(path, text, "tpu")) in found


def test_target_file_with_yaml_error_is_a_target_error(tmp_path):
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(TargetError) as info:
        targets.load_all(tmp_path)
    assert info.value.code == "E201" and info.value.problems[0].location.endswith("broken.yaml:2:1")


def test_alias_claimed_by_two_targets_is_an_error(tmp_path):
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "lab.yaml").write_text(LOCAL_TARGET.replace("[lab]", "[lab, arm]"))
    with pytest.raises(TargetError) as info:
        targets.load_all(tmp_path)
    assert info.value.code == "E201" and "'arm'" in info.value.problems[0].message


def test_target_dict_tvm_rejects_is_a_target_error(tmp_path):
    (tmp_path / "targets").mkdir()
    path = tmp_path / "targets" / "lab.yaml"
    path.write_text(LOCAL_TARGET.replace("{kind: llvm, mtriple: x86_64-linux-gnu}", "{kind: llvm, mcpu: 3}"))
    with pytest.raises(TargetError) as info:
        targets.resolve("lab-box", tmp_path).tvm_target()
    assert info.value.code == "E203" and info.value.problems[0].location == f"{path}:4:6"


def test_missing_cross_compiler_is_a_toolchain_error(tmp_path):
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "lab.yaml").write_text(
        LOCAL_TARGET + "cross_compiler: no-such-g++-xyz\ncross_compiler_package: g++-xyz\n")
    with pytest.raises(ToolchainError) as info:
        targets.resolve("lab", tmp_path).check_toolchain()
    assert info.value.code == "E501" and info.value.problems[0].hint == "apt-get install g++-xyz"


# ---- what a target asks of the passes: dtypes and the int8 policy --------------------------------

def test_every_target_with_int8_states_its_int8_policy():
    found = targets.load_all()
    for target in found.values():
        assert ("int8" in target.dtypes) == (target.int8 is not None), target.name
    # AVX2's pair multiply saturates at 16 bits: 7-bit activations; VNNI sums in int32: 8 bits
    assert found["x86"].int8.activation_bits == 7 and found["x86-avx512"].int8.activation_bits == 7
    assert found["x86-avx512-vnni"].int8.activation_bits == 8
    assert {t.int8.min_outputs for t in found.values() if t.int8} == {8}  # the old fixed default, everywhere


def test_int8_policy_never_asks_more_bits_than_the_kernel_is_exact_for():
    """The target file is the contract between the quantize pass and the backend's kernel table."""
    from accelc.backends.tvm.kernels import microkernels
    for target in targets.load_all().values():
        if target.int8 is not None:
            assert target.int8.activation_bits <= microkernels.activation_bits(target.tvm_target()), target.name


def test_malformed_int8_policy_is_located(tmp_path):
    (tmp_path / "targets").mkdir()
    path = tmp_path / "targets" / "lab.yaml"
    text = LOCAL_TARGET + "int8: {activation_bits: 6, min_outputs: 8, reason: lab kernel}\n"
    path.write_text(text)
    with pytest.raises(TargetError) as info:
        targets.load_all(tmp_path)
    problem = info.value.problems[0]
    assert (problem.code, problem.field, problem.location) == ("E201", "int8.activation_bits", at(path, text, "6,"))


class NeedsFloat64(PassConfig):
    """A pass config that says what it needs; `dtype` is a setting of its own, not a requirement."""

    kind: Literal["probe"] = "probe"
    dtype: str = "bfloat16"

    def required_dtypes(self) -> tuple[str, ...]:
        return ("float64",)


def test_check_compatible_asks_each_pass_config_for_its_dtypes():
    recipe_like = SimpleNamespace(model=SimpleNamespace(inputs=[]), passes=[NeedsFloat64()])
    with pytest.raises(TargetError) as info:
        targets.check_compatible(targets.resolve("aarch64"), recipe_like, lambda *path: f"at {path}")
    assert [(p.code, p.field, p.location) for p in info.value.problems] == [("E202", "passes.0", "at ('passes', 0)")]
    assert "pass 'probe' needs float64" in info.value.problems[0].message  # not its `dtype` field's bfloat16


@pytest.mark.parametrize("target, passes, field", [
    ("aarch64", "[{kind: quantize, dtype: bfloat16}]", "passes.0"),  # no bfloat16 on Arm
    ("x86", "[{kind: simplify}, {kind: quantize, mode: static, reduce_range: false}]", "passes.1.reduce_range"),
    ("x86-avx512", "[{kind: quantize, mode: dynamic, reduce_range: false}]", "passes.0.reduce_range"),
])
def test_pass_the_target_cannot_honour_is_located(tmp_path, target, passes, field):
    text = TINY_RECIPE + f"passes: {passes}\n"
    loaded = recipe.load(write_recipe(tmp_path, text))
    with pytest.raises(TargetError) as info:
        targets.check_compatible(targets.resolve(target), loaded.recipe, loaded.where)
    [problem] = info.value.problems
    assert (problem.code, problem.field) == ("E202", field)
    needle = "false" if field.endswith("reduce_range") else "{kind: quantize"
    assert problem.location == at(loaded.path, text, needle)


@pytest.mark.parametrize("target, passes", [
    ("x86-avx512-vnni", "[{kind: quantize, mode: static, reduce_range: false}]"),  # VNNI: 8 bits are exact
    ("aarch64", "[{kind: quantize, mode: dynamic, reduce_range: false}]"),  # int32 kernel: 8 bits are exact
    ("x86", "[{kind: quantize, mode: static, reduce_range: true}]"),  # 7 bits run everywhere
    ("x86", "[{kind: quantize, mode: weight_only, reduce_range: false}]"),  # float activations: no bits
    ("x86", "[{kind: quantize, mode: dynamic}]"),  # auto: the target's own policy
])
def test_passes_the_target_can_honour(tmp_path, target, passes):
    loaded = recipe.load(write_recipe(tmp_path, TINY_RECIPE + f"passes: {passes}\n"))
    targets.check_compatible(targets.resolve(target), loaded.recipe, loaded.where)


# ---- the same cases through the command line ------------------------------------------------

def test_cli_unknown_target_in_recipe(tmp_path, capsys):
    text = TINY_RECIPE.replace("target: x86", "target: x68")
    path = write_recipe(make_repo(tmp_path), text)
    err = assert_cli_user_error(["validate", path], capsys, "E200")
    assert at(path, text, "x68") in err and "did you mean 'x86'?" in err
    assert_cli_user_error(["build", path, "--output", tmp_path / "out"], capsys, "E200")
    assert not (tmp_path / "out").exists()


def test_cli_target_override(tmp_path, capsys):
    text = TINY_RECIPE.replace("target: x86", "target: x68").replace("dtype: float32", "dtype: float64")
    path = write_recipe(make_repo(tmp_path), text)
    rc, out, err = cli(["validate", path, "--target", "x86_64"], capsys)  # the override replaces the bad name
    assert (rc, err) == (0, "") and "ok" in out
    err = assert_cli_user_error(["validate", path, "--target", "arm"], capsys, "E202")
    assert at(path, text, "float64") in err
    err = assert_cli_user_error(["build", path, "--target", "arm", "--output", tmp_path / "out"], capsys, "E202")
    assert not (tmp_path / "out").exists()
    assert_cli_user_error(["validate", path, "--target", "nonesuch"], capsys, "E200")
