"""Move layout changes (permute_dims, reshape) past elementwise ops, so inverse pairs meet and cancel.

Convolutions on CPU targets run as NHWC im2col + matmul (conv_lower.py) inside a model written
in NCHW: each one ends with NHWC -> NCHW, and the next one starts with NCHW -> NHWC, with the
ReLU or residual add between them in NCHW. On resnet_small 12 of 19 kernels were such copies and
elementwise passes (~130 of 280 us at batch 1). Once every elementwise op runs on the
un-permuted, un-reshaped tensor the pairs cancel, and bias, residual add and ReLU fuse into the
matmul's epilogue. An int8 model's quantize (multiply and add by 0-d scalars, round, clip, astype)
sits between the ReLU and the next convolution's NCHW -> NHWC of its uint8 input: the layout
moves through it too, so that the pair cancels and the quantize runs in the int8 GEMM's epilogue.

Rules, applied until nothing changes (each keeps the values exactly):
  f(layout(y), *scalars)         -> layout(f(y, *scalars))  f unary elementwise (clip: its bounds)
  g(layout(a), layout(b))        -> layout(g(a, b))       same layout, a and b the same shape
  g(layout(a), s), g(s, layout(a)) -> layout(g(a, s)) ... s a 0-d tensor
  permute(permute(y, p), q)      -> y, or one permute     (composed)
  mean(permute(y, p), axes, keepdims) -> permute(mean(y, p[axes], keepdims), p)
  permute(concat(xs, axis), q)   -> concat(permute(x, q) for x in xs, axis')  when some x is a
                                    permute that q undoes (it cancels; the concat runs in NHWC)
"""
from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard

UNARY = ("relax.nn.relu", "relax.sigmoid", "relax.tanh", "relax.nn.gelu", "relax.nn.silu", "relax.exp",
         "relax.negative", "relax.abs", "relax.sqrt", "relax.round", "relax.astype")
WITH_BOUNDS = ("relax.clip",)  # unary with two scalar (PrimValue) arguments
BINARY = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum")
MAX_ROUNDS = 64  # each round moves every layout op at least one op down; models are far shallower


def _layout_of(value):
    """A pattern for permute_dims/reshape of `value` (reshape carries its shape as a second argument)."""
    return (is_op("relax.permute_dims")(value), is_op("relax.reshape")(value, wildcard()))


def _axes(permute) -> list[int]:
    axes = permute.attrs.axes
    return list(range(len(permute.args[0].ty.shape)))[::-1] if axes is None else [int(a) for a in axes]


def _same_layout(first, second) -> bool:
    if first.op.name != second.op.name:
        return False
    if first.op.name == "relax.permute_dims":
        return _axes(first) == _axes(second)
    return tvm_ffi.structural_equal(first.ty.shape, second.ty.shape)


def _redo(layout, value):
    """The layout change `layout` applied to `value` instead of its original input."""
    if layout.op.name == "relax.permute_dims":
        return relax.op.permute_dims(value, _axes(layout))
    return relax.op.reshape(value, layout.args[1])


def _static_shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return [int(d) for d in shape]


def _sink_through_elementwise(func):
    y, a, b = wildcard(), wildcard(), wildcard()
    for moved in _layout_of(y):
        def unary(call, m, moved=moved):
            return _redo(m[moved], relax.Call(call.op, [m[y], *call.args[1:]], call.attrs))
        for op in UNARY:
            func = rewrite_call(is_op(op)(moved), unary, func)
        for op in WITH_BOUNDS:
            func = rewrite_call(is_op(op)(moved, wildcard(), wildcard()), unary, func)
        func = _sink_past_scalars(func, moved, y)
    for left, right in zip(_layout_of(a), _layout_of(b)):
        def binary(call, m, left=left, right=right):
            shape = _static_shape(m[a])
            if (shape is None or shape != _static_shape(m[b]) or m[a].ty.dtype != m[b].ty.dtype
                    or not _same_layout(m[left], m[right])):
                return call
            return _redo(m[left], relax.Call(call.op, [m[a], m[b]], call.attrs))
        for op in BINARY:
            func = rewrite_call(is_op(op)(left, right), binary, func)
    return func


def _sink_past_scalars(func, moved, y):
    """g(layout(y), s) and g(s, layout(y)) -> layout(g(y, s)) for a 0-d tensor s (a quantize's scale
    and zero point): broadcasting a scalar does not depend on the layout."""
    s = wildcard()

    def scalar(call, m):
        if _static_shape(m[s]) != [] or m[y].ty.dtype != m[s].ty.dtype:
            return call
        args = [m[y], m[s]] if call.args[0].same_as(m[moved]) else [m[s], m[y]]
        return _redo(m[moved], relax.Call(call.op, args, call.attrs))
    for op in BINARY:
        func = rewrite_call(is_op(op)(moved, s), scalar, func)
        func = rewrite_call(is_op(op)(s, moved), scalar, func)
    return func


def _cancel_permutes(func):
    y = wildcard()
    inner = is_op("relax.permute_dims")(y)

    def cancel(call, m):
        first, second = _axes(m[inner]), _axes(call)
        composed = [first[i] for i in second]
        return m[y] if composed == sorted(composed) else relax.op.permute_dims(m[y], composed)

    def mean(call, m):
        if not call.attrs.keepdims or call.attrs.axis is None:
            return call
        axes = _axes(m[inner])
        return relax.op.permute_dims(relax.op.mean(m[y], [axes[int(i) % len(axes)] for i in call.attrs.axis],
                                                   keepdims=True), axes)

    func = rewrite_call(is_op("relax.permute_dims")(inner), cancel, func)
    return rewrite_call(is_op("relax.mean")(inner), mean, func)


def _hoist_into_concat(func):
    """permute(concat(xs, axis k), q) -> concat([permute(x, q) for x in xs], axis j), q[j] = k: an
    input that is itself a permute undone by q loses both (a U-Net's skip concatenation between a
    transposed convolution's NHWC output and the next convolution's NHWC input)."""
    bound, parts = relax.analysis.get_var2val(func), wildcard()
    concat = is_op("relax.concat")(parts)

    def value(expr):
        return bound.get(expr, expr) if isinstance(expr, relax.Var) else expr

    def undone(expr, axes) -> bool:
        expr = value(expr)
        return (isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.permute_dims"
                and [_axes(expr)[i] for i in axes] == list(range(len(axes))))

    def hoist(call, m):
        fields, axes = value(m[parts]), _axes(call)
        if not isinstance(fields, relax.Tuple) or m[concat].attrs.axis is None or not any(
                undone(f, axes) for f in fields.fields):
            return call
        axis = axes.index(int(m[concat].attrs.axis) % len(axes))
        return relax.op.concat([value(f).args[0] if undone(f, axes) else relax.op.permute_dims(f, axes)
                                for f in fields.fields], axis)
    return rewrite_call(is_op("relax.permute_dims")(concat), hoist, func)


def _per_call(func: relax.Function) -> set:
    """The variables that depend on the function's inputs, not only on its weights (the first
    `num_input` parameters are inputs): what depends on weights alone runs once at load
    (LiftTransformParams)."""
    count = func.attrs["num_input"] if func.attrs is not None and "num_input" in func.attrs else len(func.params)
    found = set(func.params[:int(count)])
    for block in getattr(func.body, "blocks", []):
        for binding in block.bindings:
            if any(var in found for var in relax.analysis.free_vars(binding.value)):
                found.add(binding.var)
    return found


def _permuted_elements(func: relax.Function) -> int:
    """How many elements the function's transposes copy per call (a reshape is a view; a weight's
    transpose runs once at load). Sinking a weight's layout past the astype of its column sums
    adds such a transpose and must not stop the activations' from cancelling."""
    total, per_call = 0, _per_call(func)

    def visit(expr):
        nonlocal total
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.permute_dims" and any(
                var in per_call for var in relax.analysis.free_vars(expr.args[0])):
            shape = _static_shape(expr)
            total += math.prod(shape) if shape is not None else 1
    relax.analysis.post_order_visit(func.body, visit)
    return total


def sink_layouts(func: relax.Function) -> relax.Function:
    """`func` with its layout changes moved down and cancelled; unchanged when that would copy more
    (a transposed tensor that other ops still read keeps its transpose, and one more is added)."""
    new = func
    for _ in range(MAX_ROUNDS):
        moved = _cancel_permutes(_hoist_into_concat(_sink_through_elementwise(new)))
        if moved.same_as(new) or tvm_ffi.structural_equal(moved, new):
            break
        new = moved
    return new if _permuted_elements(new) <= _permuted_elements(func) else func


@tvm.transform.module_pass(opt_level=0, name="SinkLayoutTransforms")
def SinkLayoutTransforms(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (a TVM pass)
    updates = {gv: sink_layouts(func) for gv, func in mod.functions.items() if isinstance(func, relax.Function)}
    for gv, func in updates.items():
        mod[gv] = func
    return mod
