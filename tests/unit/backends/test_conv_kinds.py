"""Depthwise, grouped, 1-D and transposed float32 convolutions on CPU targets (lower/conv_kinds.py,
schedules/depthwise.py): equal to eager PyTorch on odd shapes (stride, padding, dilation, groups,
bias), lowered without TVM's own convolution, and scheduled with the loops each kernel promises."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures import tir
from tests.fixtures.lowering import compile_and_run

nn = torch.nn


def _run(model: nn.Module, shape: tuple, block: str = "im2col"):
    torch.manual_seed(0)
    model = model.eval()
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    got, main, kernels = compile_and_run(model, x, block)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    return main, kernels


@pytest.mark.parametrize("conv, shape", [
    (dict(in_channels=16, out_channels=16, kernel_size=3, padding=1), (1, 16, 9, 7)),
    (dict(in_channels=8, out_channels=16, kernel_size=5, stride=2, padding=2, bias=False), (2, 8, 11, 9)),  # x2
    (dict(in_channels=12, out_channels=12, kernel_size=(3, 2), dilation=2, padding=(2, 0)), (1, 12, 7, 10)),
    (dict(in_channels=3, out_channels=3, kernel_size=7, padding=3), (1, 3, 5, 5)),  # fewer channels than a vector
])
def test_depthwise_matches_torch(conv, shape):
    model = nn.Sequential(nn.Conv2d(**conv, groups=conv["in_channels"]), nn.ReLU6())
    main, kernels = _run(model, shape, block="depthwise_update")
    assert "R.nn.conv2d" not in main and len(kernels) == 1


def test_depthwise_schedule_is_a_register_tile_of_pixels_by_a_channel_vector():
    main, kernels = _run(nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU()), (1, 32, 40, 16),
                         block="depthwise_update")
    (func,) = kernels.values()
    # rows (n, y) in parallel, 8 output pixels x a vector of 8 channels, every tap unrolled
    loops = [(loop.kind, loop.extent) for loop in tir.loops(func, "depthwise_update")]
    assert loops == [("parallel", 40), ("serial", 2), ("serial", 4), ("unrolled", 3), ("unrolled", 3),
                     ("unrolled", 8), ("vectorized", 8)], loops
    # bias and ReLU in the same kernel, stored from the tile with vector stores
    assert "T_add" not in tir.blocks(func) and ("vectorized", 8) in [
        (loop.kind, loop.extent) for loop in tir.loops(func, "depthwise_intermediate_global")]


@pytest.mark.parametrize("conv, shape", [
    (nn.Conv2d(8, 12, 3, padding=1, groups=4), (1, 8, 6, 7)),
    (nn.Conv2d(12, 6, (3, 1), stride=2, dilation=(1, 2), groups=3, bias=False), (2, 12, 9, 5)),
    (nn.Conv1d(32, 32, 16, padding=8, groups=4), (1, 32, 19)),  # wav2vec2's positional convolution
])
def test_grouped_matches_torch_and_is_one_batched_gemm_with_patches_per_tile(conv, shape):
    main, kernels = _run(nn.Sequential(conv, nn.ReLU()), shape)
    assert "R.nn.conv" not in main and main.count("grouped_im2col_matmul") == 1
    (func,) = kernels.values()
    # groups x row tiles in parallel, each tile's patches computed just before it, vector stores
    assert "matmul_update" in tir.blocks(func) and len(tir.top_loops(func)) == 1
    assert {"parallel", "vectorized"} <= {loop.kind for loop in tir.all_loops(func)}


@pytest.mark.parametrize("conv, shape", [
    (nn.Conv1d(1, 16, 10, stride=5), (1, 1, 83)),  # wav2vec2's first feature convolution
    (nn.Conv1d(5, 7, 3, padding=2, dilation=2, bias=False), (2, 5, 13)),
])
def test_1d_runs_as_2d_patches_and_gemm(conv, shape):
    model = nn.Sequential(conv, nn.GELU(), nn.Conv1d(conv.out_channels, 4, 3))
    main, kernels = _run(model, shape)
    assert "R.nn.conv1d" not in main and main.count("im2col_matmul") == 2 and len(kernels) == 2
    # the transposes between the two convolutions cancel: GELU runs on NWC rows
    assert main.count("R.permute_dims") == 2, main


@pytest.mark.parametrize("conv, shape", [
    (nn.ConvTranspose2d(16, 8, 2, stride=2), (1, 16, 5, 6)),  # U-Net's up-sampling: kernel = stride
    (nn.ConvTranspose2d(6, 5, 4, stride=2, padding=1, output_padding=1, bias=False), (2, 6, 5, 4)),
    (nn.ConvTranspose2d(4, 8, 3, stride=(1, 3), padding=(1, 0)), (1, 4, 3, 5)),
    (nn.ConvTranspose1d(6, 5, 3, stride=2, padding=1), (1, 6, 9)),
])
def test_transposed_matches_torch_as_gemm_and_col2im(conv, shape):
    main, kernels = _run(conv, shape, block="T_transpose")
    assert "R.nn.conv" not in main and "R.matmul" in main
    (func,) = [func for name, func in kernels.items() if "col2im" in name]  # fused with bias and NCHW
    assert "vectorized" in {loop.kind for loop in tir.all_loops(func)}


def test_what_stays_tvms_convolution():
    """Transposed convolutions with groups keep TVM's lowering (and stay exact)."""
    main, _ = _run(nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2), (1, 4, 3, 3))
    assert "R.nn.conv2d_transpose" in main
