"""The churn predictor: an MLP over the standardised learner-behaviour features."""
from __future__ import annotations

import torch
from torch import nn


class ChurnMLP(nn.Module):
    def __init__(self, features: int = 24, hidden: tuple[int, ...] = (128, 64), dropout: float = 0.1):
        super().__init__()
        layers, width = [], features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Churn probability per learner, shape [batch, 1]."""
        return torch.sigmoid(self.head(self.body(features)))


def build_model(features: int = 24, hidden: tuple[int, ...] = (128, 64), seed: int = 0) -> ChurnMLP:
    torch.manual_seed(seed)
    return ChurnMLP(features, tuple(hidden))
