"""accelc.verify.gate_data: CSV loading (every bad input is one DataError naming the column and row) and the
resolution of the metric gate's validation data from a recipe; the recipe fields behind them."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from accelc.verify import gate_data as data
from accelc.config import recipe as recipe_mod
from accelc.errors import DataError, RecipeError
from tests.fixtures.helpers import TINY_RECIPE, assert_cli_user_error, make_repo, write_recipe


def write(tmp_path, text: str, name: str = "v.csv"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), "utf-8")
    return path


def error_of(path, columns=("a", "b"), label="y", binary=True) -> DataError:
    with pytest.raises(DataError) as info:
        data.load_csv(path, list(columns) if columns else None, label, binary_label=binary)
    return info.value


def test_load_picks_orders_and_parses_missing_cells(tmp_path):
    path = write(tmp_path, """\
        id,b,a,y,extra
        7,1.5,2,1,x

        8,,NA,0,y
        9, nan ,-3e2,1,z
        """)
    features, labels = data.load_csv(path, ["a", "b"], "y")
    assert features.dtype == np.float32 and labels.dtype == np.float32
    np.testing.assert_array_equal(features, np.array([[2, 1.5], [np.nan, np.nan], [-300, np.nan]], np.float32))
    np.testing.assert_array_equal(labels, [1, 0, 1])


def test_default_columns_are_all_but_the_label(tmp_path):
    features, _ = data.load_csv(write(tmp_path, "a,y,b\n1,0,2\n3,1,4\n"), None, "y")
    np.testing.assert_array_equal(features, [[1, 2], [3, 4]])


@pytest.mark.parametrize("text, code, needles", [
    ("", "E351", ["empty"]),
    ("a,b,y\n", "E351", ["no data rows"]),
    ("a,bb,y\n1,2,0\n", "E352", ["missing column(s) ['b']", "did you mean 'bb'"]),
    ("a,b,y\n1,2,0\n3,oops,1\n", "E353", ["column 'b', row 2", "'oops' is not a number", "v.csv:3"]),
    ("a,b,y\n1,2,0\n3,inf,1\n", "E353", ["column 'b', row 2"]),
    ("a,b,y\n1,2,0\n3,4\n", "E353", ["row 2 has 2 fields, the header has 3", "v.csv:3"]),
    ("a,b,y\n1,,0\n3,NA,1\n", "E354", ["column 'b' is missing in every row"]),
    ("a,b,y\n1,2,0\n3,4,2\n", "E355", ["label column 'y', row 2", "expected 0 or 1, got 2"]),
    ("a,b,y\n1,2,\n3,4,1\n", "E355", ["row 1", "got missing"]),
    ("a,b,a,y\n1,2,3,0\n", "E352", ["repeats column(s) ['a']"]),
])
def test_bad_csv_is_one_coded_error(tmp_path, text, code, needles):
    error = error_of(write(tmp_path, text))
    assert error.code == code
    for needle in needles:
        assert needle in error.format(), error.format()


def test_missing_file_and_non_binary_labels_when_allowed(tmp_path):
    assert error_of(tmp_path / "nope.csv").code == "E350"
    _, labels = data.load_csv(write(tmp_path, "a,y\n1,2.5\n"), ["a"], "y", binary_label=False)
    assert labels.tolist() == [2.5]


# ---- recipe fields and data resolution -------------------------------------------------------

CSV_RECIPE = TINY_RECIPE.replace(
    "{name: x, shape: [batch, 4], dtype: float32}",
    "{name: x, shape: [batch, 4], dtype: float32, columns: [a, b, c, d], units: [m, s, kg, code]}",
).replace("verify: {samples: 2}", "data: {csv: v.csv, label: y}\nverify: {samples: 2, metric: {name: auc, max_drop: 0.01}}")


def load(tmp_path, text: str):
    return recipe_mod.load(write_recipe(make_repo(tmp_path), text))


def test_csv_recipe_reads_the_inputs_columns_in_order(tmp_path):
    write(tmp_path, "y,d,c,b,a\n1,4,3,2,1\n0,8,7,6,5\n")
    inputs, labels = data.validation_data(load(tmp_path, CSV_RECIPE))
    np.testing.assert_array_equal(inputs[0], [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert labels.tolist() == [1, 0]


def test_csv_error_is_reported_by_the_cli_before_compiling(tmp_path, capsys):
    write(tmp_path, "a,b,c,d,y\n1,2,3,4,0\n1,2,three,4,1\n")
    path = write_recipe(make_repo(tmp_path), CSV_RECIPE)
    err = assert_cli_user_error(["build", path, "--output", tmp_path / "out"], capsys, "E353")
    assert "column 'c', row 2" in err and "capturing" not in err
    assert not (tmp_path / "out").exists()


def test_metric_without_data_is_an_error(tmp_path):
    text = CSV_RECIPE.replace("data: {csv: v.csv, label: y}\n", "")
    with pytest.raises(DataError, match="needs validation data") as info:
        data.validation_data(load(tmp_path, text))
    assert info.value.code == "E357" and "recipe.yaml:" in info.value.format()


def test_validation_callable_must_fit_the_inputs(tmp_path):
    text = CSV_RECIPE.replace("data: {csv: v.csv, label: y}",
                              "data: {validation: 'tests.unit.verify.test_data:wrong_width_validation'}")
    with pytest.raises(DataError, match=r"has shape \[5, 3\], the model takes \['batch', 4\]"):
        data.validation_data(load(tmp_path, text))


def wrong_width_validation():
    return np.zeros((5, 3), np.float32), np.zeros(5)


@pytest.mark.parametrize("old, new, field, needle", [
    ("data: {csv: v.csv, label: y}", "data: {csv: v.csv}", "data.csv", "needs data.label"),
    ("data: {csv: v.csv, label: y}", "data: {label: y}", "data.label", "data.csv, which is not given"),
    ("data: {csv: v.csv, label: y}", "data: {csv: v.csv, label: y, validation: 'a.b:c'}", "data.csv", "not both"),
    ("columns: [a, b, c, d]", "columns: [a, b, c]", "model.inputs.0.columns", "3 columns but the last dimension"),
    ("columns: [a, b, c, d]", "columns: [a, b, c, a]", "model.inputs.0.columns", "repeated: ['a']"),
    ("units: [m, s, kg, code]", "units: [m]", "model.inputs.0.units", "one unit per column"),
])
def test_recipe_data_and_column_fields_are_checked(tmp_path, old, new, field, needle):
    assert old in CSV_RECIPE
    text = CSV_RECIPE.replace(old, new)
    with pytest.raises(RecipeError) as info:
        load(tmp_path, text)
    problem = info.value.problems[0]
    assert problem.field == field and needle in problem.message, info.value.format()
    line = text[:text.index(new)].count("\n") + 1  # each case is on one line: the error points there
    assert problem.location.rsplit(":", 2)[1] == str(line), problem.location
