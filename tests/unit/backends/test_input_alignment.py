"""Inputs that only kernels read are taken at any alignment: numpy arrays at 16-byte (or 4-byte)
addresses run without a copy and give the aligned result; an input that is reshaped into a view
first keeps the 64-byte requirement and is copied."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from accelc import compile as compile_mod
from accelc.runtime import predictor as runtime
from tests.fixtures.helpers import make_repo, scratch_dir, write_recipe

RECIPE = """\
version: 1
name: {name}
model:
  entrypoint: tests.unit.backends.test_input_alignment:{factory}
  inputs:
    - {{name: x, shape: [batch, {shape}], dtype: float32}}
  batch: [16]
target: x86
verify: {{samples: 2}}
"""


class Scaled(torch.nn.Module):
    """An elementwise kernel (vector loads of the input) before a linear layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(torch.tanh(x * 0.5 + 1.0))


class Viewed(Scaled):
    """The input flattened before a linear layer: after the build the reshape is a view of the
    caller's array, and the matmul kernel reads that view."""

    def forward(self, x):
        return self.fc(x.reshape(-1, 12))


def scaled():
    return Scaled().eval()


def viewed():
    return Viewed().eval()


@pytest.fixture(scope="module")
def built():
    repo = make_repo(scratch_dir() / "align-repo")
    out = {}
    for factory, shape in (("scaled", "12"), ("viewed", "3, 4")):
        path = write_recipe(repo, RECIPE.format(name=factory, factory=factory, shape=shape), f"{factory}.yaml")
        out[factory] = compile_mod.build(path, output=repo / "build" / factory, cache=False)
    return out


def misaligned(array: np.ndarray, offset: int) -> np.ndarray:
    """`array`'s values at an address `offset` bytes past a 64-byte boundary."""
    raw = runtime.aligned_empty((array.nbytes + 64,), np.uint8)
    view = raw[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    view[...] = array
    assert view.ctypes.data % 64 == offset
    return view


def test_an_input_only_kernels_read_runs_misaligned_without_a_copy(built):
    result = built["scaled"]
    assert result.manifest.inputs[0].unaligned is True
    predictor = runtime.load(result.output)
    x = np.random.default_rng(0).standard_normal((16, 12), dtype=np.float32)
    want = scaled()(torch.from_numpy(x)).detach().numpy()
    for offset in (4, 16, 32, 36):
        shifted = misaligned(x, offset)
        np.testing.assert_allclose(predictor(shifted), want, rtol=1e-5, atol=1e-5)
        assert predictor._device_tensor(0, shifted).data_ptr() == shifted.ctypes.data  # the caller's memory
    assert not getattr(predictor._local, "staging", None)  # nothing was ever copied


def test_an_input_that_becomes_a_view_keeps_the_alignment_and_is_copied(built):
    result = built["viewed"]
    assert result.manifest.inputs[0].unaligned is False
    assert "unaligned" not in result.manifest.inputs[0].to_json()  # absent, as before the flag existed
    predictor = runtime.load(result.output)
    x = np.random.default_rng(1).standard_normal((16, 3, 4), dtype=np.float32)
    want = viewed()(torch.from_numpy(x)).detach().numpy()
    shifted = misaligned(x, 16)
    np.testing.assert_allclose(predictor(shifted), want, rtol=1e-5, atol=1e-5)
    assert predictor._device_tensor(0, shifted).data_ptr() % 64 == 0  # staged into an aligned buffer
