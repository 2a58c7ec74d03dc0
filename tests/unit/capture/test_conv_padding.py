"""Convolutions written with padding='same'/'valid' are captured as the overload with numbers, so
that folding and quantization see them (EfficientNet's: static int8 quantized none of its layers)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from accelc import compile as compile_mod
from accelc.capture import export as capture
from accelc.config import recipe as recipe_mod
from tests.fixtures.helpers import make_repo, write_recipe

RECIPE = """\
version: 1
name: padded
model:
  entrypoint: tests.unit.capture.test_conv_padding:padded
  inputs:
    - {name: x, shape: [batch, 3, 12, 12], dtype: float32}
  batch: [2]
passes: [{kind: fold_batchnorm}, {kind: quantize, mode: static}]
data: {calibration: tests.unit.capture.test_conv_padding:images}
target: x86
verify: {samples: 2}
"""


class Padded(nn.Module):
    def __init__(self):
        super().__init__()
        self.odd = nn.Conv2d(3, 16, 3, padding="same")
        self.bn = nn.BatchNorm2d(16)
        self.even = nn.Conv2d(16, 16, (2, 4), padding="same", dilation=(1, 1))  # odd total: extra at the end
        self.valid = nn.Conv2d(16, 16, 3, padding="valid")
        self.line = nn.Conv1d(16, 16, 4, padding="same", dilation=2)

    def forward(self, x):
        y = self.valid(self.even(torch.relu(self.bn(self.odd(x)))))
        return self.line(y.flatten(2))


def padded():
    torch.manual_seed(0)
    model = Padded()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    return model.eval()


def images():
    return torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def path(tmp_path):
    return write_recipe(make_repo(tmp_path), RECIPE)


def test_captured_with_numeric_padding_and_the_same_values(path):
    captured = capture.capture(recipe_mod.load(path))
    targets = {n.target for n in captured.graph.graph.nodes if n.op == "call_function"}
    assert not targets & set(capture.STRING_PADDED_CONVS)
    assert torch.ops.aten.constant_pad_nd.default in targets  # the (2, 4) kernel pads one more at the end
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(capture.flatten(captured.graph(x))[0], padded()(x))


def test_folded_and_quantized_then_verified(path):
    built = compile_mod.build(path, output=path.parent / "out")
    assert built.report["status"] == "passed"
    fold, quantize = built.manifest.passes
    assert fold.changed  # the BatchNorm after a padding='same' convolution was folded into it
    rows = {row["layer"]: row for row in quantize.stats["layers"]}
    assert [rows[n]["dtype"] for n in ("odd", "even", "valid")] == ["int8"] * 3, rows
    assert "conv1d" in rows["line"]["reason"]  # no int8 1-D kernel: float32, with the reason
