"""Two digit classifiers with trained weights (train.py): a small ResNet-style CNN on the 8x8
images and a 4-layer transformer encoder reading the image as 16 patch tokens (as a ViT does). Both
return class logits [batch, 10]; `build_cnn` and `build_encoder` are the recipe entrypoints."""
from __future__ import annotations

import torch
from torch import nn

CLASSES = 10
PATCHES = 16  # 2x2 patches of an 8x8 image: the encoder's tokens


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    """Two 3x3 conv+BN with a residual add; a strided block projects the shortcut with 1x1 conv+BN."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.conv2 = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class DigitsCNN(nn.Module):
    """8x8 -> stem -> block (8x8) -> strided block (4x4) -> block -> global average -> logits."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width, width), Block(width, 2 * width, 2), Block(2 * width, 2 * width))
        self.head = nn.Linear(2 * width, CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [batch, 10] for images [batch, 1, 8, 8] in [0, 1]."""
        return self.head(self.blocks(self.stem(images)).mean(dim=(2, 3)))


class DigitsEncoder(nn.Module):
    """A pre-LayerNorm transformer encoder over image patches (as a ViT reads an image):
    [CLS] + 16 embedded 2x2 patches + learnt positions -> 4 layers -> LayerNorm -> CLS -> logits."""

    def __init__(self, hidden: int = 64, layers: int = 4, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.patch = nn.Linear(4, hidden)  # a 2x2 patch's four grey levels -> its token embedding
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        self.positions = nn.Parameter(torch.randn(1, PATCHES + 1, hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [batch, 10] for images [batch, 1, 8, 8] in [0, 1]."""
        patches = images.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, PATCHES, 4)
        tokens = self.patch(patches)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.positions
        return self.head(self.norm(self.encoder(tokens))[:, 0])


def build_cnn(width: int = 32, seed: int = 0) -> DigitsCNN:
    """Recipe entrypoint; examples/digits/cnn.safetensors holds the trained weights."""
    torch.manual_seed(seed)
    return DigitsCNN(width).eval()


def build_encoder(hidden: int = 64, layers: int = 4, heads: int = 4, seed: int = 0) -> DigitsEncoder:
    """Recipe entrypoint; examples/digits/encoder.safetensors holds the trained weights."""
    torch.manual_seed(seed)
    return DigitsEncoder(hidden, layers, heads).eval()
