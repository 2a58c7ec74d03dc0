"""Issue #19 item 7: data.samples takes keyword arguments from the recipe ({fn, args}, beside the
plain 'module:callable'), checked against the callable's signature (E356 at the recipe's line); its
results are taken by input name (E359 when they do not fit); and an integer input that has no range
and indexes no table is a coded error (E310) instead of verification ids drawn from [0, 10)."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from accelc import compile as compile_mod
from accelc.config import recipe as recipe_mod
from accelc.errors import DataError, ModelError
from accelc.verify import samples
from tests.fixtures.helpers import ROOT, at, make_repo, write_recipe

RECIPE = textwrap.dedent("""\
    version: 1
    name: sampled
    model:
      entrypoint: tests.fixtures.gather_models:counts
      inputs:
        - {{name: counts, shape: [batch, 4], dtype: int64}}
        - {{name: flags, shape: [batch, 2], dtype: bool}}
      batch: [1, 4]
    {data}target: x86
    verify: {{samples: 2}}
    """)
INT_SAMPLES = "tests.fixtures.gather_models:int_samples"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("samples"))


def loaded(repo, data: str, name: str = "recipe.yaml"):
    text = RECIPE.format(data=data)
    path = write_recipe(repo, text, name)
    return recipe_mod.load(path), path, text


def test_arguments_reach_the_callable_and_results_are_taken_by_name(repo):
    data = (f'data:\n  samples: {{fn: "{INT_SAMPLES}",\n            args: {{flags: [2, 0, 2], '
            'counts: [4, 100, 200]}}\n')
    source = samples.source(loaded(repo, data)[0])
    counts, flags = source(3, 7)  # model.inputs order, not the dict's
    assert counts.shape == (3, 4) and flags.shape == (3, 2)
    assert counts.min() >= 100 and counts.max() < 200 and flags.max() <= 1
    rng = np.random.default_rng(7)  # the callable's own draw: the args were passed, nothing else
    np.testing.assert_array_equal(flags, rng.integers(0, 2, (3, 2)))
    np.testing.assert_array_equal(counts, rng.integers(100, 200, (3, 4)))


def test_the_plain_string_form_still_works(repo):
    source = samples.source(loaded(repo, f'data: {{samples: "{INT_SAMPLES}"}}\n')[0])
    with pytest.raises(DataError) as caught:  # int_samples without args returns {}: no input named
        source(2, 0)
    assert caught.value.code == "E359" and "['counts', 'flags']" in str(caught.value)


def test_an_argument_the_callable_does_not_take_is_e356_at_its_line(repo):
    data = f'data:\n  samples: {{fn: "{INT_SAMPLES}", args: {{counts: [4, 0, 9]}}}}\n'
    sampled = loaded(repo, data)[0]
    with pytest.raises(DataError) as caught:  # **inputs takes any name, and it returns only counts
        samples.source(sampled)(1, 0)
    assert caught.value.code == "E359"
    data = 'data:\n  samples:\n    fn: "tests.fixtures.gather_models:bag_samples"\n    args: {cuont: 3}\n'
    bad, path, text = loaded(repo, data, "bad.yaml")
    with pytest.raises(DataError) as caught:
        samples.source(bad)
    problem = caught.value.problems[0]
    assert problem.code == "E356" and problem.location == at(path, text, "cuont")
    assert problem.field == "data.samples.args.cuont" and "did you mean 'count'" in problem.format()


def test_a_callable_that_takes_no_n_and_seed_is_e356(repo):
    bad, path, text = loaded(repo, 'data: {samples: "tests.fixtures.gather_models:no_arguments"}\n')
    with pytest.raises(DataError) as caught:
        samples.source(bad)
    assert caught.value.code == "E356" and caught.value.problems[0].location == at(path, text, '"tests.fixtures')


def test_a_misspelt_key_of_the_source_is_a_recipe_error(repo):
    from accelc.errors import RecipeError
    with pytest.raises(RecipeError) as caught:
        loaded(repo, f'data: {{samples: {{fn: "{INT_SAMPLES}", arg: {{}}}}}}\n', "typo.yaml")
    assert caught.value.code == "E103" and "did you mean 'args'" in str(caught.value)


def test_an_integer_input_without_a_range_is_e310_before_compiling(repo, monkeypatch):
    sampled, path, text = loaded(repo, "", "unranged.yaml")
    from accelc.backends.tvm.lower import relax as lower
    monkeypatch.setattr(lower, "compile_module", lambda *a, **k: pytest.fail("compiled before refusing"))
    with pytest.raises(ModelError) as caught:
        compile_mod.build(path, output=repo / "unranged")
    (problem,) = caught.value.problems  # counts only: a bool input needs no range
    assert problem.code == "E310" and problem.location == at(path, text, "{name: counts")
    assert problem.field == "model.inputs.0.range"


def test_a_declared_range_or_samples_lift_e310():
    with_range = RECIPE.format(data="").replace("dtype: int64}", "dtype: int64, range: [0, 7]}")
    from accelc.config import yamlio

    def parse(text):
        located = yamlio.load_text(text, "r.yaml")
        return recipe_mod.LoadedRecipe(recipe=recipe_mod.parse(located), path=ROOT / "r.yaml", root=ROOT, text=text,
                                       located=located)
    samples.check_ranges(parse(with_range), {"counts": (0, 7)})  # the build's ranges hold declared ones
    samples.check_ranges(parse(RECIPE.format(data=f'data: {{samples: "{INT_SAMPLES}"}}\n')), {})
    with pytest.raises(ModelError):
        samples.check_ranges(parse(RECIPE.format(data="")), {})
