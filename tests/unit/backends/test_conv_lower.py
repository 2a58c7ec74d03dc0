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
    dict(in_channels=16, out_channels=8, kernel_size=1),
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
