"""ARM targets: cross-compiled with aarch64-linux-gnu-g++ and verified under qemu-user against the
eager PyTorch model (accelc.runtime itself runs inside an arm64 Debian root).

Needs the cross compiler, qemu-user-static and the emulation root (`python -m accelc.emulate setup`);
locally those tests skip when they are missing, in CI (CI=true, .ci/run installs them) they fail.
"""
from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from accelc import emulate
from accelc.emulate import root as root_mod
from accelc.config import targets
from accelc.compile import build
from accelc.errors import ArtifactError
from tests.fixtures.helpers import ROOT, TINY_RECIPE, cli, make_repo, require, write_recipe

pytestmark = pytest.mark.arm

EM_AARCH64 = 183  # ELF e_machine of 64-bit Arm


def arm_spec(name: str = "arm"):
    return targets.resolve(name, ROOT)


@pytest.fixture(scope="module")
def toolchain():
    spec = arm_spec()
    require(shutil.which(spec.cross_compiler) is not None, f"{spec.cross_compiler} missing "
            f"(apt-get install {spec.cross_compiler_package})")
    return spec


@pytest.fixture(scope="module")
def emulation(toolchain):
    reason = emulate.unavailable(toolchain)
    require(reason is None, str(reason))
    return toolchain


def build_quiet(recipe, target, output):
    return build(recipe, target=target, output=output)


@pytest.fixture(scope="module")
def edu_churn(emulation, tmp_path_factory):
    return build_quiet(ROOT / "recipes/edu_churn.yaml", "arm", tmp_path_factory.mktemp("arm") / "edu")


@pytest.fixture(scope="module")
def resnet(emulation, tmp_path_factory):
    return build_quiet(ROOT / "recipes/resnet_small.yaml", "neoverse-n1", tmp_path_factory.mktemp("arm") / "cnn")


@pytest.fixture(scope="module")
def tiny_arm(toolchain, tmp_path_factory):
    """The tiny MLP cross-compiled with no emulation root: built, not verified."""
    repo = make_repo(tmp_path_factory.mktemp("tiny_repo"))
    recipe = write_recipe(repo, TINY_RECIPE.replace("target: x86", "target: arm"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ACCELC_EMULATION_ROOT", str(repo / "no-root-here"))
        return recipe, build_quiet(recipe, None, repo / "out")


def elf_machine(path: Path) -> int:
    data = path.read_bytes()[:20]
    assert data[:4] == b"\x7fELF"
    return struct.unpack_from("<H", data, 18)[0]


def test_edu_churn_is_an_arm_library_verified_under_qemu(edu_churn):
    report = edu_churn.report
    assert report["status"] == "passed", report
    assert "qemu-aarch64-static" in report["runner"]
    assert {row["batch"] for row in report["rows"]} == {1, 64, 1024, 2}
    assert all(row["passed"] and row["elements"] > 0 for row in report["rows"])
    assert report["metric"]["passed"] and abs(report["metric"]["original"] - report["metric"]["compiled"]) < 1e-4
    assert elf_machine(edu_churn.output / "lib.so") == EM_AARCH64
    manifest = json.loads((edu_churn.output / "manifest.json").read_text())
    assert manifest["verified"] and manifest["target"]["arch"] == "aarch64"


def test_cnn_for_a_named_core_is_verified_under_qemu(resnet):
    assert resnet.report["status"] == "passed", resnet.report
    assert {row["batch"] for row in resnet.report["rows"]} == {1, 8, 2}
    assert max(row["max_abs"] for row in resnet.report["rows"]) < 1e-4
    assert elf_machine(resnet.output / "lib.so") == EM_AARCH64
    assert resnet.manifest.target.name == "aarch64-neoverse-n1"


def test_emulated_predictor_matches_torch_and_reports_runtime_errors(emulation, tiny_arm):
    import torch

    from tests.fixtures.models import tiny_mlp
    _, built = tiny_arm
    x = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)  # 3: padded onto the built size 4
    with emulate.EmulatedPredictor(built.output, emulation) as predictor:
        (got,) = predictor.predict(x)
        with torch.no_grad():
            want = tiny_mlp()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        with pytest.raises(ArtifactError) as info:  # the runtime's own input check, run in the emulator
            predictor.predict(x.astype(np.float64))
    assert info.value.code == "E707" and "E803" in str(info.value)


def test_without_an_emulation_root_the_build_succeeds_unverified_with_the_setup_command(tiny_arm):
    _, built = tiny_arm
    assert built.report["status"] == "skipped"
    assert emulate.SETUP_COMMAND in built.report["reason"] and "aarch64" in built.report["reason"]
    assert built.manifest.verified is False
    assert elf_machine(built.output / "lib.so") == EM_AARCH64


def test_cli_prints_why_verification_was_skipped(toolchain, tmp_path, monkeypatch, capsys):
    repo = make_repo(tmp_path / "repo")
    recipe = write_recipe(repo, TINY_RECIPE.replace("target: x86", "target: arm64"))
    monkeypatch.setenv("ACCELC_EMULATION_ROOT", str(tmp_path / "missing"))
    code, _, err = cli(["build", recipe, "--output", repo / "out"], capsys)
    assert code == 0
    assert "verification skipped" in err and emulate.SETUP_COMMAND in err and "warning: artifact:" in err
    assert "NOT verified" in err


def test_a_broken_root_skips_verification_and_says_how_to_rebuild_it(toolchain, tmp_path, monkeypatch):
    root = tmp_path / "broken"
    root.mkdir()
    (root / root_mod.MARKER).write_text(json.dumps({"pins": root_mod.pins()}))  # looks ready, holds nothing
    monkeypatch.setenv("ACCELC_EMULATION_ROOT", str(root))
    require(shutil.which(toolchain.emulator) is not None, "qemu-user-static missing")
    assert emulate.unavailable(toolchain) is None
    repo = make_repo(tmp_path / "repo")
    recipe = write_recipe(repo, TINY_RECIPE.replace("target: x86", "target: arm"))
    built = build_quiet(recipe, None, repo / "out")
    assert built.report["status"] == "skipped" and "--force" in built.report["reason"]
    assert "no python3" in built.report["reason"]


def test_unavailable_names_the_missing_piece(tmp_path, monkeypatch):
    spec = arm_spec()
    missing_emulator = spec.model_copy(update={"emulator": "qemu-nonexistent-static"})
    assert "apt-get install qemu-user-static" in emulate.unavailable(missing_emulator)
    assert emulate.unavailable(arm_spec("x86")) == "no emulator is known for this target"
    root = tmp_path / "stale"
    root.mkdir()
    (root / root_mod.MARKER).write_text(json.dumps({"pins": ["apache-tvm==0.1"]}))
    monkeypatch.setenv("ACCELC_EMULATION_ROOT", str(root))
    if shutil.which(spec.emulator):
        assert "--force" in emulate.unavailable(spec)


def test_missing_cross_compiler_is_a_toolchain_error_naming_the_package(monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = cli(["build", ROOT / "recipes/edu_churn.yaml", "--target", "arm"], capsys)
    assert code == 2 and "E501" in err and "apt-get install g++-aarch64-linux-gnu" in err


def test_doctor_reports_arm_verification(emulation, capsys):
    code, out, _ = cli(["doctor", "--json"], capsys)
    rows = {row["target"]: row for row in json.loads(out)}
    assert code == 0
    assert rows["aarch64"]["build"] and rows["aarch64"]["verify"] == "emulated"
    assert rows["x86"]["verify"] == "native"


def test_doctor_without_root_gives_the_setup_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELC_EMULATION_ROOT", str(tmp_path / "none"))
    code, out, _ = cli(["doctor"], capsys)
    assert code == 0 and "accelc doctor --setup-arm" in out and emulate.SETUP_COMMAND in out


def test_the_emulated_runtime_modules_import_neither_torch_nor_the_compiler():
    """What is copied into the emulator must run there: stdlib + numpy + tvm + the copied files only."""
    import ast
    from accelc.emulate.predictor import GUEST_FILES
    allowed = {"numpy", "tvm", "tvm_ffi"}
    for name in GUEST_FILES:
        tree = ast.parse((ROOT / "accelc" / name).read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)  # never run: for type checkers
                       and getattr(node.test, "id", None) == "TYPE_CHECKING" for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in typing_only:
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module in ("accelc", "accelc.emulate"):
                    modules = [f"{node.module}.{a.name}" for a in node.names]
                for module in modules:
                    if module.startswith("accelc"):  # ours: must be copied too
                        path = module.replace(".", "/")[len("accelc/"):]
                        assert module == "accelc" or f"{path}.py" in GUEST_FILES or f"{path}/__init__.py" in GUEST_FILES \
                            or module.rsplit(".", 1)[0].replace(".", "/")[len("accelc/"):] + ".py" in GUEST_FILES, (name, module)
                    else:
                        assert module.split(".")[0] in allowed or module.split(".")[0] in sys.stdlib_module_names, (name, module)
