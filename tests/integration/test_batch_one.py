"""Recipes built for batch 1 only: the capture is static, the runtime serves larger batches as
batch-1 calls, and verification (which adds an unbuilt size) compares against the reference run
the same way, instead of failing inside the reference (an internal error, exit 3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from accelc import compile as compile_mod
from accelc.runtime import predictor as runtime
from tests.fixtures.helpers import make_repo, write_recipe

RECIPE = """\
version: 1
name: {name}
model:
  entrypoint: tests.integration.test_batch_one:{name}
  inputs:
    - {{name: x, shape: [batch, 64], dtype: float32}}
  batch: {batch}
passes: {passes}
target: x86
verify: {{samples: 2}}
"""


class BetweenReshapes(nn.Module):
    """A Linear between two reshapes that read the batch size."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(x.reshape(x.shape[0], 4, 16)).reshape(x.shape[0], 64)


class BatchOneOnly(BetweenReshapes):
    """The same with the batch size written into the model, as exported models often have it."""

    def forward(self, x):
        return self.fc(x.reshape(1, 4, 16)).reshape(1, 64)


class TwoLinears(nn.Module):
    """One quantized Linear feeding another: the second quantizes the first's replacement."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.b(self.a(x))


def between_reshapes():
    torch.manual_seed(0)
    return BetweenReshapes()


def batch_one_only():
    torch.manual_seed(0)
    return BatchOneOnly()


def two_linears():
    torch.manual_seed(0)
    return TwoLinears()


def rows():
    return torch.randn(16, 64, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("batch-one"))


@pytest.mark.parametrize("name, batch, passes", [
    ("between_reshapes", "[1]", "[{kind: simplify}]"),
    ("batch_one_only", "[1]", "[{kind: simplify}]"),
    ("batch_one_only", "[1]", "[]"),
    ("two_linears", "[1]", "[{kind: quantize, mode: dynamic}]"),
    ("two_linears", "[1, 4]", "[{kind: quantize, mode: dynamic}]"),
    # calibrated on 16 rows: one at a time through a graph that takes one
    ("batch_one_only", "[1]", "[{kind: quantize, mode: static, min_outputs: 1}]\n"
                              "data: {calibration: tests.integration.test_batch_one:rows}"),
    ("two_linears", "[1]", "[{kind: quantize, mode: static}]\ndata: {calibration: tests.integration.test_batch_one:rows}"),
])
def test_builds_verify_and_serve_larger_batches_row_by_row(repo, name, batch, passes):
    tag = f"{name}-{len(batch)}-{len(passes)}-{'static' in passes}"
    path = write_recipe(repo, RECIPE.format(name=name, batch=batch, passes=passes), f"{tag}.yaml")
    built = compile_mod.build(path, output=repo / tag)
    assert built.report["status"] == "passed"
    assert {row["batch"] for row in built.report["rows"]} >= {1, 2}  # the unbuilt size was verified too
    x = np.random.default_rng(3).standard_normal((3, 64), dtype=np.float32)
    model = globals()[name]()
    with torch.no_grad():  # the float model, row by row: int8 is close to it, float equal
        expected = np.concatenate([model(torch.from_numpy(x[i:i + 1])).numpy() for i in range(3)])
    tolerance = 0.05 if "quantize" in passes else 1e-5
    np.testing.assert_allclose(runtime.load(repo / tag)(x), expected, atol=tolerance, rtol=tolerance)
