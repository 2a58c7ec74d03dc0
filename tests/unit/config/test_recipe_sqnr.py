"""verify.sqnr: the SQNR floors of tier 1 and of the original-model gate, and their located errors."""
from __future__ import annotations

import pytest

from accelc.config import recipe
from accelc.errors import RecipeError
from tests.fixtures.helpers import TINY_RECIPE, at, write_recipe


def load(text: str, tmp_path):
    return recipe.load(write_recipe(tmp_path, text))


def test_sqnr_floors_load_and_default_to_none(tmp_path):
    assert load(TINY_RECIPE, tmp_path).recipe.verify.sqnr is None
    text = TINY_RECIPE.replace("verify: {samples: 2}", "verify: {samples: 2, sqnr: {vs_rewritten: 32.5, "
                                                        "vs_original: 12}}")
    gate = load(text, tmp_path).recipe.verify.sqnr
    assert (gate.vs_rewritten, gate.vs_original) == (32.5, 12)
    empty = load(TINY_RECIPE.replace("{samples: 2}", "{samples: 2, sqnr: {}}"), tmp_path).recipe.verify.sqnr
    assert (empty.vs_rewritten, empty.vs_original) == (None, None)


@pytest.mark.parametrize("value, code, needle, words", [
    ("{vs_rewritten: -3}", "E102", "-3", "greater than or equal to 0"),
    ("{vs_original: .inf}", "E102", ".inf", "finite"),
    ("{vs_rewriten: 30}", "E103", "vs_rewriten", "vs_rewritten"),
    ("{vs_original: high}", "E102", "high", "number"),
])
def test_bad_sqnr_floors_are_located(tmp_path, value, code, needle, words):
    text = TINY_RECIPE.replace("verify: {samples: 2}", f"verify:\n  samples: 2\n  sqnr: {value}")
    path = write_recipe(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        recipe.load(path)
    problem, = info.value.problems
    assert problem.code == code and problem.field.startswith("verify.sqnr")
    assert problem.location == at(path, text, needle)
    assert words in problem.message + (problem.hint or "")
