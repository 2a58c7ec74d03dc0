"""Issue #19 item 5: every gather is bounded. nn.EmbeddingBag (offsets; sum with padding_idx, mean,
max; the 2-D form), torch.take and F.one_hot build, match eager PyTorch on valid ids, and refuse
out-of-range ids (and offsets past the ids) with E805 before native code runs."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from accelc import compile as compile_mod
from accelc.errors import InputError, UnsupportedOpError
from accelc.runtime import predictor as runtime
from tests.fixtures.gather_models import bag_samples, bags, lookups
from tests.fixtures.helpers import make_repo, write_recipe

RTOL, ATOL = 1e-5, 1e-5
COUNT = 12  # token ids per call, in `batch` bags

BAGS = textwrap.dedent(f"""\
    version: 1
    name: bags
    model:
      entrypoint: tests.fixtures.gather_models:bags
      inputs:
        - {{name: ids, shape: [{COUNT}], dtype: int64}}
        - {{name: offsets, shape: [batch], dtype: int64}}
        - {{name: grid, shape: [batch, 4], dtype: int64}}
      batch: [2, 4]
    data:
      samples: {{fn: "tests.fixtures.gather_models:bag_samples", args: {{count: {COUNT}}}}}
    target: x86
    verify: {{samples: 2}}
    """)

LOOKUPS = textwrap.dedent("""\
    version: 1
    name: lookups
    model:
      entrypoint: tests.fixtures.gather_models:lookups
      inputs:
        - {name: codes, shape: [batch, 3], dtype: int64, range: [0, 5]}  # capture samples [0, 10) without it
        - {name: flat, shape: [batch, 4], dtype: int64}
      batch: [2]
    target: x86
    verify: {samples: 2}
    """)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("embedding-bag"))


@pytest.fixture(scope="module")
def built_bags(repo):
    built = compile_mod.build(write_recipe(repo, BAGS, "bags.yaml"), output=repo / "bags")
    assert built.report["status"] == "passed", built.report  # eager PyTorch on bag_samples, at 2, 3 and 4
    return built


@pytest.fixture(scope="module")
def built_lookups(repo):
    built = compile_mod.build(write_recipe(repo, LOOKUPS, "lookups.yaml"), output=repo / "lookups")
    assert built.report["status"] == "passed", built.report
    return built


def eager(model, *arrays) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)).numpy()


def test_the_manifest_bounds_ids_by_the_tables_and_offsets_by_the_ids(built_bags):
    ranges = {spec.name: spec.range for spec in built_bags.manifest.inputs}
    assert ranges == {"ids": (0, 100), "offsets": (0, COUNT + 1), "grid": (0, 100)}


@pytest.mark.parametrize("batch", [4, 3, 2])  # built (lean path), padded with zero offsets, built
def test_bags_match_eager(built_bags, batch):
    predictor = runtime.load(built_bags.output)
    for seed in range(3):
        inputs = bag_samples(batch, seed, COUNT)
        inputs["ids"][:3] = [0, 99, 0]  # the padding id (left out of the sum bag) and the last row
        arrays = [inputs[name] for name in ("ids", "offsets", "grid")]
        np.testing.assert_allclose(predictor(*arrays), eager(bags(), *arrays), rtol=RTOL, atol=ATOL)


def test_a_batch_above_the_largest_is_refused_when_an_input_has_no_batch_axis(built_bags):
    """Split at 4 rows, the offsets would be cut but the flat ids not: a wrong answer. E802 instead."""
    inputs = bag_samples(6, 0, COUNT)
    predictor = runtime.load(built_bags.output)
    with pytest.raises(InputError) as error:
        predictor(inputs["ids"], inputs["offsets"], inputs["grid"])
    assert error.value.code == "E802" and "'ids' has no batch dimension" in str(error.value)


def test_empty_bags_are_zeros_in_every_mode(built_bags):
    """Offsets [0, 0, 12, 12]: bags 0, 2 and 3 are empty; mean and max of nothing are 0 in torch."""
    ids, grid = np.arange(1, COUNT + 1), np.ones((4, 4), np.int64)
    offsets = np.array([0, 0, COUNT, COUNT])
    predictor = runtime.load(built_bags.output)
    np.testing.assert_allclose(predictor(ids, offsets, grid), eager(bags(), ids, offsets, grid), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name, bad", [("ids", 100), ("ids", -1), ("ids", 10**9), ("grid", 100), ("grid", -5),
                                       ("offsets", COUNT + 1), ("offsets", -1)])
@pytest.mark.parametrize("batch", [4, 3])
def test_out_of_range_values_are_refused_before_native_code(built_bags, monkeypatch, name, bad, batch):
    predictor = runtime.load(built_bags.output)
    inputs = bag_samples(batch, 0, COUNT)
    predictor(*inputs.values())  # this thread's VM exists: the lean path is live
    runs = []
    monkeypatch.setattr(predictor, "_run", lambda *args: runs.append(args))
    inputs[name].flat[-1] = bad
    with pytest.raises(InputError) as caught:
        predictor(*inputs.values())
    assert caught.value.code == "E805" and str(bad) in str(caught.value)
    assert runs == []
    with pytest.raises((IndexError, RuntimeError)):  # PyTorch refuses them too
        eager(bags(), *inputs.values())

def test_offset2bag_or_include_last_offset_is_one_coded_error():
    from accelc.backends.tvm.lower import relax as lower
    from accelc.config import targets
    from tests.fixtures.helpers import ROOT

    class LastOffset(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = torch.nn.EmbeddingBag(10, 2, include_last_offset=True)

        def forward(self, ids, offsets):
            return self.bag(ids, offsets)

    ids, offsets = torch.arange(6), torch.tensor([0, 2, 6])
    program = lower.export_program(torch.export.export(LastOffset(), (ids, offsets)).module(), (ids, offsets), None)
    with pytest.raises(UnsupportedOpError) as caught:
        lower.to_relax({2: program}, targets.resolve("x86", ROOT).tvm_target())
    assert caught.value.code == "E400" and "include_last_offset" in str(caught.value)
    assert caught.value.problems[0].location.startswith("node ")


def test_take_and_one_hot_match_eager_and_refuse_out_of_range(built_lookups):
    ranges = {spec.name: spec.range for spec in built_lookups.manifest.inputs}
    assert ranges == {"codes": (0, 5), "flat": (-42, 42)}  # one_hot's classes; take counts from the end
    predictor = runtime.load(built_lookups.output)
    codes, flat = np.array([[0, 4, 2], [1, 1, 3]]), np.array([[0, 41, -1, -42], [7, 13, -20, 5]])
    np.testing.assert_allclose(predictor(codes, flat), eager(lookups(), codes, flat), rtol=RTOL, atol=ATOL)
    for name, bad in (("codes", 5), ("codes", -1), ("flat", 42), ("flat", -43)):
        inputs = {"codes": codes.copy(), "flat": flat.copy()}
        inputs[name][1, 1] = bad
        with pytest.raises(InputError) as caught:
            predictor(**inputs)
        assert caught.value.code == "E805"
        with pytest.raises((IndexError, RuntimeError)):  # PyTorch refuses them as well
            eager(lookups(), inputs["codes"], inputs["flat"])
