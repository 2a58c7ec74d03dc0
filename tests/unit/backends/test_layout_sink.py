"""Layout changes moved past elementwise ops: the transposes between NHWC convolutions in an NCHW
model cancel, the values stay those of PyTorch/numpy, and what the rules must not touch is left."""
from __future__ import annotations

import numpy as np
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
