"""Vectorisable float32 log, exp, erf, tanh and small constant powers for CPU (LLVM) targets.

TVM lowers `log`/`exp`/`erf` to LLVM intrinsics or libm calls, one call per lane: a vectorised
loop stalls on 8 scalar calls per vector (edu_churn's log1p preprocessing; the GELU that BERT and
ViT apply in their largest GEMMs' epilogue). These rules expand the call into polynomials (Cephes
as in sse_mathfun / Eigen for log and exp, Eigen's rational erf) built from plain arithmetic and
bit operations, which LLVM keeps in vector registers. Accuracy
(tests/unit/backends/test_vector_math.py, against numpy/math in float64): log within 1 ulp over
all positive floats, denormals included; exp within 2 ulp over its whole range, denormal results
included; erf and tanh (Eigen's rational forms) within 4e-7 and 3e-7 absolute; zero, negatives,
infinities and NaN give what libm gives. `pow(x, c)` with c one of POWERS (GPT-2's tanh GELU cubes
its input) is multiplied out as torch does on CPU (x * x * x), instead of one powf call per lane.
"""
from __future__ import annotations

import math

import tvm
from tvm import tirx

_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
          -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
          5.0000001201e-1)
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 split so that e * ln2 stays exact
_MIN_NORMAL = 1.1754943508222875e-38
_EXP_HI, _EXP_LO = 88.72283935546875, -104.0  # exp overflows above / rounds to zero below

_ERF_ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
              -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_BETA = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
             -1.42647390514189e-02)
_ERF_EDGE = 4.0  # erf(4) rounds to 1 in float32: the rational form is fitted on [-4, 4]
_TANH_ALPHA = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
               1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_BETA = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)
_TANH_EDGE, _TANH_TINY = 7.90531110763549805, 0.0004  # the rational form's range; tanh(x) rounds to x below
_TANH_ONE = 9.1  # float32 tanh rounds to ±1 beyond

# constant exponents multiplied out as torch's CPU pow does (it calls std::pow for the others)
POWERS = {1.0: lambda x: x, 2.0: lambda x: x * x, 3.0: lambda x: x * x * x}

_installed = False


def _types(op) -> tuple | None:
    """(float dtype, int32 dtype, float constant, int constant) with the call's lanes, or None
    when the call is not float32."""
    f = str(op.ty.dtype)
    if not f.startswith("float32"):
        return None
    i = "int32" + f[len("float32"):]  # lanes: '' or 'x8'
    return f, i, (lambda v: tirx.const(v, f)), (lambda v: tirx.const(v, i))


def _horner(x, coefficients, const):
    y = const(coefficients[0])
    for c in coefficients[1:]:
        y = y * x + const(c)
    return y


def _let(value, dtype: str, body):
    """Bind `value` once: the argument of log/exp is often a whole fused expression (loads,
    selects) and the rules read it several times; without a binding it is recomputed each time."""
    var = tirx.Var("v", dtype)
    return tirx.Let(var, value, body(var))


def fast_log(op, fallback):
    types = _types(op)
    if types is None:
        return fallback(op)
    f, i, c, ci = types

    def on(x0):
        tiny = x0 < c(_MIN_NORMAL)
        x = tirx.Select(tiny, x0 * c(2.0 ** 23), x0)  # denormals: scale into the normal range
        return _let(tirx.reinterpret(i, x), i, lambda bits: _let(
            tirx.reinterpret(f, tirx.bitwise_or(tirx.bitwise_and(bits, ci(0x007FFFFF)), ci(0x3F000000))),  # [0.5, 1)
            f, lambda m0: finish(x0, tiny, bits, m0)))

    def finish(x0, tiny, bits, m0):
        e = tirx.Cast(f, tirx.shift_right(bits, ci(23)) - ci(126)) - tirx.Select(tiny, c(23.0), c(0.0))
        below = m0 < c(math.sqrt(0.5))  # keep the polynomial's argument in [sqrt(1/2) - 1, sqrt(2) - 1]
        e = e - tirx.Select(below, c(1.0), c(0.0))
        return _let(e, f, lambda e: _let(tirx.Select(below, m0 + m0, m0) - c(1.0), f, lambda m: _let(
            m * m, f, lambda z: special(
                x0, m + (_horner(m, _LOG_P, c) * m * z + e * c(_LN2_LO) - c(0.5) * z) + e * c(_LN2_HI)))))

    def special(x0, r):
        r = tirx.Select(x0 == c(0.0), c(-math.inf), r)
        r = tirx.Select(x0 == c(math.inf), c(math.inf), r)
        return tirx.Select((x0 < c(0.0)) | tirx.isnan(x0), c(math.nan), r)

    return _let(op.args[0], f, on)


def fast_exp(op, fallback):
    types = _types(op)
    if types is None:
        return fallback(op)
    f, i, c, ci = types
    power = lambda k: tirx.reinterpret(f, tirx.shift_left(tirx.Cast(i, k) + ci(127), ci(23)))  # noqa: E731

    def on(x0):
        clamped = tirx.max(tirx.min(x0, c(_EXP_HI)), c(_EXP_LO))
        # exp(x) = 2^n * exp(x - n ln2)
        return _let(clamped, f, lambda x: _let(tirx.floor(x * c(1.0 / math.log(2.0)) + c(0.5)), f, lambda n: _let(
            x - n * c(_LN2_HI) - n * c(_LN2_LO), f, lambda r: finish(x0, n, r))))

    def finish(x0, n, r):
        y = _horner(r, _EXP_P, c) * r * r + r + c(1.0)
        # 2^n as two normal powers of two, so that n = 128 (overflow edge) and n < -126 (denormal
        # results) need no special case: the products round exactly as IEEE multiplication does.
        half = tirx.floor(n * c(0.5))
        out = y * power(half) * power(n - half)
        out = tirx.Select(x0 > c(_EXP_HI), c(math.inf), out)
        out = tirx.Select(x0 < c(_EXP_LO), c(0.0), out)
        return tirx.Select(tirx.isnan(x0), x0, out)

    return _let(op.args[0], f, on)


def fast_erf(op, fallback):
    types = _types(op)
    if types is None:
        return fallback(op)
    f, _, c, _ = types

    def on(x0):
        x = tirx.max(tirx.min(x0, c(_ERF_EDGE)), c(-_ERF_EDGE))
        return _let(x, f, lambda x: _let(x * x, f, lambda x2: tirx.Select(
            tirx.isnan(x0), x0, x * _horner(x2, _ERF_ALPHA, c) / _horner(x2, _ERF_BETA, c))))

    return _let(op.args[0], f, on)


def fast_tanh(op, fallback):
    """Eigen's rational tanh: one division where TVM's lowering computes exp(2x) and exp(-2x)."""
    types = _types(op)
    if types is None:
        return fallback(op)
    f, _, c, _ = types

    def on(x0):
        x = tirx.max(tirx.min(x0, c(_TANH_EDGE)), c(-_TANH_EDGE))
        return _let(x, f, lambda x: _let(x * x, f, lambda x2: tirx.Select(
            tirx.isnan(x0) | (tirx.abs(x0) < c(_TANH_TINY)), x0, tirx.Select(
                tirx.abs(x0) > c(_TANH_ONE), tirx.Select(x0 > c(0.0), c(1.0), c(-1.0)),
                x * _horner(x2, _TANH_ALPHA, c) / _horner(x2, _TANH_BETA, c)))))

    return _let(op.args[0], f, on)


def _constant(expr) -> float | None:
    """The value of a float immediate, or of a broadcast one in vectorised code."""
    if isinstance(expr, tirx.Broadcast):
        expr = expr.value
    return float(expr.value) if isinstance(expr, tirx.FloatImm) else None


def fast_pow(op, fallback):
    power = POWERS.get(_constant(op.args[1]))
    if _types(op) is None or power is None:
        return fallback(op)
    return _let(op.args[0], str(op.ty.dtype), power)


def install() -> None:
    """Register the rules for LLVM targets (x86 and ARM); other dtypes keep TVM's lowering.
    Idempotent; process-wide, like every TVM intrinsic rule."""
    global _installed
    if _installed:
        return
    for name, rule in (("tirx.log", fast_log), ("tirx.exp", fast_exp), ("tirx.erf", fast_erf),
                       ("tirx.tanh", fast_tanh), ("tirx.pow", fast_pow)):
        fallback = tvm.ir.Op.get(name).get_attr("llvm.FLowerIntrinsic") or (lambda op: op)  # erf: a libm call
        tirx.register_intrin_lowering(name, target="llvm", f=lambda op, r=rule, fb=fallback: r(op, fb), level=99)
    _installed = True
