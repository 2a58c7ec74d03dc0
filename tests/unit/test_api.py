"""The public API: `accelc.build` takes a recipe file or a Recipe object and a target name or a
Target object, gives the same artifact either way, reports through `logging` and prints nothing."""
from __future__ import annotations

import logging
import typing

import numpy as np
import pytest
import torch
import yaml

import accelc
from accelc.config import targets
from accelc.errors import ModelError, TargetError
from tests.fixtures.helpers import TINY_RECIPE, Recording, make_repo, write_recipe
from tests.fixtures.models import tiny_mlp


def test_the_public_names_resolve_and_are_typed():
    for name in accelc.__all__:
        assert getattr(accelc, name) is not None, name
    hints = typing.get_type_hints(accelc.build)
    assert {"recipe", "target", "output", "cache", "logger", "return"} <= set(hints)
    assert hints["return"] is accelc.BuildResult
    assert {"recipe", "target", "resume", "logger", "return"} <= set(typing.get_type_hints(accelc.tune))


@pytest.fixture(scope="module")
def three_builds(tmp_path_factory):
    """The tiny MLP built from its YAML file, from a Recipe object, and with a Target object; the
    Recipe-object build also records what the library logs, and what it printed (nothing)."""
    repo = make_repo(tmp_path_factory.mktemp("api"))
    path = write_recipe(repo, TINY_RECIPE)
    recipe = accelc.Recipe.model_validate(yaml.safe_load(TINY_RECIPE))
    from_file = accelc.build(path, output=repo / "from-file")
    log = Recording()
    from_object = accelc.build(recipe, output=repo / "from-object", logger=log.logger)
    with_target = accelc.build(path, targets.resolve("x86", repo), output=repo / "with-target")
    return from_file, from_object, with_target, log


def test_a_recipe_object_and_a_target_object_build_what_the_file_builds(three_builds):
    from_file, from_object, with_target, _ = three_builds
    model = tiny_mlp().eval()
    x = np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32)  # 3: not a built batch size
    with torch.no_grad():
        eager = model(torch.from_numpy(x)).numpy()
    outputs = []
    for result in (from_file, from_object, with_target):
        assert result.report["status"] == "passed" and result.manifest.verified is True
        assert result.manifest.target.name == "x86"
        (out,) = accelc.load(result.output).predict(x)
        np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-6)
        outputs.append(out)
    np.testing.assert_array_equal(outputs[0], outputs[1])  # the same kernels: the same bits
    np.testing.assert_array_equal(outputs[0], outputs[2])


def test_a_recipe_object_is_stored_so_that_accelc_verify_can_rerun_it(three_builds):
    from accelc.verify.artifact_check import reverify
    _, from_object, _, _ = three_builds
    stored = from_object.manifest.recipe
    assert stored.path.endswith("<recipe tiny>")
    assert accelc.Recipe.model_validate(yaml.safe_load(stored.text)) == \
        accelc.Recipe.model_validate(yaml.safe_load(TINY_RECIPE))
    assert "threads" not in stored.text  # a default computed on this machine stays a default
    assert reverify(from_object.output, samples=1)["status"] == "passed"


def test_the_build_logs_progress_to_the_given_logger(three_builds):
    *_, log = three_builds
    stages = [r.getMessage() for r in log.records if r.getMessage().startswith("[")]
    assert stages[0] == "[1/6] loading recipe and target ..." and len(stages) == 6
    assert all(r.levelno == logging.INFO for r in log.records if r.getMessage() in stages)
    assert any("PASSED" in line for line in log.lines) and log.lines[-1].startswith("artifact: ")


def test_a_library_build_prints_nothing_and_logs_under_accelc(tmp_path, capsys, caplog):
    """Without a logger, records go to the module loggers under `accelc`; an application that
    configured no logging sees nothing on stdout or stderr, warnings included."""
    path = write_recipe(make_repo(tmp_path), TINY_RECIPE)
    caplog.set_level(logging.DEBUG, logger="accelc")
    result = accelc.build(path, output=tmp_path / "out")
    assert result.report["status"] == "passed"
    assert capsys.readouterr() == ("", "")
    progress = [r for r in caplog.records if r.name == "accelc.compile" and r.levelno == logging.INFO]
    assert [r.getMessage() for r in progress][:2] == ["[1/6] loading recipe and target ...",
                                                     "[2/6] capturing the model with torch.export ..."]
    logging.getLogger("accelc.compile").warning("a planted warning")  # no last-resort handler prints it
    assert capsys.readouterr() == ("", "")


def test_problems_in_a_recipe_object_are_located_by_field_path(tmp_path):
    data = yaml.safe_load(TINY_RECIPE)
    data["model"]["inputs"][0]["dtype"] = "bfloat16"
    with pytest.raises(TargetError) as info:  # aarch64 has no bfloat16: refused before any work
        accelc.build(accelc.Recipe.model_validate(data), "aarch64", output=tmp_path / "out")
    assert info.value.code == "E202"
    assert info.value.problems[0].location == "<recipe tiny>:model.inputs.0.dtype"
    data = yaml.safe_load(TINY_RECIPE)
    data["model"]["entrypoint"] = "tests.fixtures.models:tiny_mpl"
    with pytest.raises(ModelError) as info:
        accelc.build(accelc.Recipe.model_validate(data), output=tmp_path / "out")
    assert info.value.code == "E300" and "did you mean 'tiny_mlp'" in info.value.format()
    assert info.value.problems[0].location == "<recipe tiny>:model.entrypoint"
    assert not (tmp_path / "out").exists()


def test_an_unknown_target_name_and_a_wrong_recipe_type(tmp_path):
    path = write_recipe(make_repo(tmp_path), TINY_RECIPE)
    with pytest.raises(TargetError) as info:
        accelc.build(path, "x68", output=tmp_path / "out")
    assert info.value.code == "E200" and "did you mean 'x86'" in info.value.format()
    with pytest.raises(TypeError, match="a path or an accelc.Recipe"):
        accelc.build({"name": "tiny"}, output=tmp_path / "out")
