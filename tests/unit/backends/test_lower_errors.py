"""An op TVM's importer cannot take is one UnsupportedOpError naming the node and the user's
source line, before any TVM traceback, and the CLI reports it as a user error."""
from __future__ import annotations

import inspect
import textwrap

import pytest

from accelc.compile import build
from accelc.errors import UnsupportedOpError
from tests.fixtures import models
from tests.fixtures.helpers import assert_cli_user_error, make_repo, write_recipe

RECIPE = textwrap.dedent("""\
    version: 1
    name: unsupported
    model:
      entrypoint: tests.fixtures.models:unsupported
      inputs:
        - {name: x, shape: [batch, 4], dtype: float32}
      batch: [2]
    """)


def erfinv_line() -> str:
    """'models.py:N' where the fixture calls erfinv: computed from the source, not hard-coded."""
    lines, start = inspect.getsourcelines(models.Unsupported.forward)
    offset = next(i for i, line in enumerate(lines) if "erfinv" in line)
    return f"models.py:{start + offset}"


def test_the_fixture_op_really_has_no_converter():
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter
    known = set(ExportedProgramImporter().convert_map)
    assert "erfinv.default" not in known and "tanh.default" in known


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("unsupported"))
    write_recipe(repo, RECIPE)
    return repo


def test_unsupported_op_lists_node_and_source_line(repo):
    with pytest.raises(UnsupportedOpError) as info:
        build(repo / "recipe.yaml", output=repo / "out")
    exc = info.value
    assert exc.code == "E400"
    located = [p for p in exc.problems if p.location]
    assert len(located) == 1  # tanh, mul and add convert; only erfinv is reported
    assert "erfinv" in located[0].message
    assert located[0].location.startswith("node erfinv") and located[0].location.endswith(f"at {erfinv_line()}")
    assert any("custom_convert_map" in p.message for p in exc.problems)
    assert not (repo / "out").exists()


def test_unsupported_op_on_the_command_line(repo, capsys):
    err = assert_cli_user_error(["build", repo / "recipe.yaml", "--output", repo / "out"], capsys, "E400")
    assert f"node erfinv at {erfinv_line()}" in err
    assert not (repo / "out").exists()


def test_an_op_inside_a_submodule_is_named_with_its_module_path(repo):
    path = write_recipe(repo, RECIPE.replace("models:unsupported", "models:nested_unsupported"), "nested.yaml")
    with pytest.raises(UnsupportedOpError) as info:
        build(path, output=repo / "nested")
    located = [p for p in info.value.problems if p.location]
    assert [p.location for p in located] == [f"node erfinv in encoder.1 at {erfinv_line()}"]
    assert "erfinv" in located[0].message
