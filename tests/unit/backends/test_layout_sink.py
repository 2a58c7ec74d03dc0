"""Layout changes moved past elementwise ops: the transposes between NHWC convolutions in an NCHW
model cancel, the values stay those of PyTorch/numpy, and what the rules must not touch is left."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from accelc.backends.tvm import layout_sink
from tests.fixtures.lowering import compile_and_run

TARGET = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"})


class Residual(torch.nn.Module):
    """conv -> relu -> conv -> + shortcut -> relu -> global average pool -> linear, in NCHW."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(self.conv(y) + y)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def test_transposes_between_convolutions_cancel_and_values_match_torch():
    torch.manual_seed(0)
    model = Residual().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 12), dtype=np.float32)
    got, main, _ = compile_and_run(model, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Left: the input to NHWC, and the pooled [2, 1, 1, 8] back to NCHW (16 elements); each
    # convolution brought two full-size ones.
    transposes = [line for line in main.splitlines() if "R.permute_dims" in line]
    assert len(transposes) == 2, transposes
    assert "R.Tensor((2, 8, 1, 1)" in transposes[1]


def build(params: list[tuple], body) -> relax.Function:
    """A one-block dataflow function of float32 parameters (name, shape), its body built by `body`."""
    bb = relax.BlockBuilder()
    args = [relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in params]
    with bb.function("main", args):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *args))
        bb.emit_func_output(out)
    return bb.get()["main"]


def run(func: relax.Function, *arrays: np.ndarray) -> np.ndarray:
    mod = tvm.IRModule({"main": func})
    with TARGET:
        mod = relax.get_pipeline("zero")(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def count(func: relax.Function, op: str) -> int:
    return func.script().count(f"R.{op}(")


def test_an_elementwise_op_between_inverse_transposes_runs_untransposed():
    func = build([("x", (2, 3, 4, 5))], lambda bb, x: relax.op.permute_dims(
        bb.emit(relax.op.nn.relu(bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2])))), [0, 2, 3, 1]))
    sunk = layout_sink.sink_layouts(func)
    assert count(sunk, "permute_dims") == 0 and count(sunk, "nn.relu") == 1
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5), dtype=np.float32)
    np.testing.assert_array_equal(run(sunk, x), np.maximum(x, 0))


def test_operands_transposed_differently_are_left_alone():
    def body(bb, a, b):
        return relax.op.add(bb.emit(relax.op.permute_dims(a, [1, 0, 2])), bb.emit(relax.op.permute_dims(b, [2, 1, 0])))
    func = build([("a", (4, 4, 4)), ("b", (4, 4, 4))], body)
    assert layout_sink.sink_layouts(func).same_as(func)


def test_operands_reshaped_from_different_shapes_are_left_alone():
    def body(bb, a, b):
        return relax.op.multiply(bb.emit(relax.op.reshape(a, [2, 12])), bb.emit(relax.op.reshape(b, [2, 12])))
    func = build([("a", (4, 6)), ("b", (24,))], body)
    assert layout_sink.sink_layouts(func).same_as(func)


def test_same_layout_operands_meet_first_and_values_match_numpy():
    def body(bb, a, b):
        added = bb.emit(relax.op.add(bb.emit(relax.op.reshape(a, [2, 3, 4])), bb.emit(relax.op.reshape(b, [2, 3, 4]))))
        return relax.op.nn.relu(bb.emit(relax.op.permute_dims(added, [2, 0, 1])))
    func = build([("a", (6, 4)), ("b", (6, 4))], body)
    sunk = layout_sink.sink_layouts(func)
    lines = [line for line in sunk.script().splitlines() if " = R." in line]
    assert [line.split(" = ")[1].split("(")[0] for line in lines] == [
        "R.add", "R.nn.relu", "R.reshape", "R.permute_dims"]  # the arithmetic first, the layout last
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 6, 4), dtype=np.float32)
    np.testing.assert_array_equal(run(sunk, a, b), np.maximum(a + b, 0).reshape(2, 3, 4).transpose(2, 0, 1))


def test_a_transposed_tensor_that_is_also_returned_keeps_its_single_transpose():
    """Moving the transpose past the ReLU would need a second one for the returned tensor."""
    def body(bb, x):
        moved = bb.emit(relax.op.permute_dims(x, [1, 0]))
        return relax.Tuple([moved, bb.emit(relax.op.nn.relu(moved))])
    func = build([("x", (16, 8))], body)
    assert layout_sink.sink_layouts(func).same_as(func)


def test_a_mean_over_transposed_axes_reduces_the_original_axes():
    func = build([("x", (2, 5, 6, 3))], lambda bb, x: relax.op.mean(
        bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2])), axis=[-1, -2], keepdims=True))
    sunk = layout_sink.sink_layouts(func)
    assert "R.mean(x, axis=[2, 1]" in sunk.script()
    x = np.random.default_rng(3).standard_normal((2, 5, 6, 3), dtype=np.float32)
    np.testing.assert_allclose(run(sunk, x), x.transpose(0, 3, 1, 2).mean(axis=(2, 3), keepdims=True), rtol=1e-6)


def test_a_quantize_between_inverse_transposes_runs_untransposed():
    """relu, then quantize (x * 1/scale, round, + zero point, clip, to uint8; scale and zero point
    0-d), between NHWC -> NCHW and back: both transposes go, the values are numpy's."""
    def body(bb, x, inverse, zero):
        y = bb.emit(relax.op.nn.relu(bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2]))))
        y = bb.emit(relax.op.add(bb.emit(relax.op.round(bb.emit(relax.op.multiply(y, inverse)))), zero))
        q = bb.emit(relax.op.astype(bb.emit(relax.op.clip(y, 0, 255)), "uint8"))
        return relax.op.permute_dims(q, [0, 2, 3, 1])
    func = build([("x", (2, 3, 4, 5)), ("inverse", ()), ("zero", ())], body)
    sunk = layout_sink.sink_layouts(func)
    assert count(sunk, "permute_dims") == 0 and count(sunk, "clip") == 1 and count(sunk, "astype") == 1
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 5), dtype=np.float32) * 8
    inverse, zero = np.array(1 / 0.05, np.float32), np.array(3.0, np.float32)
    want = np.clip(np.round(np.maximum(x, 0) * inverse) + zero, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(run(sunk, x, inverse, zero), want)


def test_a_per_channel_operand_stops_the_transpose():
    """Only a 0-d operand broadcasts alike in every layout: a [C] vector stays on the NCHW side."""
    func = build([("x", (2, 3, 4, 5)), ("scale", (5,))], lambda bb, x, scale: relax.op.multiply(
        bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2])), bb.emit(relax.op.reshape(scale, [5, 1, 1]))))
    assert layout_sink.sink_layouts(func).same_as(func)


class QuantizedConvs(torch.nn.Module):
    """int8 conv -> relu -> quantize -> int8 conv, NCHW, the ops the quantize pass writes (static:
    0-d scales and zero points): the eager ops are the exact reference."""

    def __init__(self, channels: int):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        for name, shape in (("w1", (channels, 3, 3, 3)), ("w2", (channels, channels, 3, 3))):
            setattr(self, name, torch.nn.Buffer(torch.randint(-127, 128, shape, generator=g, dtype=torch.int8)))
            setattr(self, f"{name}_scale", torch.nn.Buffer(torch.rand(shape[0], generator=g) * 0.01))
            setattr(self, f"{name}_bias", torch.nn.Buffer(torch.randn(shape[0], generator=g)))
        self.scales = torch.nn.Buffer(torch.tensor([0.03, 0.05]))
        self.zero = torch.nn.Buffer(torch.tensor(4, dtype=torch.int32))

    def forward(self, x):
        from accelc.passes.quantize_ops import ops
        geometry = ([1, 1], [1, 1], [1, 1])
        q = ops.quantize(x, self.scales[0], self.zero, 0, 127)
        y = ops.conv2d_int8(q, self.scales[0], self.zero, self.w1, self.w1_scale, self.w1_bias, *geometry)
        q = ops.quantize(torch.relu(y), self.scales[1], self.zero, 0, 127)
        return ops.conv2d_int8(q, self.scales[1], self.zero, self.w2, self.w2_scale, self.w2_bias, *geometry)


@pytest.mark.parametrize("channels, size", [(16, (10, 12)), (64, (4, 4))], ids=["activations", "weights"])
def test_int8_convolutions_keep_nhwc_through_relu_and_quantize(channels, size):
    """Only the input's and the output's transposes are left (each int8 convolution brought two,
    one of them of uint8); the relu and the quantize run in the first GEMM kernel's epilogue. With
    more weights than activations too: the weights' transposes (their column sums' int32 one
    included) run once at load and do not count against the activations'."""
    model = QuantizedConvs(channels).eval()
    x = np.random.default_rng(6).standard_normal((2, 3, *size), dtype=np.float32) * 3
    got, main, kernels = compile_and_run(model, x, block="im2col")
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    transposes = [line for line in main.splitlines() if "R.permute_dims" in line]
    assert len(transposes) == 2 and "uint8" in transposes[0] and "float32" in transposes[1], transposes
    epilogues = [name for name in kernels if "qgemm" in name and "relu" in name and "clip" in name]
    assert epilogues, sorted(kernels)


def test_a_concatenation_between_inverse_transposes_runs_in_nhwc():
    """A U-Net's skip: concat(NHWC -> NCHW of a transposed conv's output, an NCHW tensor) on
    channels, then NCHW -> NHWC for the next convolution: the concatenation moves to NHWC, its
    first input's pair cancels and the NCHW input gets the one transpose left."""
    def body(bb, nhwc, nchw):
        up = bb.emit(relax.op.permute_dims(nhwc, [0, 3, 1, 2]))
        cat = bb.emit(relax.op.concat([up, nchw], axis=1))
        return relax.op.permute_dims(cat, [0, 2, 3, 1])
    func = build([("nhwc", (1, 4, 5, 3)), ("nchw", (1, 2, 4, 5))], body)
    sunk = layout_sink.sink_layouts(func)
    assert count(sunk, "permute_dims") == 1 and "axis=3" in sunk.script()
    rng = np.random.default_rng(5)
    nhwc = rng.standard_normal((1, 4, 5, 3), dtype=np.float32)
    nchw = rng.standard_normal((1, 2, 4, 5), dtype=np.float32)
    np.testing.assert_array_equal(run(sunk, nhwc, nchw), np.concatenate([nhwc, nchw.transpose(0, 2, 3, 1)], axis=3))


def test_a_concatenation_without_a_cancelling_input_is_left_alone():
    def body(bb, a, b):
        return relax.op.permute_dims(bb.emit(relax.op.concat([a, b], axis=1)), [0, 2, 3, 1])
    func = build([("a", (1, 2, 4, 5)), ("b", (1, 3, 4, 5))], body)
    assert layout_sink.sink_layouts(func).same_as(func)
