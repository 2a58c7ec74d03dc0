"""float32 pools on CPU targets (lower/pools.py, schedules/pool.py): equal to eager PyTorch over
PyTorch's semantics (ceil mode, padding counted or not, divisor override, dilation, adaptive
windows), lowered without TVM's own pool, NHWC between convolutions, and tiled as promised."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures import tir
from tests.fixtures.lowering import compile_and_run

nn = torch.nn


def _run(model: nn.Module, shape: tuple):
    model = model.eval()
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    got, main, kernels = compile_and_run(model, x, "pool_update")
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not any(f"R.nn.{op}(" in main for op in ("avg_pool2d", "max_pool2d", "adaptive_avg_pool2d"))
    return main, kernels


@pytest.mark.parametrize("pool, shape", [
    (nn.AvgPool2d(320, ceil_mode=True), (1, 16, 1, 1)),  # EfficientNet's pooler: a window far past the input
    (nn.AvgPool2d(3, 2, 1), (2, 16, 9, 9)),
    (nn.AvgPool2d(3, 2, 1, count_include_pad=False), (1, 8, 9, 10)),
    (nn.AvgPool2d(3, 2, 1, ceil_mode=True), (1, 8, 10, 10)),
    (nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (1, 8, 10, 10)),
    (nn.AvgPool2d((2, 3), (1, 2), (1, 0), divisor_override=5), (1, 5, 7, 7)),
    (nn.MaxPool2d(3, 2, 1), (1, 16, 12, 12)),
    (nn.MaxPool2d(2, ceil_mode=True), (1, 3, 7, 7)),
    (nn.MaxPool2d(3, 1, 1, dilation=2), (1, 8, 9, 9)),
    (nn.AdaptiveAvgPool2d((3, 2)), (1, 8, 7, 5)),
    (nn.AdaptiveAvgPool2d((None, 2)), (1, 8, 4, 6)),
])
def test_pool_matches_torch(pool, shape):
    _, kernels = _run(pool, shape)
    assert len(kernels) == 1


def test_huge_window_reads_only_the_taps_that_reach_the_input():
    _, kernels = _run(nn.AvgPool2d(320, ceil_mode=True), (1, 32, 1, 1))
    (func,) = kernels.values()
    extents = {loop.var: loop.extent for loop in tir.loops(func, "pool_update")}
    assert extents["r"] == 1 and extents["s"] == 1  # not 320 x 320


def test_pool_between_convolutions_runs_in_nhwc_as_a_tile_of_pixels_by_channel_vectors():
    model = nn.Sequential(nn.Conv2d(8, 32, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(32, 16, 1))
    main, kernels = _run(model, (1, 8, 18, 18))
    assert main.count("R.permute_dims") == 2  # the model's input and output: the pool's cancelled
    (func,) = kernels.values()
    loops = tir.loops(func, "pool_update")
    kinds = {loop.var: (loop.kind, loop.extent) for loop in loops}
    assert kinds["c_1"] == ("vectorized", 8) and kinds["r"] == ("unrolled", 3) and kinds["s"] == ("unrolled", 3)
    assert kinds["xx_1"][0] == "unrolled" and [loop.var for loop in loops][-1] == "c_1"
