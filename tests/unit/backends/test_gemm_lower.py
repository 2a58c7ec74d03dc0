"""float32 Linear layers and convolutions on CPU targets read their weights packed in column panels
(lower/gemm.py): equal to PyTorch with and without bias, on 2-D and 3-D inputs, at row counts the
register tile does not divide; widths that are not whole panels keep TVM's own matmul."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from tvm import s_tir

from accelc.backends.tvm.kernels import isa as isa_info
from accelc.backends.tvm.lower import gemm
from tests.fixtures import tir
from tests.fixtures.lowering import TARGET, compile_and_run

COLUMNS = gemm.panel_columns(isa_info.of(TARGET))  # 16 on the AVX2 test target


@pytest.mark.parametrize("shape,bias", [((5, 24), True), ((2, 7, 24), False), ((1, 24), True)])
def test_linear_over_packed_panels_matches_torch(shape, bias):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 2 * COLUMNS, bias=bias), torch.nn.GELU(),
                                torch.nn.Linear(2 * COLUMNS, COLUMNS)).eval()
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    got, main, _ = compile_and_run(model, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert "R.matmul" not in main and len(re.findall(r"R.call_tir\(matmul\d*,", main)) == 2  # both packed


def test_panel_layout_is_what_the_kernel_reads():
    """Panel p of B [K, N] holds B's columns p * COLUMNS ... (p + 1) * COLUMNS - 1, row by row
    (numpy reference of the layout)."""
    import tvm
    from tvm import relax
    w = np.random.default_rng(3).standard_normal((5, 2 * COLUMNS), dtype=np.float32)
    bb = relax.BlockBuilder()
    var = relax.Var("w", relax.TensorType(w.shape, "float32"))
    with bb.function("pack", [var]):
        with bb.dataflow():
            out = bb.emit_output(gemm.pack_columns(bb, var, COLUMNS))
        bb.emit_func_output(out)
    exe = tvm.compile(bb.get(), target=TARGET)
    got = relax.VirtualMachine(exe, tvm.cpu())["pack"](tvm.runtime.tensor(w)).numpy()
    want = np.stack([w[:, p * COLUMNS:(p + 1) * COLUMNS] for p in range(2)])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("rows", [1, 3])
def test_a_width_no_panel_divides_is_padded_to_whole_panels(rows):
    """A classifier's 1000 columns: the weight is padded with zero columns to whole panels at load,
    the kernel computes whole tiles and keeps the real columns (bias added to those)."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, COLUMNS + 3), torch.nn.ReLU()).eval()
    x = np.random.default_rng(2).standard_normal((rows, 8), dtype=np.float32)
    got, main, _ = compile_and_run(model, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert "R.matmul" not in main and "R.nn.pad" not in main  # the padding is lifted to load time


def test_narrower_than_a_panel_keeps_tvms_matmul():
    model = torch.nn.Linear(8, COLUMNS - 3).eval()
    x = np.random.default_rng(2).standard_normal((3, 8), dtype=np.float32)
    got, main, _ = compile_and_run(model, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert "R.matmul" in main


@pytest.mark.parametrize("out_channels", [COLUMNS, COLUMNS + 5])
def test_convolution_reads_panels_one_tile_wide(out_channels):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(5, out_channels, 3, padding=1).eval()
    x = np.random.default_rng(4).standard_normal((1, 5, 7, 9), dtype=np.float32)
    got, main, kernels = compile_and_run(model, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (func,) = kernels.values()
    # the weight parameter is 3-D panels and the vectorised loop spans one panel
    sch = s_tir.Schedule(func)
    read = [r.source.shape for r in sch.get(sch.get_sblock("matmul_update")).reads]
    assert any(len(shape) == 3 and int(shape[2]) == COLUMNS for shape in read), read
    assert COLUMNS in {loop.extent for loop in tir.all_loops(func) if loop.kind == "vectorized"}


def test_attention_scores_with_columns_no_whole_tile_pad_b_and_c():
    """Q.Kᵀ with 19 keys (attention at a length no tile divides): B and C padded to whole vectors
    of columns (a `_pad` block) instead of a scalar tail, equal to numpy with its scale epilogue."""
    import tvm
    from tvm import te
    from accelc.backends.tvm.kernels import tags
    from accelc.backends.tvm.schedules.matmul import Matmul
    q, kt = te.placeholder((2, 13, 8), name="q"), te.placeholder((2, 8, 19), name="kt")
    k = te.reduce_axis((0, 8), name="k")
    scores = te.compute((2, 13, 19), lambda b, i, j: te.sum(q[b, i, k] * kt[b, k, j], axis=k), name="matmul",
                        attrs=tags.attrs(tags.GEMM))
    scaled = te.compute((2, 13, 19), lambda b, i, j: scores[b, i, j] * 0.125, name="T_multiply")
    sch = Matmul().apply(te.create_prim_func([q, kt, scaled]), TARGET, False)
    func = sch.mod["main"]
    assert any(name.endswith("_pad") for name in tir.blocks(func))
    assert COLUMNS in {loop.extent for loop in tir.all_loops(func) if loop.kind == "vectorized"}
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 13, 8), dtype=np.float32), rng.standard_normal((2, 8, 19), dtype=np.float32)
    out = tvm.runtime.tensor(np.zeros((2, 13, 19), np.float32))
    exe = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=TARGET)
    exe.mod["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
    np.testing.assert_allclose(out.numpy(), (a @ b) * 0.125, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m,avx512,rows", [(128, False, 4), (196, False, 4), (49, False, 4), (18, False, 6),
                                            (3136, True, 8), (196, True, 7), (49, True, 7), (197, True, 6),
                                            (5, True, 5)])
def test_register_tile_rows_divide_m_where_the_registers_allow(m, avx512, rows):
    from accelc.backends.tvm.kernels.isa import Isa
    from accelc.backends.tvm.schedules.matmul import tile_rows
    assert tile_rows(m, Isa("x86_64", avx2=True, fma=True, avx512f=avx512)) == rows
