"""Row reductions with their normalisation (schedules/row_reduction.py): LayerNorm, GroupNorm,
RMSNorm and softmax equal to eager PyTorch, each row's sums accumulated as a vector of partial
results inside the row's loop, rows in parallel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures import tir
from tests.fixtures.lowering import compile_and_run

nn = torch.nn


class RMSNorm(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, width))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Softmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x, -1)


def _run(model: nn.Module, shape: tuple, block: str):
    torch.manual_seed(0)
    model = model.eval()
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32) * 3
    got, _, kernels = compile_and_run(model, x, block)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    return kernels


def _partials_are_vectors_in_a_parallel_row(func, block: str, rows: int) -> None:
    loops = tir.loops(func, block)
    assert loops[0].kind == "parallel" and loops[0].extent == rows
    assert loops[-1].kind == "vectorized" and loops[-2].kind == "serial"  # steps of one vector each


@pytest.mark.parametrize("model, shape, block, rows", [
    (nn.LayerNorm(768), (1, 128, 768), "input_sum_rf_update", 128),
    (nn.Sequential(nn.GroupNorm(4, 32), nn.SiLU()), (1, 32, 32, 32), "input_red_temp_rf_update", 4),
    (Softmax(), (1, 12, 64, 64), "T_softmax_expsum_rf_update", 12 * 64),
])
def test_matches_torch_with_vector_partial_sums_per_row(model, shape, block, rows):
    (func,) = _run(model, shape, block).values()
    _partials_are_vectors_in_a_parallel_row(func, block, rows)


def test_groupnorm_stats_are_computed_once_per_group():
    """The last block's channels are split (groups, channels per group) to meet the stats' rows:
    no group's sums are recomputed for each of its channels."""
    (func,) = _run(nn.Sequential(nn.GroupNorm(4, 32), nn.SiLU()), (1, 32, 16, 16), "input_red_temp_rf_update").values()
    outer = tir.top_loops(func)
    assert len(outer) == 1 and outer[0].extent == 4


@pytest.mark.parametrize("shape", [(2, 16, 64), (1, 5, 17)])  # 17: no vector divides the row, left scalar
def test_rmsnorm_and_odd_rows_match_torch(shape):
    _run(RMSNorm(shape[-1]), shape, "T_multiply")
