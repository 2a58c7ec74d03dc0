"""float32 convolutions on CPU targets: im2col fused into the tiled matmul, equal to PyTorch on odd shapes
(grouped, depthwise, 1-D and transposed ones: test_conv_kinds.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures import tir
from tests.fixtures.lowering import compile_and_run

@pytest.mark.parametrize("conv", [
    dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
    dict(in_channels=5, out_channels=7, kernel_size=(3, 2), stride=2, padding=(1, 0), bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=3, dilation=2, padding=2),
    dict(in_channels=16, out_channels=8, kernel_size=1, stride=2),
])
def test_convolution_as_im2col_matches_torch(conv):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(**conv), torch.nn.ReLU(), torch.nn.Conv2d(conv["out_channels"], 3, 3)).eval()
    x = np.random.default_rng(1).standard_normal((2, conv["in_channels"], 11, 9), dtype=np.float32)
    got, main, kernels = compile_and_run(model, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert "R.nn.conv2d" not in main and main.count("im2col_matmul") == 2
    # patches and matmul in one kernel, under one loop over row tiles: each tile's patches are
    # computed just before the tile uses them, never all of them to memory first
    assert len(kernels) == 2
    for func in kernels.values():
        assert "matmul_update" in tir.blocks(func) and len(tir.top_loops(func)) == 1, func


def _conv_relu(channels: int, out_channels: int, kernel: int, stride: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(channels, out_channels, kernel, stride, padding=kernel // 2),
                               torch.nn.ReLU()).eval()


@pytest.mark.parametrize("channels,out_channels,kernel,stride,size,k_blocks", [
    (40, 40, 3, 1, (7, 11), 3),  # k = 360 in 3 blocks of 120; 2 x 77 rows: the last row tile partial
    (3, 64, 7, 2, (13, 13), 1),  # an RGB stem: kernel rows of 21 values in runs of 24, k = 168 in one block
    (24, 48, 1, 2, (9, 9), 1),  # a 1x1 conv of stride 2; 48 columns: 3 panels of 16
    (300, 16, 3, 1, (5, 5), 18),  # a tap's 300 channels wider than a k block: k = 2700 in blocks of 150
])
def test_narrow_convolution_is_blocked_and_matches_torch(channels, out_channels, kernel, stride, size, k_blocks):
    model = _conv_relu(channels, out_channels, kernel, stride)
    x = np.random.default_rng(2).standard_normal((2, channels, *size), dtype=np.float32)
    got, _, kernels = compile_and_run(model, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (func,) = kernels.values()
    # row blocks in parallel, each over k blocks: the block's patches, then per panel every row tile
    # of the block, its register tile (4 rows unrolled x 2 vectors of 8) summed over the k block
    update = tir.loops(func, "matmul_update")
    assert update[0].kind == "parallel" and update[0].extent >= 2
    assert [loop.kind for loop in update[-3:]] == ["unrolled", "unrolled", "vectorized"] and update[-1].extent == 16
    patches = tir.loops(func, "im2col")
    assert patches[:2] == update[:2] and patches[-1].kind == "vectorized"
    assert update[1].extent == k_blocks and len(tir.top_loops(func)) == 1


def test_wide_convolution_keeps_one_register_tile_per_row_tile():
    """More than 4 panels: the plain schedule, each row tile's patches just before it and the
    epilogue applied as the tile is stored (no pass over C per block)."""
    model = _conv_relu(16, 80, 3)  # 80 columns: 5 panels of 16
    x = np.random.default_rng(3).standard_normal((1, 16, 8, 8), dtype=np.float32)
    got, _, kernels = compile_and_run(model, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (func,) = kernels.values()
    update = tir.loops(func, "matmul_update")
    assert [(loop.kind, loop.extent) for loop in update[:2]] == [("parallel", 16), ("serial", 5)]
    assert "relu" not in tir.blocks(func)  # inlined into the tile's store


@pytest.mark.parametrize("channels,out_channels,size,batch,outer", [
    (16, 8, (11, 9), 2, (33, 1)),  # narrower than a panel: B unpacked; 198 rows in tiles of 6
    (24, 48, (9, 9), 2, (27, 3)),  # 3 panels of 16
    (12, 40, (3, 7), 3, (21, 3)),  # 40 columns: panels padded past N
    (64, 32, (5, 7), 2, (14, 2)),  # deeper than wide: 70 rows in tiles of 5, row tiles still outer
    (48, 40, (3, 5), 3, (9, 3)),  # 45 rows in tiles of 5, the last panel padded past N
])
def test_pointwise_convolution_reads_its_input_in_place_and_matches_torch(channels, out_channels, size, batch,
                                                                          outer):
    """A 1x1 stride-1 convolution's patches are its NHWC input: the GEMM reads the input itself,
    with no patches block, in the plain register-tiled schedule (row tiles outer, then panels)."""
    model = _conv_relu(channels, out_channels, 1)
    x = np.random.default_rng(5).standard_normal((batch, channels, *size), dtype=np.float32)
    got, main, kernels = compile_and_run(model, x, block="matmul_update")
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (func,) = kernels.values()
    assert "im2col" not in tir.blocks(func) and main.count("conv1x1_matmul") == 1
    update = tir.loops(func, "matmul_update")
    assert update[0].kind == "parallel" and (update[0].extent, update[1].extent) == outer
    assert update[-1].kind == "vectorized" and len(tir.top_loops(func)) == 1


@pytest.mark.parametrize("conv", [
    dict(in_channels=6, out_channels=16, kernel_size=1),  # 6 channels padded to 8: the copy pads them
    dict(in_channels=8, out_channels=16, kernel_size=1, padding=1),
])
def test_pointwise_convolution_needing_padding_copies_patches(conv):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(**conv).eval()
    x = np.random.default_rng(6).standard_normal((2, conv["in_channels"], 5, 7), dtype=np.float32)
    got, _, kernels = compile_and_run(model, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert len(kernels) == 1  # the kernel with the patches block


@pytest.mark.parametrize("channels,kernel,stride,padding,size", [
    (3, 7, 2, 3, (13, 13)),  # an RGB stem: kernel rows of 21 values, padded to runs of 24
    (1, (3, 5), (1, 2), (1, 0), (6, 9)),  # one channel: runs of 5 padded to 8 read 3 columns past the image
    (2, 3, 1, 1, (5, 7)),
    (4, 1, 1, 0, (5, 6)),  # nothing to pad: the patches read the input itself
])
def test_few_channel_convolution_copies_a_run_per_kernel_row_and_matches_torch(channels, kernel, stride, padding,
                                                                                size):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(channels, 32, kernel, stride, padding).eval()
    x = np.random.default_rng(4).standard_normal((2, channels, *size), dtype=np.float32)
    x[1, 0, 2, 3] = np.nan  # a NaN reaches the outputs whose window covers it, and only those
    got, _, kernels = compile_and_run(model, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (func,) = kernels.values()
    kw = kernel if isinstance(kernel, int) else kernel[1]
    run = -(-kw * channels // 4) * 4
    # the patches of a row: one vector copy per kernel row (not per tap), reading the padded input
    # without bounds checks
    assert tir.loops(func, "im2col")[-1] == tir.Loop(tir.loops(func, "im2col")[-1].var, run, "vectorized")
    assert tir.loops(func, "matmul_update")[-1].kind == "vectorized"
