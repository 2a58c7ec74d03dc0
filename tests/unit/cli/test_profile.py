"""accelc profile: each kernel's time, the rule the build recorded for it and the model modules and
source lines it computes, checked against the VM's own kernel calls and the model's source."""
from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest

from accelc.bench import kernels
from tests.fixtures.helpers import TINY_RECIPE, assert_cli_user_error, cli, make_repo, write_recipe
from tests.fixtures.models import TinyMLP

OUTSIDE = kernels.OUTSIDE


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    """TINY_RECIPE (fc1 -> ReLU -> fc2, batch 1 and 4), built once for this module."""
    from accelc.compile import build
    repo = make_repo(tmp_path_factory.mktemp("profile") / "repo")
    result = build(write_recipe(repo, TINY_RECIPE), output=repo / "build" / "tiny")
    assert result.report["status"] == "passed", result.report
    return result.output


def profile_json(capsys, *argv) -> dict:
    rc, out, err = cli(["profile", *argv, "--json", "--calls", "2"], capsys)
    assert rc == 0, err
    return json.loads(out)  # stdout holds the JSON and nothing else


def vm_kernel_calls(folder: Path, function: str, batch: int) -> list[str]:
    """The kernels one call runs, in order, straight from a Relax VM of our own (the reference)."""
    import numpy as np
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from accelc.artifact.store import LIBRARY, PARAMS, load_manifest
    manifest = load_manifest(folder)
    vm = VirtualMachine(tvm.runtime.load_module(str(folder / LIBRARY)), tvm.cpu())
    params = tvm.runtime.load_param_dict((folder / PARAMS).read_bytes())
    weights = list(vm["transform_params"]([tvm.runtime.tensor(params[n].numpy()) for n in manifest.params]))
    seen: list[str] = []
    vm.set_instrument(lambda func, symbol, before, *_: seen.append(str(symbol)) if before else None)
    vm[function](tvm.runtime.tensor(np.ones((batch, 4), np.float32)), *weights)
    return [s for s in seen if not s.startswith("vm.builtin.")]


@pytest.mark.parametrize("batch", [1, 4])
def test_every_kernel_the_vm_calls_appears_once_and_the_shares_add_up(mlp, capsys, batch):
    result = profile_json(capsys, mlp, "--batch", batch)
    rows = [r for r in result["rows"] if r["kernel"] != OUTSIDE]
    called = vm_kernel_calls(mlp, result["function"], batch)
    assert sorted(r["kernel"] for r in rows) == sorted(set(called))  # each once
    assert {r["kernel"]: r["calls"] for r in rows} == {k: called.count(k) for k in set(called)}
    assert result["rows"][-1]["kernel"] == OUTSIDE
    assert sum(r["share"] for r in result["rows"]) == pytest.approx(100, abs=0.5)
    assert all(r["ms"] >= 0 for r in result["rows"]) and result["call_ms"] > 0


def test_each_linear_gemm_is_mapped_to_its_module_rule_and_line(mlp, capsys):
    result = profile_json(capsys, mlp)
    lines, first = inspect.getsourcelines(TinyMLP.forward)
    forward = next(first + i for i, line in enumerate(lines) if "self.fc2(" in line)  # where both layers run
    by_module = {tuple(r["modules"]): r for r in result["rows"] if r["kernel"] != OUTSIDE}
    for layer in ("fc1", "fc2"):
        row = by_module[(layer,)]
        assert row["rule"] == "Matmul" and "gemm" in row["tags"], row
        assert row["sources"] == [f"models.py:{forward}"], row
    assert result["recorded"] is True


def test_the_manifest_names_the_nodes_fused_into_each_kernel(mlp):
    from accelc.artifact.store import load_manifest
    recorded = load_manifest(mlp).kernels
    fc1 = [k for k in recorded if k.modules == ("fc1",) and "gemm" in k.tags]
    # the ReLU is fused into fc1's GEMM as the kernel's output: found again after FuseOps renamed it
    assert fc1 and all("relu.default" in k.ops for k in fc1), fc1


def test_the_table_shows_rules_modules_and_the_rest_of_the_call(mlp, capsys):
    rc, out, err = cli(["profile", mlp, "--calls", "2", "--top", "1"], capsys)
    assert rc == 0, err
    assert "Matmul" in out and "fc" in out and "models.py:" in out
    assert "1 other kernels" in out and OUTSIDE in out and "by rule:" in out


def test_png_is_written(mlp, capsys, tmp_path):
    chart = tmp_path / "profile.png"
    rc, out, err = cli(["profile", mlp, "--calls", "2", "--png", chart], capsys)
    assert rc == 0, err
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_artifact_built_before_kernels_were_recorded_profiles_with_dashes(mlp, capsys, tmp_path):
    old = Path(shutil.copytree(mlp, tmp_path / "old"))
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["kernels"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    result = profile_json(capsys, old)
    rows = [r for r in result["rows"] if r["kernel"] != OUTSIDE]
    assert rows and all(r["modules"] == [] and r["rule"] == "-" for r in rows)
    assert result["recorded"] is False
    rc, out, _ = cli(["profile", old, "--calls", "2"], capsys)
    assert rc == 0 and "rebuild it" in out
    table = [line.split() for line in out.splitlines() if line.lstrip().startswith(tuple("0123456789"))]
    assert table and all("-" in cells for cells in table)


def test_a_batch_size_that_was_not_built_is_a_coded_error(mlp, capsys):
    err = assert_cli_user_error(["profile", mlp, "--batch", "3"], capsys, "E804")
    assert "1, 4" in err


def test_a_missing_artifact_is_a_coded_error(capsys, tmp_path):
    assert_cli_user_error(["profile", tmp_path / "nothing"], capsys, "E700")


@pytest.mark.parametrize("paths, expected", [
    ([], "-"),
    (["fc1"], "fc1"),
    ([f"encoder.layer.{i}.output.dense" for i in range(12)], "encoder.layer.{0-11}.output.dense"),
    (["blocks.0.conv", "blocks.2.conv", "head"], "blocks.{0,2}.conv, head"),
    (["s.0.b.0.c", "s.1.b.1.c"], "s.0.b.0.c, s.1.b.1.c"),  # not every combination: listed as they are
    ([f"layer.{i}.attn.{p}" for i in (0, 1) for p in ("query", "key")], "layer.{0-1}.attn.{query,key}"),
])
def test_module_paths_are_summarised_without_claiming_more(paths, expected):
    assert kernels.summarize(paths) == expected
