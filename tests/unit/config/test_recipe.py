"""recipe: the schema, and every validation problem as `file:line:col field: message`, all at once."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from accelc.config import recipe
from accelc.errors import RecipeError, TargetError
from tests.fixtures.helpers import TINY_RECIPE, at, line_col, make_repo, scratch_dir, write_recipe


def problems_of(text: str, tmp_path: Path) -> tuple[Path, list]:
    path = write_recipe(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        recipe.load(path)
    return path, info.value.problems


def only(text: str, tmp_path: Path):
    path, problems = problems_of(text, tmp_path)
    assert len(problems) == 1, [p.format() for p in problems]
    return path, problems[0]


def test_valid_recipe_loads_with_defaults(tmp_path):
    repo = make_repo(tmp_path)
    loaded = recipe.load(write_recipe(repo, TINY_RECIPE))
    r = loaded.recipe
    assert (r.name, r.target, r.model.batch, r.passes) == ("tiny", "x86", [1, 4], [])
    assert r.model.inputs[0].shape == ["batch", 4] and r.model.inputs[0].concrete(4) == (4, 4)
    assert r.verify.tolerance.atol == 1e-4 and r.output == "build/{name}-{target}"
    assert loaded.root == repo.resolve()
    assert loaded.where("model", "entrypoint") == at(loaded.path, TINY_RECIPE, "tests.fixtures")


def test_batch_sizes_are_sorted_and_unique(tmp_path):
    loaded = recipe.load(write_recipe(tmp_path, TINY_RECIPE.replace("[1, 4]", "[8, 1, 8, 2]")))
    assert loaded.recipe.model.batch == [1, 2, 8]


def test_find_root_prefers_the_nearest_project(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "recipes" / "deep").mkdir(parents=True)
    assert recipe.find_root(repo / "recipes" / "deep" / "r.yaml") == repo.resolve()
    bare = tmp_path / "bare" / "recipes"
    bare.mkdir(parents=True)
    assert recipe.find_root(bare / "r.yaml") == (tmp_path / "bare").resolve()


def test_wrong_type_is_located(tmp_path):
    text = TINY_RECIPE.replace("batch: [1, 4]", 'batch: "abc"')
    path, problem = only(text, tmp_path)
    assert (problem.code, problem.field) == ("E102", "model.batch")
    assert problem.location == at(path, text, '"abc"')
    assert "valid list" in problem.message and "'abc'" in problem.message


@pytest.mark.parametrize("old, new, field, needle", [
    ("batch: [1, 4]", "batch: [true]", "model.batch.0", "true"),
    ("batch: [1, 4]", "batch: [2.5]", "model.batch.0", "2.5"),
    ("[batch, 4]", "[batch, 4.5]", "model.inputs.0.shape", "[batch, 4.5]"),
    ("[batch, 4]", "[batch, n]", "model.inputs.0.shape.1", "n]"),  # a name not declared in model.dims
    ("[batch, 4]", "[batch, 0]", "model.inputs.0.shape", "[batch, 0]"),
    ("dtype: float32", "dtype: float33", "model.inputs.0.dtype", "float33"),
    ("verify: {samples: 2}", "verify: {samples: 0}", "verify.samples", "0}"),
    ("verify: {samples: 2}", "verify: {tolerance: {atol: .nan}}", "verify.tolerance.atol", ".nan"),
    ("verify: {samples: 2}", "verify: {tolerance: {rtol: -1}}", "verify.tolerance.rtol", "-1"),
    ("name: tiny", "name: ../../etc", "name", "../../etc"),
    ("target: x86", "target: [x86]", "target", "[x86]"),
    ("entrypoint: tests.fixtures.models:tiny_mlp", "entrypoint: 'os.system'", "model.entrypoint", "'os.system'"),
])
def test_bad_values_point_at_the_value(tmp_path, old, new, field, needle):
    text = TINY_RECIPE.replace(old, new)
    path, problem = only(text, tmp_path)
    assert (problem.code, problem.field) == ("E102", field)
    assert problem.location == at(path, text, needle)


def test_unknown_key_gets_did_you_mean(tmp_path):
    text = TINY_RECIPE.replace("entrypoint:", "entrypont:")
    path, problems = problems_of(text, tmp_path)
    unknown = next(p for p in problems if p.code == "E103")
    assert unknown.field == "model.entrypont" and unknown.message == "unknown key 'entrypont'"
    assert unknown.location == at(path, text, "entrypont")
    assert unknown.hint == "did you mean 'entrypoint'?"
    missing = next(p for p in problems if p.code == "E102")
    assert missing.field == "model.entrypoint" and "missing required field" in missing.message


def test_unknown_key_without_close_match_lists_allowed_keys(tmp_path):
    text = TINY_RECIPE + "colour: blue\n"
    path, problem = only(text, tmp_path)
    assert problem.code == "E103" and problem.location == at(path, text, "colour")
    assert problem.hint.startswith("allowed keys: version, name, model")


def test_unknown_key_inside_a_pass(tmp_path):
    text = TINY_RECIPE + "passes:\n  - {kind: simplify, agressive: true}\n"
    path, problem = only(text, tmp_path)
    assert (problem.code, problem.field) == ("E103", "passes.0.agressive")
    assert problem.location == at(path, text, "agressive")


def test_unknown_pass_kind_gets_did_you_mean(tmp_path):
    text = TINY_RECIPE + "passes:\n  - {kind: fold_batchnom}\n"
    path, problem = only(text, tmp_path)
    assert (problem.code, problem.field) == ("E104", "passes.0.kind")
    assert problem.location == at(path, text, "fold_batchnom")
    assert problem.hint == "did you mean 'fold_batchnorm'?"


def test_pass_without_kind(tmp_path):
    text = TINY_RECIPE + "passes:\n  - {amount: 0.3}\n"
    path, problem = only(text, tmp_path)
    assert problem.code == "E104" and "needs a 'kind'" in problem.message
    assert problem.location == at(path, text, "{amount")


def test_missing_required_fields(tmp_path):
    text = "version: 1\nname: x\nmodel:\n  inputs: [{name: x, shape: [4]}]\n"
    path, problems = problems_of(text, tmp_path)
    assert [(p.code, p.field) for p in problems] == [("E102", "model.entrypoint")]
    assert problems[0].location == f"{path}:4:3"
    _, problems = problems_of("name: x\n", tmp_path)
    assert sorted(p.field for p in problems) == ["model", "version"]


def test_several_errors_in_one_run_sorted_by_line(tmp_path):
    text = TINY_RECIPE.replace("version: 1", "version: 2").replace("entrypoint:", "entrypont:") \
        .replace("batch: [1, 4]", "batch: lots").replace("target: x86", "target: 7") \
        + "passes:\n  - {kind: fold_batchnom}\nextra: 1\n"
    path, problems = problems_of(text, tmp_path)
    codes = {(p.code, p.field) for p in problems}
    assert {("E102", "version"), ("E103", "model.entrypont"), ("E102", "model.entrypoint"),
            ("E102", "model.batch"), ("E102", "target"), ("E104", "passes.0.kind"), ("E103", "extra")} <= codes
    positions = [tuple(int(n) for n in p.location.rsplit(":", 2)[1:]) for p in problems]
    assert positions == sorted(positions)
    assert positions[0] == line_col(text, "2") and positions[-1] == line_col(text, "extra")


def test_absurd_shape_is_refused_before_allocation(tmp_path):
    text = TINY_RECIPE.replace("[batch, 4]", "[batch, 1000000, 1000000]")
    path, problem = only(text, tmp_path)
    assert (problem.code, problem.field) == ("E102", "model.inputs.0.shape")
    assert problem.location == at(path, text, "[batch, 1000000")
    assert "4000000000000 elements" in problem.message


def test_duplicate_input_names_point_at_the_second(tmp_path):
    text = TINY_RECIPE.replace("    - {name: x, shape: [batch, 4], dtype: float32}\n",
                               "    - {name: x, shape: [batch, 4]}\n    - {name: x, shape: [2]}\n")
    path, problem = only(text, tmp_path)
    assert (problem.code, problem.field) == ("E102", "model.inputs.1.name")
    assert problem.location == f"{path}:7:14"


@pytest.mark.parametrize("output, ok", [
    ("out/{name}-{target}", True), ("out/{{literal}}", True), ("out/{foo}", False), ("out/{name!r}", False),
    ("out/{name:>30}", False), ("out/{", False), ("out/{0}", False), ("out/{name.__class__}", False),
])
def test_output_placeholders(tmp_path, output, ok):
    text = TINY_RECIPE + f"output: '{output}'\n"
    if ok:
        assert recipe.load(write_recipe(tmp_path, text)).recipe.output == output
        return
    path, problem = only(text, tmp_path)
    assert (problem.code, problem.field) == ("E102", "output")
    assert problem.location == at(path, text, f"'{output}'")


def test_not_a_mapping(tmp_path):
    path, problem = only("- 1\n- 2\n", tmp_path)
    assert problem.code == "E102" and "mapping" in problem.message and problem.location == f"{path}:1:1"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_recipe_says_it_is_empty(tmp_path, text):
    path, problem = only(text, tmp_path)
    assert problem.code == "E102" and "the recipe is empty" in problem.message and "NoneType" not in problem.message
    assert problem.location.startswith(str(path))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError) as info:
        recipe.load(tmp_path / "missing.yaml")
    assert info.value.code == "E100"


def test_json_schema_describes_every_field():
    schema = recipe.json_schema()
    assert schema["title"] == "Recipe"

    def walk(node):
        if isinstance(node, dict):
            for name, prop in (node.get("properties") or {}).items():
                assert prop.get("description"), f"field {name} has no description"
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(schema)
    assert "entrypoint" in schema["$defs"]["ModelSection"]["properties"]


# ---- fuzzing: any mutation of a valid recipe loads or fails with a coded error ----------------

VALID = yaml.safe_load(TINY_RECIPE.replace("verify: {samples: 2}", "verify: {samples: 2, seed: 3}")
                       + "passes:\n  - {kind: simplify}\ntuning: {trials: 0}\n")

values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | st.sampled_from(["batch", "float32", "x86", "fold_batchnorm", "simplify", "a:b", "", "\u202e\u0000x"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


@st.composite
def mutated(draw):
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10) | st.integers())] = draw(values)
        else:
            parent.append(draw(values))
    return data


_FUZZ_DIR = scratch_dir()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzzed_recipes_load_or_fail_with_a_coded_error(data):
    path = _FUZZ_DIR / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")
    try:
        loaded = recipe.load(path)
    except (RecipeError, TargetError) as exc:
        assert exc.problems and all(p.code.startswith("E") for p in exc.problems)
        assert all(p.location for p in exc.problems)
        return
    assert loaded.recipe.version == 1 and math.prod(loaded.recipe.model.inputs[0].concrete(1)) >= 1


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(TINY_RECIPE)), st.binary(min_size=1, max_size=8)
       | st.sampled_from([b"\t", b"\xef\xbb\xbf", b"&a ", b"*a", b"<<: ", b"{", b"- ", b": ", b"\x00", b"!!"]))
def test_fuzzed_bytes_load_or_fail_with_a_coded_error(position, garbage):
    raw = TINY_RECIPE.encode()
    path = _FUZZ_DIR / "bytes.yaml"
    path.write_bytes(raw[:position] + garbage + raw[position:])
    try:
        recipe.load(path)
    except (RecipeError, TargetError) as exc:
        assert exc.problems and all(p.code.startswith("E") for p in exc.problems)
