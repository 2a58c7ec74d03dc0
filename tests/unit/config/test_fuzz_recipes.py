"""Recipe fuzzing with hypothesis: every mutation class of benchmarks/fuzz_recipes.py (types,
missing/extra keys, numbers, unicode, shapes, deep nesting, anchors and alias bombs, duplicate
keys, tabs, BOMs, tags, binary garbage) validates or fails with coded, located errors, never
another exception and never past a time bound. The script runs the long version."""
from __future__ import annotations

import random
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from benchmarks.fuzz_recipes import BASES, MUTATIONS, TINY, is_failure, mutate, run_case, scratch_repo

BOUND_S = 60  # CPU seconds per case; far above the slowest (deep nesting, under 3 s)


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    return scratch_repo(tmp_path_factory.mktemp("fuzz"))


def test_the_base_recipes_are_valid(recipe_path):
    assert [run_case(base.encode(), recipe_path) for base in BASES] == ["ok"] * len(BASES)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_mutated_recipes_validate_or_fail_with_a_coded_located_error(mutation, recipe_path):
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(BASES), st.integers(0, 2**32 - 1))
    def case(base, seed):
        outcome = run_case(mutate(random.Random(seed), mutation, base), recipe_path, BOUND_S)
        assert not is_failure(outcome), outcome

    case()


BOMBS = {  # (recipe text, expected code): all refused from the counts, before anything is built
    "4e12 elements": (TINY.replace("[batch, 4]", "[batch, 1000000, 1000000]"), "E102"),
    "2^36 elements at batch 65536": (TINY.replace("[batch, 4]", "[batch, 1048576]").replace("[1, 4]", "[65536]"),
                                     "E102"),
    "billion laughs": ("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + TINY, "E106"),
    "merge-key bomb": ("a0: &a0 {k0: 1, k1: 2}\n" + "".join(
        f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 9)}]}}\n" for i in range(1, 10)) + TINY, "E106"),
}


@pytest.mark.parametrize("name", BOMBS)
def test_bombs_and_absurd_shapes_are_refused_in_bounded_memory(name, recipe_path):
    text, code = BOMBS[name]
    tracemalloc.start()
    try:
        outcome = run_case(text.encode(), recipe_path, BOUND_S)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome == code and peak < 64 << 20, (outcome, peak)
