"""BatchNorm after a convolution folded into its weights at load, without a recipe pass: values of
eager PyTorch, no BatchNorm arithmetic left in the per-call function, the fold named in the manifest, and
an int8 build (whose convolutions the int8 path lowers) still verifies."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from accelc import compile as compile_mod
from accelc.backends.tvm.lower import bn_fold
from accelc.runtime import predictor as runtime
from tests.fixtures import lowering
from tests.fixtures.helpers import make_repo, write_recipe


def _trained_statistics(model: nn.Module, seed: int) -> nn.Module:
    """Running statistics and affine parameters far from their defaults, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator))
            module.running_var.copy_(torch.rand(channels, generator=generator) * 3 + 0.1)
            if module.affine:
                module.weight.data.copy_(torch.randn(channels, generator=generator))
                module.bias.data.copy_(torch.randn(channels, generator=generator))
    return model.eval()


class ConvBN(nn.Module):
    """A stem (conv without bias + BN + ReLU), a depthwise conv + BN without affine parameters,
    a transposed conv + BN, and a conv whose output also feeds the skip (its BN cannot fold)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16, affine=False))
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 8, 2, stride=2), nn.BatchNorm2d(8))
        self.shared, self.shared_bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.up(self.depthwise(self.stem(x)))
        shared = self.shared(y)
        return self.shared_bn(shared) + shared


class ConvBN1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv1d(4, 16, 5, stride=2), nn.BatchNorm1d(16)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def conv_bn() -> ConvBN:
    torch.manual_seed(0)
    return _trained_statistics(ConvBN(), 1)


def conv_bn_1d() -> ConvBN1d:
    torch.manual_seed(0)
    return _trained_statistics(ConvBN1d(), 2)


def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((16, 3, 8, 8), dtype=np.float32)


def lower_and_run(model: nn.Module, x: np.ndarray):
    """(output, the lowered module's main function as TVMScript, the repairs it records)."""
    out, script, lowered = lowering.lower_and_run(model, x)
    return out, script, lowered.repairs


@pytest.mark.parametrize("make, shape", [(conv_bn, (2, 3, 8, 8)), (conv_bn_1d, (2, 4, 40))])
def test_folded_batchnorms_match_torch_and_leave_no_batch_norm(make, shape):
    model = make()
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    got, main, applied = lower_and_run(model, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    folded = {r["repair"]: r["nodes"] for r in applied}.get(bn_fold.REPAIR, [])
    total = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # every BatchNorm but the one whose convolution's output is also read elsewhere
    shared = 1 if isinstance(model, ConvBN) else 0
    assert len(folded) == total - shared
    assert main.count("R.subtract(") == shared  # an unfolded BatchNorm runs (x - mean) / sqrt(var + eps) ...


def test_without_the_fold_batch_norms_stay(monkeypatch):
    monkeypatch.setattr(bn_fold, "annotate", lambda program: None)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8), dtype=np.float32)
    _, main, applied = lower_and_run(conv_bn(), x)
    assert main.count("R.subtract(") == 4 and not applied


RECIPE = """\
version: 1
name: {name}
model:
  entrypoint: tests.unit.backends.test_bn_fold:conv_bn
  inputs:
    - {{name: x, shape: [batch, 3, 8, 8], dtype: float32}}
  batch: [1, 2]
data: {{calibration: tests.unit.backends.test_bn_fold:images}}
target: x86
verify: {{samples: 2}}
{passes}"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("bn_fold"))


def test_a_recipe_without_passes_folds_verifies_against_the_original_and_says_so(repo):
    path = write_recipe(repo, RECIPE.format(name="folded", passes=""), "folded.yaml")
    built = compile_mod.build(path, output=repo / "out-folded")
    assert built.report["status"] == "passed"
    assert len({r.repair: r.nodes for r in built.manifest.repairs}[bn_fold.REPAIR]) == 3
    x = images()[:2]
    with torch.no_grad():
        want = conv_bn()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runtime.load(repo / "out-folded")(x), want, rtol=1e-4, atol=1e-4)


def test_static_int8_with_batchnorms_builds_and_verifies(repo):
    """Static int8 lowers the quantized convolutions itself: their BatchNorms run as TVM imports them."""
    passes = "passes:\n  - {kind: quantize, mode: static}\n"
    path = write_recipe(repo, RECIPE.format(name="int8", passes=passes), "int8.yaml")
    built = compile_mod.build(path, output=repo / "out-int8")
    assert built.report["status"] == "passed"
