"""model.dims: named dimensions besides batch (sequence buckets) and their stated padding; every
mistake is one located E102, and a recipe without dims reads as before."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from accelc.config import recipe
from accelc.errors import RecipeError
from tests.fixtures.helpers import TINY_RECIPE, at, write_recipe

BUCKETS = textwrap.dedent("""\
    version: 1
    name: bert
    model:
      entrypoint: tests.fixtures.models:tiny_mlp
      inputs:
        - {name: input_ids, shape: [batch, seq], dtype: int64, range: [0, 100]}
        - {name: attention_mask, shape: [batch, seq], dtype: int64}
        - {name: token_type_ids, shape: [batch, seq], dtype: int64}
      batch: [1, 2]
      dims:
        seq: {sizes: [128, 32, 32], pad: {input_ids: 0, token_type_ids: 0}, mask: attention_mask}
    target: x86
    """)


def problem(text: str, tmp_path: Path):
    path = write_recipe(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        recipe.load(path)
    problems = info.value.problems
    assert len(problems) == 1, [p.format() for p in problems]
    return path, problems[0]


def test_buckets_load_sorted_with_their_padding(tmp_path):
    model = recipe.load(write_recipe(tmp_path, BUCKETS)).recipe.model
    seq = model.dims["seq"]
    assert seq.sizes == [32, 128] and seq.pad == {"input_ids": 0, "token_type_ids": 0}
    assert seq.mask == "attention_mask"
    ids = model.inputs[0]
    assert ids.concrete(2, {"seq": 32}) == (2, 32) and ids.axis("seq") == 1 and ids.axis("other") is None


def test_a_recipe_without_dims_reads_as_before(tmp_path):
    model = recipe.load(write_recipe(tmp_path, TINY_RECIPE)).recipe.model
    assert model.dims == {} and model.inputs[0].concrete(4) == (4, 4)


@pytest.mark.parametrize("old, new, needle, field, message", [
    ("shape: [batch, seq], dtype: int64, range", "shape: [batch, sq], dtype: int64, range", "sq]",
     "model.inputs.0.shape.1", "dimension 'sq' is not declared in model.dims; did you mean 'seq'?"),
    ("pad: {input_ids: 0, token_type_ids: 0}", "pad: {input_ids: 0, token_type_ids: 0, tokens: 0}", "tokens: 0",
     "model.dims.seq.pad.tokens", "'tokens' is not an input"),
])
def test_dimension_names_are_checked_where_they_are_written(tmp_path, old, new, needle, field, message):
    text = BUCKETS.replace(old, new)
    path, found = problem(text, tmp_path)
    offset = len("tokens: ") if needle == "tokens: 0" else 0  # the value's position
    assert (found.code, found.field, found.location) == ("E102", field, at(path, text, needle, offset))
    assert message in found.message


def test_a_declared_dimension_no_input_uses(tmp_path):
    text = BUCKETS.replace("[batch, seq]", "[batch, 8]")
    path, found = problem(text, tmp_path)
    assert found.field == "model.dims.seq" and found.location == at(path, text, "{sizes")
    assert "declared but no input's shape uses it" in found.message


def test_an_input_with_the_dimension_needs_a_pad_value(tmp_path):
    text = BUCKETS.replace("pad: {input_ids: 0, token_type_ids: 0}", "pad: {input_ids: 0}")
    path, found = problem(text, tmp_path)
    assert found.field == "model.dims.seq.pad" and "['token_type_ids'] use 'seq' but have no pad value" in found.message


def test_pad_of_an_input_without_the_dimension(tmp_path):
    text = BUCKETS.replace("- {name: token_type_ids, shape: [batch, seq]", "- {name: token_type_ids, shape: [batch, 4]")
    path, found = problem(text, tmp_path)
    assert found.field == "model.dims.seq.pad.token_type_ids"
    assert "'token_type_ids' has no 'seq' dimension" in found.message


@pytest.mark.parametrize("old, new, message", [
    ("- {name: attention_mask, shape: [batch, seq], dtype: int64}",
     "- {name: attention_mask, shape: [batch, seq], dtype: float32}", "mask 'attention_mask' is float32"),
    ("mask: attention_mask", "mask: attn", "mask 'attn' is not an input"),
])
def test_the_mask_is_an_int_or_bool_input_with_the_dimension(tmp_path, old, new, message):
    text = BUCKETS.replace(old, new)
    path, found = problem(text, tmp_path)
    needle = "attn}" if "attn" in new else "attention_mask}"
    assert found.field == "model.dims.seq.mask" and found.location == at(path, text, needle)
    assert message in found.message


def test_a_pad_value_the_dtype_cannot_hold(tmp_path):
    text = BUCKETS.replace("token_type_ids: 0}", "token_type_ids: 0.5}")
    path, found = problem(text, tmp_path)
    assert found.field == "model.dims.seq.pad.token_type_ids" and "int64; its pad value 0.5" in found.message
    assert found.location == at(path, text, "0.5")


@pytest.mark.parametrize("sizes", ["[0, 32]", "[2000000]", "[]"])
def test_sizes_out_of_range(tmp_path, sizes):
    text = BUCKETS.replace("sizes: [128, 32, 32]", f"sizes: {sizes}")
    path, found = problem(text, tmp_path)
    assert found.field == "model.dims.seq.sizes" and found.location == at(path, text, sizes)


def test_the_element_limit_holds_at_the_largest_bucket(tmp_path):
    text = BUCKETS.replace("batch: [1, 2]", "batch: [1, 4096]").replace("sizes: [128, 32, 32]",
                                                                         "sizes: [32, 131072]")
    path, found = problem(text, tmp_path)
    assert found.field == "model.inputs.0.shape" and "at batch 4096, seq 131072" in found.message


def test_batch_is_not_a_named_dimension(tmp_path):
    text = BUCKETS.replace("  dims:\n    seq:", "  dims:\n    batch: {sizes: [2]}\n    seq:")
    path, found = problem(text, tmp_path)
    assert found.field == "model.dims.batch" and "is the batch dimension" in found.message
