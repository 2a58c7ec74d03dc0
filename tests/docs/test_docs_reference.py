"""docs/gen_reference.py: the recipe reference covers every field of the schema's models (checked
against the pydantic models themselves), the error reference every code of a registry (a stand-in
registry in a temporary module, so the test does not depend on the real one's contents), and
--check fails exactly when a written page differs from what the code says."""
from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
import typing

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tests.fixtures.helpers import ROOT


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def _models(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (through Optional, list, dict, Annotated, Union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _all_models() -> list[type[BaseModel]]:
    from accelc.config.recipe import Recipe
    found, queue = [], [Recipe]
    while queue:
        model = queue.pop()
        if model not in found:
            found.append(model)
            queue += [m for info in model.model_fields.values() for m in _models(info.annotation)]
    return found


def _section(page: str, model: type[BaseModel]) -> str:
    """The section whose rows are exactly `model`'s fields (a pass config's: under its kind)."""
    names = list(model.model_fields)
    kind = model.model_fields.get("kind")
    heading = f"[kind={typing.get_args(kind.annotation)[0]}]`" if kind is not None else ""
    for block in page.split("\n## ")[1:]:
        rows = [line for line in block.splitlines() if line.startswith("| `")]
        if [row.split("`")[1] for row in rows] == names and heading in block.splitlines()[0]:
            return block
    raise AssertionError(f"no section lists exactly the fields of {model.__name__}: {names}")


def _row(section: str, name: str) -> list[str]:
    line = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_every_field_of_every_recipe_model_has_a_row_with_its_description_and_default():
    from accelc.config.recipe import json_schema
    page = gen.render_recipe(json_schema())
    models = _all_models()
    assert len(models) >= 15  # recipe sections and every pass kind's config
    for model in models:
        section = _section(page, model)
        for name, info in model.model_fields.items():
            _, _, default, description = _row(section, name)
            assert description == gen._cell(info.description or ""), (model.__name__, name)
            if info.is_required():
                assert default == "*required*", (model.__name__, name)
            elif info.default is not PydanticUndefined:
                assert default == f"`{json.dumps(info.default)}`", (model.__name__, name, default)
            else:  # a default_factory: the page shows what it makes, or says it is computed
                made = info.default_factory()
                expected = {list: "`[]`", dict: "`{}`"}.get(type(made)) if made in ([], {}) else None
                if isinstance(made, BaseModel):
                    expected = "its fields' defaults"
                assert default == (expected or "computed (see description)"), (model.__name__, name, default)


def test_types_bounds_and_links_are_rendered_from_the_schema():
    from accelc.config.recipe import json_schema
    page = gen.render_recipe(json_schema())
    assert "| `batch_size` | integer (≥ 1, ≤ 65 536) | `64` |" in page
    assert "| `amount` | number (≥ 0, < 1) or null | `null` |" in page
    assert "| `inputs` | list of [`model.inputs[]`](#modelinputs) (at least 1) | *required* |" in page
    # a pattern with a pipe cannot be a code span inside a table cell: character references instead
    tracker = _row(page, "tracker")[1]
    assert "|" not in tracker and "&#124;" in tracker and "<code>" in tracker
    # every link on the page points at a heading of the page
    anchors = {gen._slug(line[3:]) for line in page.splitlines() if line.startswith("## ")}
    links = {part.split(")")[0] for part in page.split("](#")[1:]}
    assert links and links <= anchors, links - anchors


STAND_IN = textwrap.dedent('''
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Code:
        code: str
        error: str
        summary: str
        remedy: str
        anchor: str

    class FooError(Exception):
        """Foo went wrong.

        More detail that the page leaves out."""
        exit_code = 2

    class BarError(Exception):
        """The bar does not match."""
        exit_code = 1

    CODES = {c.code: c for c in [
        Code("E901", "FooError", "the foo | is missing", "add a foo", "docs/reference/errors.md#e901"),
        Code("E950", "BarError", "the bar is crooked", "straighten the bar", "e950"),
        Code("E900", "FooError", "foo base", "read the message", "custom-anchor"),
    ]}
    ''')


@pytest.fixture
def registry(tmp_path, monkeypatch):
    (tmp_path / "standin_errors.py").write_text(STAND_IN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import standin_errors
    yield standin_errors
    sys.modules.pop("standin_errors", None)


def test_error_page_lists_every_code_under_its_class_with_cause_remedy_and_exit_code(registry):
    classes = {"FooError": registry.FooError, "BarError": registry.BarError}
    page = gen.render_errors(registry.CODES, classes)
    sections = page.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["FooError", "BarError"]  # in code order, each once
    foo, bar = sections
    assert "Foo went wrong. Exit code 2." in foo and "More detail" not in foo
    assert "The bar does not match. Exit code 1." in bar
    assert foo.index("### E900 { #custom-anchor }") < foo.index("### E901\n")  # sorted; a custom id only when needed
    assert "**Cause:** the foo \\| is missing" in foo and "**What to do:** add a foo" in foo
    assert "### E950\n" in bar and "**What to do:** straighten the bar" in bar
    assert "| [E900](#custom-anchor) | `FooError` | foo base |" in page
    assert "| [E950](#e950) | `BarError` | the bar is crooked |" in page


def test_check_passes_on_fresh_pages_and_fails_on_edited_or_missing_ones(tmp_path, monkeypatch, capsys, registry):
    import accelc.errors
    monkeypatch.setattr(gen, "DOCS", tmp_path)
    monkeypatch.setattr(accelc.errors, "CODES", registry.CODES, raising=False)
    assert gen.main([]) == 0
    errors_page = tmp_path / "reference" / "errors.md"
    assert "E950" in errors_page.read_text() and (tmp_path / "reference" / "recipe.md").is_file()
    assert gen.main(["--check"]) == 0
    errors_page.write_text(errors_page.read_text().replace("straighten the bar", "bend the bar"))
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "-**What to do:** bend the bar" in err and "+**What to do:** straighten the bar" in err
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    (tmp_path / "reference" / "recipe.md").unlink()
    assert gen.main(["--check"]) == 1


def test_no_registry_is_a_clear_exit_not_a_traceback(monkeypatch, tmp_path):
    import accelc.errors
    monkeypatch.setattr(gen, "DOCS", tmp_path)
    monkeypatch.delattr(accelc.errors, "CODES", raising=False)
    with pytest.raises(SystemExit, match="no CODES registry"):
        gen.main([])
    assert not (tmp_path / "reference").exists()


def test_committed_pages_name_their_generator():
    for name in ("recipe.md", "errors.md"):
        first = (ROOT / "docs" / "reference" / name).read_text().splitlines()[0]
        assert first.startswith("<!-- Generated by docs/gen_reference.py"), name
