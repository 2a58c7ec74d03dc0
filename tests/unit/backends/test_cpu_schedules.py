"""The default CPU schedules on whole models: numerically exact on odd shapes, with the loop
structure each rule promises (asserted on the scheduled kernels' loops, not their text)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from hypothesis import given, settings, strategies as st

from accelc.config import host_cpu as host
from accelc.config import targets
from accelc.backends.tvm.lower import relax as lower
from accelc.capture.export import drop_guards
from accelc.config.recipe import InputSpec
from tests.fixtures import tir

TARGET = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"})


class LinearRelu(torch.nn.Module):
    def __init__(self, k: int, n: int):
        super().__init__()
        self.fc = torch.nn.Linear(k, n)

    def forward(self, x):
        return torch.relu(self.fc(x))


class BatchedMatmul(torch.nn.Module):
    def forward(self, a, b):
        return torch.matmul(a, b) * 0.5


def compile_and_run(model, inputs, specs, target=TARGET):
    graph = torch.export.export(model, tuple(torch.from_numpy(a) for a in inputs)).module()
    drop_guards(graph)
    lowered = lower.to_relax(lower.export_programs(graph, specs, [inputs[0].shape[0]]), target)
    vm = tvm.relax.VirtualMachine(lower.compile_module(lowered, target), tvm.cpu())
    params = vm["transform_params"]([tvm.runtime.tensor(p) for p in lowered.params.values()]) \
        if lowered.params else []
    out = vm[lower.function_name(inputs[0].shape[0])](*[tvm.runtime.tensor(a) for a in inputs], *params)
    return out.numpy(), lowered, scheduled(lowered, target)  # one output: returned unwrapped


def scheduled(lowered, target=TARGET):
    """The module's kernels as the pipeline schedules them."""
    from accelc.backends.tvm.pipeline import build_pipeline
    with target:
        return build_pipeline(target)(lowered.mod)


def vector_widths(mod) -> set[int]:
    """The extents of every vectorised loop of every kernel."""
    return {loop.extent for func in tir.kernels(mod).values() for loop in tir.all_loops(func) if loop.kind == "vectorized"}


@settings(max_examples=6, deadline=None)
@given(m=st.integers(1, 37), k=st.sampled_from([1, 7, 12, 37, 39]) | st.integers(1, 40), n=st.integers(1, 50))
def test_linear_relu_matches_torch_on_odd_shapes(m, k, n):
    torch.manual_seed(0)
    model = LinearRelu(k, n).eval()
    x = np.random.default_rng(m * 1000 + k).standard_normal((m, k), dtype=np.float32)
    got, _, _ = compile_and_run(model, [x], [InputSpec(name="x", shape=["batch", k])])
    want = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_matmul_is_tiled_vectorised_and_accumulates_in_a_tile_on_the_stack():
    model = LinearRelu(64, 64).eval()
    x = np.ones((32, 64), np.float32)
    _, lowered, mod = compile_and_run(model, [x], [InputSpec(name="x", shape=["batch", 64])])
    func = tir.kernel_with(mod, "matmul_update")
    loops = [(loop.kind, loop.extent) for loop in tir.loops(func, "matmul_update")]
    # row tiles in parallel; 8 steps of k per loop iteration (loop overhead is not paid per step of
    # 8 FMAs), then the tile's 4 rows unrolled and its 2 vectors of 8 columns
    assert loops == [("parallel", 8), ("serial", 4), ("serial", 8), ("unrolled", 8), ("unrolled", 4),
                     ("vectorized", 16)], loops
    # the accumulator tile is a small buffer per tile, not a workspace allocated and freed per tile
    assert tir.buffers(func) == {"matmul_intermediate_global": "global"}
    executable = lower.compile_module(lowered, TARGET)
    code = "\n".join(m.inspect_source("asm") for m in [executable.mod, *executable.mod.imports] if m.kind == "llvm")
    assert "vfmadd" in code and "TVMBackendAllocWorkspace" not in code


def test_batched_matmul():
    a = np.random.default_rng(0).standard_normal((3, 5, 7), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((3, 7, 9), dtype=np.float32)
    specs = [InputSpec(name="a", shape=["batch", 5, 7]), InputSpec(name="b", shape=["batch", 7, 9])]
    got, _, _ = compile_and_run(BatchedMatmul(), [a, b], specs)
    np.testing.assert_allclose(got, np.matmul(a, b) * 0.5, rtol=1e-5, atol=1e-5)


class Preprocess(torch.nn.Module):
    """Elementwise chain like edu_churn's folded cleaning: NaN fill, clamp, log1p, standardise."""

    def forward(self, x):
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
        return (torch.log1p(torch.clamp(x, 0.0, 50.0)) - 0.5) / 2.0


@pytest.mark.parametrize("rows", [1, 3, 700])  # scalar tail, tiny, and large enough to go parallel
def test_elementwise_chain_is_fused_vectorised_and_exact(rows):
    x = np.random.default_rng(rows).standard_normal((rows, 27), dtype=np.float32) * 10
    x[::3, 5] = np.nan
    got, _, mod = compile_and_run(Preprocess(), [x], [InputSpec(name="x", shape=["batch", 27])])
    want = Preprocess()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    if rows * 27 >= 8:
        assert vector_widths(mod) == {8}


class Head(torch.nn.Module):
    """A one-column classifier head: the matrix-vector rule (lanes across k, then added up)."""

    def __init__(self, k: int):
        super().__init__()
        self.fc = torch.nn.Linear(k, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))


# one row, one lane group, groups of 8 rows in parallel, k not unrolled, groups of 4 rows
@pytest.mark.parametrize("rows, k", [(1, 64), (5, 8), (2048, 64), (3, 160), (12, 24)])
def test_one_column_matmul_sums_in_lanes_and_matches_torch(rows, k):
    torch.manual_seed(rows)
    model = Head(k).eval()
    x = np.random.default_rng(rows).standard_normal((rows, k), dtype=np.float32)
    got, _, mod = compile_and_run(model, [x], [InputSpec(name="x", shape=["batch", k])])
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    func = tir.kernel_with(mod, "matmul_rf_update")  # lanes summed across k, then added up
    assert any(loop.kind == "vectorized" for loop in tir.loops(func, "matmul_rf_update"))
    if rows % 4 == 0:  # one loop over groups of rows: lane sums, totals and sigmoid inside it
        top = [loop.extent for loop in tir.top_loops(func)]
        assert top == [rows // (8 if rows % 8 == 0 else 4)], top


class Concat(torch.nn.Module):
    """edu_churn's shape of preprocessing: standardised columns next to one-hot codes."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        num = (torch.log1p(torch.clamp(x[:, :16], 0.0, 50.0)) - 0.5) / 2.0
        one_hot = (x[:, 16:17] == torch.arange(5, dtype=x.dtype)).to(x.dtype)
        if self.dim == 0:
            return torch.cat([num, torch.relu(x[:, :16])], dim=0)
        return torch.cat([num, one_hot, x[:, 17:20] * 2.0], dim=1)


@pytest.mark.parametrize("rows, dim", [(1, 1), (3, 1), (1500, 1), (3, 0), (1500, 0)])
def test_concatenations_match_torch_row_by_row_or_along_rows(rows, dim):
    x = np.random.default_rng(rows).standard_normal((rows, 20), dtype=np.float32) * 5
    x[:, 16] = np.random.default_rng(1).integers(-1, 7, rows)
    got, _, mod = compile_and_run(Concat(dim), [x], [InputSpec(name="x", shape=["batch", 20])])
    np.testing.assert_allclose(got, Concat(dim)(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)
    assert vector_widths(mod)


@pytest.mark.skipif(not {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= host.cpu_flags(),
                    reason="this machine cannot run AVX-512 code")
def test_avx512_target_runs_rows_narrower_than_a_register_as_8_lane_vectors():
    """16 float lanes: edu_churn's 24-wide rows are three 8-lane vectors, not unrolled scalars."""
    avx512 = targets.resolve("x86-avx512").tvm_target()
    x = np.random.default_rng(0).standard_normal((700, 24), dtype=np.float32) * 5
    got, _, mod = compile_and_run(Preprocess(), [x], [InputSpec(name="x", shape=["batch", 24])], avx512)
    np.testing.assert_allclose(got, Preprocess()(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)
    assert vector_widths(mod) == {8}
    model = LinearRelu(24, 48).eval()
    got, _, mod = compile_and_run(model, [x], [InputSpec(name="x", shape=["batch", 24])], avx512)
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    tile = tir.loops(tir.kernel_with(mod, "matmul_update"), "matmul_update")
    assert (tile[-1].kind, tile[-1].extent) == ("vectorized", 32)  # the tile's columns: two AVX-512 registers
    head = Head(40).eval()  # k = 40: summed in 8-lane halves
    got, _, mod = compile_and_run(head, [x[:, :1].repeat(40, 1)], [InputSpec(name="x", shape=["batch", 40])],
                                  avx512)
    np.testing.assert_allclose(got, head(torch.from_numpy(x[:, :1].repeat(40, 1))).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    lanes = tir.loops(tir.kernel_with(mod, "matmul_rf_update"), "matmul_rf_update")
    assert ("vectorized", 8) in [(loop.kind, loop.extent) for loop in lanes]


class Pools(torch.nn.Module):
    """A channels-last global average pool and a column sum (kept axis innermost), then a row sum
    (the contiguous axis reduced: not the kept-inner rule's case)."""

    def forward(self, x):
        pooled = x.mean(dim=(1, 2), keepdim=True)
        return pooled.flatten(1) + x.sum(dim=1).sum(dim=1) + x.sum(dim=-1).sum(dim=(1, 2), keepdim=True)[:, :, 0]


@pytest.mark.parametrize("channels", [16, 12, 7])
def test_reductions_over_outer_axes_run_the_kept_axis_in_vectors_and_match_torch(channels):
    x = np.random.default_rng(channels).standard_normal((3, 5, 6, channels), dtype=np.float32)
    got, _, mod = compile_and_run(Pools(), [x], [InputSpec(name="x", shape=["batch", 5, 6, channels])])
    np.testing.assert_allclose(got, Pools()(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-4)
    mean = tir.kernels(mod)["mean"]
    (update,) = [name for name in tir.blocks(mean) if "_red" in name and not name.endswith("_init")]
    loops = [(loop.kind, loop.extent) for loop in tir.loops(mean, update) if loop.extent != 1]  # not keepdims' 1s
    if channels % 4 == 0:  # the reduced axes outside, the channels inside them in vectors of 4+ lanes
        vector = 8 if channels % 8 == 0 else 4
        assert loops == [("serial", 3), ("serial", 5), ("serial", 6), ("serial", channels // vector),
                         ("vectorized", vector)], loops
    else:
        assert "vectorized" not in [kind for kind, _ in loops], loops
