"""The vectorisable log/exp/erf rules: accurate to an ulp or two against float64 numpy, libm's answers
for the special values, and really free of per-lane libm calls once vectorised."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from accelc.backends.tvm.schedules import vector_math

TARGET = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"})
N = 1 << 14


def kernel(name: str, vectorised: bool, exponent: float = 3.0):
    op = {"log": T.log, "exp": T.exp, "erf": T.erf, "tanh": T.tanh,
          "pow": lambda x: T.pow(x, T.float32(exponent))}[name]
    if vectorised:
        @T.prim_func(s_tir=True)
        def f(a: T.Buffer((N,), "float32"), b: T.Buffer((N,), "float32")):
            for i0 in range(N // 8):
                for i1 in T.vectorized(8):
                    with T.sblock("b"):
                        vi = T.axis.spatial(N, i0 * 8 + i1)
                        b[vi] = op(a[vi])
    else:
        @T.prim_func(s_tir=True)
        def f(a: T.Buffer((N,), "float32"), b: T.Buffer((N,), "float32")):
            for i in range(N):
                with T.sblock("b"):
                    vi = T.axis.spatial(N, i)
                    b[vi] = op(a[vi])
    vector_math.install()
    return tvm.compile(f, target=TARGET)


def run(module, values: np.ndarray) -> np.ndarray:
    padded = np.ones(N, np.float32)
    padded[: len(values)] = values
    out = tvm.runtime.tensor(np.zeros(N, np.float32))
    module(tvm.runtime.tensor(padded), out)
    return out.numpy()[: len(values)]


def ulps(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Error in units of the float32 spacing at the exact value."""
    return np.abs(got.astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)


SPECIAL = {"log": np.array([0.0, -0.0, -1.0, -np.inf, np.inf, np.nan], np.float32),
           "exp": np.array([0.0, -0.0, -np.inf, np.inf, np.nan, -200.0, 200.0], np.float32)}


@pytest.mark.parametrize("vectorised", [True, False])
def test_log_is_within_one_ulp_over_all_positive_floats(vectorised):
    rng = np.random.default_rng(0)
    normal = np.exp2(rng.uniform(-126, 128, N - 64)).astype(np.float32)
    edges = np.array([1e-45, 1e-40, 1.17549435e-38, 0.5, 0.70710677, 0.7071068, 1.0, 1.0000001, 2.0,
                      3.4028235e38], np.float32)
    values = np.concatenate([normal, edges])
    got = run(kernel("log", vectorised), values)
    assert ulps(got, np.log(values.astype(np.float64))).max() <= 1.0


@pytest.mark.parametrize("name", ["log", "exp"])
def test_special_values_follow_libm(name):
    got = run(kernel(name, True), SPECIAL[name])
    with np.errstate(all="ignore"):
        expected = getattr(np, name)(SPECIAL[name])
    np.testing.assert_array_equal(got, expected)


def test_exp_is_within_two_ulp_over_its_whole_range():
    rng = np.random.default_rng(1)
    edges = [88.72283, 88.7229, 88.4, -87.3, -87.4, -100.0, -103.9, -104.5]  # overflow, denormal edges
    values = np.concatenate([rng.uniform(-104, 88.72, N - 64), rng.uniform(-5, 5, 32), edges]).astype(np.float32)
    got = run(kernel("exp", True), values)
    with np.errstate(over="ignore"):
        exact = np.exp(values.astype(np.float64))
    finite = exact < np.finfo(np.float32).max
    assert ulps(got[finite], exact[finite]).max() <= 2.0
    assert np.isinf(got[~finite]).all()


def test_erf_is_within_4e7_of_the_exact_value_and_keeps_its_special_values():
    """GELU's erf (BERT, ViT): float64 math.erf as the reference; ±inf -> ±1, NaN stays NaN."""
    import math
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.uniform(-6, 6, N - 64), np.linspace(-4.5, 4.5, 40), [1e-30, -1e-30, 0.0]])
    values = values.astype(np.float32)
    got = run(kernel("erf", True), values)
    exact = np.array([math.erf(float(v)) for v in values])
    assert np.abs(got.astype(np.float64) - exact).max() <= 4e-7
    special = run(kernel("erf", True), np.array([np.inf, -np.inf, np.nan, -0.0], np.float32))
    np.testing.assert_array_equal(special[[0, 1, 3]], [1.0, -1.0, -0.0])
    assert np.isnan(special[2]) and np.signbit(special[3])


def test_tanh_is_within_3e7_of_the_exact_value_and_keeps_its_special_values():
    """GPT-2's GELU (tanh form): float64 numpy as the reference; ±inf -> ±1, NaN stays NaN, -0 stays -0."""
    rng = np.random.default_rng(4)
    values = np.concatenate([rng.uniform(-10, 10, N - 64), np.linspace(-1e-3, 1e-3, 40),
                             [7.9, 7.91, -7.91, 1e-30, -1e-30, 0.0004, -0.0004]]).astype(np.float32)
    got = run(kernel("tanh", True), values)
    assert np.abs(got.astype(np.float64) - np.tanh(values.astype(np.float64))).max() <= 3e-7
    special = run(kernel("tanh", True), np.array([np.inf, -np.inf, np.nan, -0.0], np.float32))
    np.testing.assert_array_equal(special[[0, 1, 3]], [1.0, -1.0, -0.0])
    assert np.isnan(special[2]) and np.signbit(special[3])


@pytest.mark.parametrize("name", ["log", "exp", "erf", "tanh"])
def test_vectorised_code_calls_no_libm(name):
    """TVM's own lowering leaves `llvm.log.v8f32`, which LLVM expands into 8 calls to logf (erf: 8
    calls to erff)."""
    module = kernel(name, True).mod
    assert f"llvm.{name}." not in module.inspect_source("ll")
    assert f"{name}f" not in module.inspect_source("asm")


@pytest.mark.parametrize("exponent", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("vectorised", [True, False])
def test_small_constant_powers_are_torch_pow_and_call_no_powf(exponent, vectorised):
    """GPT-2's GELU cubes its input: multiplied out as torch's CPU pow does, so bit-equal to it
    special values included; no powf call left."""
    import torch
    values = np.concatenate([np.random.default_rng(3).standard_normal(N - 64) * 8,
                             [0.0, -0.0, np.inf, -np.inf, np.nan, 1e20, -1e-30, 3.4e38]]).astype(np.float32)
    module = kernel("pow", vectorised, exponent)
    got = run(module, values)
    expected = torch.pow(torch.from_numpy(values), exponent).numpy()
    np.testing.assert_array_equal(got, expected)
    assert "powf" not in module.mod.inspect_source("asm")


@pytest.mark.parametrize("exponent", [2.5, 4.0])
def test_other_powers_keep_libm(exponent):
    values = np.array([0.5, 2.0, 9.0, -3.0], np.float32)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(run(kernel("pow", True, exponent), values), values.astype(np.float64) ** exponent,
                                   rtol=1e-6)
