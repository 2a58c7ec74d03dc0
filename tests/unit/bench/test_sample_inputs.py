"""The inputs `accelc bench` and `accelc profile` time an artifact on: the stored recipe's specs,
ids inside the ranges the build found, named dimensions at their largest bucket."""
from __future__ import annotations

from accelc.artifact.manifest import Manifest
from accelc.bench.kernels import sample_inputs
from tests.fixtures.manifests import today

RECIPE = """version: 1
name: churn
model:
  entrypoint: models:encoder
  inputs:
    - {name: input_ids, shape: [batch, seq], dtype: int64, range: [0, 100]}
    - {name: attention_mask, shape: [batch, seq], dtype: int64, range: [0, 2]}
  batch: [1, 2]
  dims:
    seq: {sizes: [16, 48], pad: {input_ids: 0}, mask: attention_mask}
"""


def manifest_with(recipe_text: str, inputs: list[dict]) -> Manifest:
    data = today()
    data["recipe"]["text"] = recipe_text
    data["inputs"] = inputs
    return Manifest.from_json(data)


def test_named_dimensions_are_drawn_at_their_largest_bucket_and_ids_in_the_built_range():
    manifest = manifest_with(RECIPE, [
        {"name": "input_ids", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, 30]},  # the table's rows
        {"name": "attention_mask", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, 2]}])
    ids, mask = sample_inputs(manifest, 2)
    assert ids.shape == mask.shape == (2, 48)
    assert ids.dtype == "int64" and 0 <= ids.min() and ids.max() < 30


def test_without_named_dimensions_the_shapes_are_the_recipes():
    text = RECIPE.replace("[batch, seq]", "[batch, 7]").split("  dims:")[0]
    manifest = manifest_with(text, [{"name": "input_ids", "shape": ["batch", 7], "dtype": "int64", "range": [0, 100]},
                                    {"name": "attention_mask", "shape": ["batch", 7], "dtype": "int64",
                                     "range": [0, 2]}])
    assert [a.shape for a in sample_inputs(manifest, 3)] == [(3, 7), (3, 7)]
