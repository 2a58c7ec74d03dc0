"""benchmarks/gpu_check.py (run on a GPU host) verifies on the samples the build verified on: integer
inputs drawn from the range the manifest records (the model's tables), not from [0, 10)."""
from __future__ import annotations


import numpy as np

from accelc import compile as compile_mod
from benchmarks import gpu_check
from tests.fixtures.gather_models import embed_recipe
from tests.fixtures.helpers import make_repo

EMBED = embed_recipe(3)


def manifest() -> dict:
    """The parts of a manifest gpu_check reads: the stored recipe and the inputs with their ranges
    (ids: derived from Embedding(100, 8) by the build, no range in the recipe)."""
    return {"recipe": {"path": "/build-host/recipes/embed.yaml", "text": EMBED},
            "inputs": [{"name": "ids", "shape": ["batch", 6], "dtype": "int64", "range": [0, 100]}]}


def test_ids_come_from_the_manifest_range_as_in_the_build(tmp_path):
    src = make_repo(tmp_path)
    loaded = gpu_check.loaded_recipe(manifest(), src)
    sets = gpu_check.sample_sets_of(manifest(), loaded)
    assert [batch for batch, *_ in sets] == [1, 4, 2]  # the built sizes and one padded
    ids = np.concatenate([arrays[0].ravel() for _, samples, *_ in sets for arrays in samples])
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 100
    assert ids.max() >= 50  # 126 draws from [0, 100): the whole table, not [0, 10)
    built = compile_mod.sample_sets(loaded, {"ids": (0, 100)})  # what the CPU build verified on
    for (batch, samples, *_), (built_batch, built_samples, *_) in zip(sets, built, strict=True):
        assert batch == built_batch
        for arrays, expected in zip(samples, built_samples, strict=True):
            for a, b in zip(arrays, expected, strict=True):
                np.testing.assert_array_equal(a, b)
