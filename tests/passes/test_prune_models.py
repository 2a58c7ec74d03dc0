"""Tiny models for the pruning and merge tests (an MLP, a ResNet-style CNN, a CNN with concat,
depthwise conv and flatten->linear, a transformer encoder) and the export helper they share.
The checks here make sure the models themselves capture and run as the other tests assume."""
from __future__ import annotations

import copy
import functools
import warnings

import torch
from torch import nn

from accelc.capture.export import _drop_guards


class MLP(nn.Module):
    def __init__(self, features: int = 12, hidden: tuple[int, ...] = (32, 24), out: int = 1, sigmoid: bool = True):
        super().__init__()
        layers, width = [], features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(0.1)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out)
        self.sigmoid = sigmoid

    def forward(self, x):
        y = self.head(self.body(x))
        return torch.sigmoid(y) if self.sigmoid else y


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    """Residual block; a strided one projects the shortcut with a 1x1 conv + BN."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.conv2 = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class ResNetTiny(nn.Module):
    def __init__(self, width: int = 8, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = Block(width, width)
        self.layer2 = Block(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


class BranchCNN(nn.Module):
    """Concat of two branches, a depthwise conv, and flatten straight into a Linear."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.mix = nn.Conv2d(14, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.reduce = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        y = torch.relu(self.mix(torch.cat([torch.relu(self.left(x)), self.right(x)], 1)))
        y = torch.relu(self.reduce(torch.relu(self.depthwise(y))))
        y = nn.functional.max_pool2d(y, 2).view(y.shape[0], -1)
        return self.head(torch.relu(self.fc(y)))


class Encoder(nn.Module):
    def __init__(self, vocab: int = 50, seq: int = 6, dim: int = 16, classes: int = 3):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids):
        return self.head(self.encoder(self.tokens(ids)).mean(dim=1))


@torch.no_grad()
def randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so pruning them wrongly changes the outputs."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.2)
    return model.eval()


def build(name: str, seed: int = 0):
    """(eval model, example inputs) for one of the test models."""
    torch.manual_seed(seed)
    if name == "mlp":
        return MLP().eval(), (torch.randn(4, 12),)
    if name == "cnn":
        return randomise_norms(ResNetTiny()), (torch.randn(2, 3, 16, 16),)
    if name == "branch":
        return BranchCNN().eval(), (torch.randn(2, 3, 8, 8),)
    if name == "encoder":
        return Encoder().eval(), (torch.randint(0, 50, (2, 6)),)
    raise KeyError(name)


def export(model: nn.Module, inputs: tuple, dynamic: bool = True) -> torch.fx.GraphModule:
    """The fx graph passes rewrite, captured as accelc.capture.export does (dynamic batch, no guards)."""
    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) * len(inputs) if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = torch.export.export(model, inputs, dynamic_shapes=shapes, strict=False).module()
    _drop_guards(gm)
    return gm


MODELS = ("mlp", "cnn", "branch", "encoder")


@functools.lru_cache(maxsize=None)
def _captured(name: str):
    model, inputs = build(name)
    return model, inputs, export(model, inputs)


def captured(name: str):
    """(eval model, inputs, a fresh copy of its exported graph): exporting once per session keeps tests fast."""
    model, inputs, gm = _captured(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, inputs, copy.deepcopy(gm)


def test_models_capture_and_match_eager():
    for name in MODELS:
        model, inputs = build(name)
        gm = export(model, inputs)
        torch.testing.assert_close(gm(*inputs), model(*inputs), rtol=0, atol=0)
