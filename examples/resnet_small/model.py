"""A small ResNet-style CNN for 32x32 RGB images: proves the spine handles convolutions,
BatchNorm (folded by the fold_batchnorm pass), residual adds and a strided 1x1 shortcut."""
from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Conv without bias followed by BatchNorm, as in torchvision's ResNets."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with a residual add; a strided block projects the shortcut with 1x1 conv+BN."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3)
        self.relu = nn.ReLU()
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits, shape [batch, num_classes], for images [batch, 3, 32, 32]."""
        x = self.layer3(self.layer2(self.layer1(self.stem(images))))
        return self.head(torch.flatten(self.pool(x), 1))


@torch.no_grad()
def _calibrate(model: nn.Module, batches: int = 4) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that folding is
    really exercised: running stats from seeded random batches, gamma/beta drawn at random."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0.0, 0.2)
    model.train()
    for _ in range(batches):
        model(torch.randn(8, 3, 32, 32) * 1.5 + 0.3)
    model.eval()


def build_model(num_classes: int = 10, width: int = 16, seed: int = 0) -> ResNetSmall:
    torch.manual_seed(seed)
    model = ResNetSmall(num_classes, width)
    _calibrate(model)
    return model
