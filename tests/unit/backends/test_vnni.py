"""The AVX-512 VNNI micro-kernel (vpdpbusd): one table row and one intrinsic. A quantized Linear
built for an AVX-512 VNNI target carries vpdpbusd in its machine code on any host; where this
CPU has avx512_vnni it runs, bit-exact against the AVX2 pair-multiply kernel and a numpy int32
reference, with full 8-bit activations (which the AVX2 kernel cannot take exactly)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import te

from accelc.backends.tvm import intrin
from accelc.backends.tvm.kernels import isa as isa_info
from accelc.backends.tvm.kernels import microkernels
from accelc.backends.tvm.lower import quant
from accelc.backends.tvm.lower import relax as lower
from accelc.backends.tvm.schedules import choose
from accelc.capture.export import drop_guards
from accelc.config import host_cpu
from accelc.config.recipe import InputSpec
from accelc.passes.quantize_ops import ops
from tests.fixtures import tir

HASWELL = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"})
VNNI = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"})
HOST_HAS_VNNI = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= host_cpu.cpu_flags()
needs_vnni = pytest.mark.skipif(not HOST_HAS_VNNI, reason="this CPU has no AVX-512 VNNI to run the kernel on")


class QuantizedLinear(nn.Module):
    """quantize -> int8 Linear with fixed parameters: the eager ops are the exact reference."""

    def __init__(self, depth: int, outputs: int, qmax: int):
        super().__init__()
        g = torch.Generator().manual_seed(outputs)
        self.qmax = qmax
        self.w = nn.Buffer(torch.randint(-127, 128, (outputs, depth), generator=g, dtype=torch.int8))
        self.w_scale = nn.Buffer(torch.rand(outputs, generator=g) * 0.01)
        self.bias = nn.Buffer(torch.randn(outputs, generator=g))
        self.scale, self.zero_point = nn.Buffer(torch.tensor(0.04)), nn.Buffer(torch.tensor(5, dtype=torch.int32))

    def forward(self, x):
        q = ops.quantize(x, self.scale, self.zero_point, 0, self.qmax)
        return ops.linear_int8(q, self.scale, self.zero_point, self.w, self.w_scale, self.bias)


def build(model: nn.Module, x: np.ndarray, target):
    """(executable, its machine code, lowered) of `model` at x's batch size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.export.export(model, (torch.from_numpy(x),)).module()
    drop_guards(graph)
    spec = InputSpec(name="x", shape=["batch", x.shape[1]])
    lowered = lower.to_relax(lower.export_programs(graph, [spec], [x.shape[0]]), target)
    executable = lower.compile_module(lowered, target)
    code = "\n".join(m.inspect_source("asm") for m in [executable.mod, *executable.mod.imports] if m.kind == "llvm")
    return executable, code, lowered


def run(executable, lowered, x: np.ndarray) -> np.ndarray:
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    params = vm["transform_params"]([tvm.runtime.tensor(p) for p in lowered.params.values()])
    return vm[lower.function_name(x.shape[0])](tvm.runtime.tensor(x), *params).numpy()


def test_the_vnni_kernel_is_a_row_and_an_intrinsic():
    (row,) = [k for k in microkernels.KERNELS if k.requires == "avx512_vnni"]
    assert (row.packing, row.activation_bits) == ((16, 4), 8)
    assert intrin.register(row) == row.intrin and tvm.s_tir.TensorIntrin.get(row.intrin) is not None
    assert row in microkernels.usable(isa_info.of(VNNI)) and row not in microkernels.usable(isa_info.of(HASWELL))


@pytest.mark.parametrize("qmax", [127, 255], ids=["7-bit", "8-bit"])
def test_a_quantized_linear_for_a_vnni_target_runs_on_vpdpbusd(qmax):
    """Compiled on any host (cross-compiling needs no VNNI); run where the CPU has it."""
    model = QuantizedLinear(40, 64, qmax).eval()
    x = np.random.default_rng(qmax).standard_normal((24, 40)).astype(np.float32) * 4
    executable, code, lowered = build(model, x, VNNI)
    assert "vpdpbusd" in code and "vpmaddubsw" not in code
    assert [gv.name_hint for gv in lowered.mod.get_global_vars() if gv.name_hint.startswith("qgemm")] == ["qgemm"]
    if HOST_HAS_VNNI:
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(run(executable, lowered, x), want)  # eager sums exactly in float64


@needs_vnni
def test_vnni_linear_is_bit_exact_against_the_avx2_kernel():
    model = QuantizedLinear(36, 48, 127).eval()  # 7-bit activations: what the AVX2 kernel takes exactly
    x = np.random.default_rng(7).standard_normal((8, 36)).astype(np.float32) * 4
    vnni, vnni_code, vnni_lowered = build(model, x, VNNI)
    avx2, avx2_code, avx2_lowered = build(model, x, HASWELL)
    assert "vpdpbusd" in vnni_code and "vpmaddubsw" in avx2_code and "vpdpbusd" not in avx2_code
    np.testing.assert_array_equal(run(vnni, vnni_lowered, x), run(avx2, avx2_lowered, x))


def gemm(kernel: microkernels.MicroKernel, bits: int, target, rows: int = 20, depth: int = 68, columns: int = 64):
    """The int8 GEMM kernel for `kernel`, scheduled for `target`, compiled; and its packed operands' shapes."""
    a = te.placeholder((rows, depth), "uint8", "a")
    w = te.placeholder((columns // kernel.columns, depth // kernel.k_group, *kernel.packing), "int8", "w")
    rule, sch = choose(te.create_prim_func([a, w, quant.qgemm(a, w, columns, kernel=kernel, bits=bits)]), target)
    return sch, tvm.compile(sch.mod, target=target)


def call(lib, a: np.ndarray, w: np.ndarray, kernel: microkernels.MicroKernel) -> np.ndarray:
    columns, k_group = kernel.packing
    n, k = w.shape
    packed = np.ascontiguousarray(w.reshape(n // columns, columns, k // k_group, k_group).transpose(0, 2, 1, 3))
    out = tvm.runtime.tensor(np.zeros((a.shape[0], n), np.int32))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(packed), out)
    return out.numpy()


@needs_vnni
def test_vnni_gemm_equals_numpy_int32_and_the_avx2_kernel():
    vnni_row, avx2_row = microkernels.by_name("avx512_vnni"), microkernels.by_name("avx2_pairs")
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (64, 68), dtype=np.int8)  # -128 too: vpdpbusd takes any int8
    full = rng.integers(0, 256, (20, 68), dtype=np.uint8)
    full[0], w[0] = 255, -128  # the extreme products, where a 16-bit pair sum would saturate
    reference = full.astype(np.int32) @ w.astype(np.int32).T
    sch, vnni = gemm(vnni_row, 8, VNNI)
    assert tir.tensorized(sch) == [vnni_row.intrin]
    np.testing.assert_array_equal(call(vnni, full, w, vnni_row), reference)
    narrow = full >> 1  # 7-bit activations: the AVX2 kernel's exact range
    w[0] = -127
    sch, avx2 = gemm(avx2_row, 7, HASWELL)
    assert tir.tensorized(sch) == [avx2_row.intrin]
    np.testing.assert_array_equal(call(vnni, narrow, w, vnni_row), call(avx2, narrow, w, avx2_row))
    np.testing.assert_array_equal(call(vnni, narrow, w, vnni_row), narrow.astype(np.int32) @ w.astype(np.int32).T)
