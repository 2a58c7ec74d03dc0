"""A plain ReLU MLP (default 32 -> 128 -> 64 -> 1), the workload of the tuning benchmarks."""
from __future__ import annotations

import torch
from torch import nn


def build_model(sizes: tuple[int, ...] = (32, 128, 64, 1), seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (width, out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(width, out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()
