"""The churn predictor: raw learner-behaviour vector -> folded preprocessing -> MLP -> probability.

The preprocessing of `preprocess.py` is written as torch ops (isnan, where, maximum/minimum,
log1p, eq against an arange of codes, cat) so that torch.export captures it and the compiled
artifact takes the raw vector, NaNs included: a production server sends what it logged.
The learnt statistics are persistent buffers, so weights.safetensors carries them; the
schema's constants (valid ranges, log mask, category codes) are non-persistent: they are code.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .preprocess import LOG_MASK, N, STAT_KEYS, VALID_HI, VALID_LO
from .schema import CATEGORICAL, FEATURES


class Preprocess(nn.Module):
    """Impute, clip, log1p, standardise numeric columns; one-hot the categorical codes."""

    def __init__(self):
        super().__init__()
        neutral = {"impute": 0.0, "clip_lo": -1e30, "clip_hi": 1e30, "mean": 0.0, "std": 1.0}
        for key in STAT_KEYS:
            self.register_buffer(key, torch.full((N,), neutral[key]))
        for key, value in (("valid_lo", VALID_LO), ("valid_hi", VALID_HI), ("log_mask", LOG_MASK)):
            self.register_buffer(key, torch.from_numpy(np.array(value)), persistent=False)
        self.sizes = [len(c.categories) for c in CATEGORICAL]
        self.register_buffer("codes", torch.arange(max(self.sizes), dtype=torch.float32), persistent=False)

    def set_stats(self, stats: dict[str, np.ndarray]) -> None:
        for key in STAT_KEYS:
            getattr(self, key).copy_(torch.from_numpy(np.asarray(stats[key], np.float32)))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        num = raw[:, :N]
        bad = torch.isnan(num) | (num < self.valid_lo) | (num > self.valid_hi)
        num = torch.where(bad, self.impute, num)
        num = torch.minimum(torch.maximum(num, self.clip_lo), self.clip_hi)
        num = torch.where(self.log_mask, torch.log1p(num), num)
        num = (num - self.mean) / self.std
        # a code column against the arange of its codes: NaN or an unknown code matches none
        one_hot = [(raw[:, N + k: N + k + 1] == self.codes[:size]).to(raw.dtype) for k, size in enumerate(self.sizes)]
        return torch.cat([num, *one_hot], dim=1)


class ChurnMLP(nn.Module):
    def __init__(self, features: int = FEATURES, hidden: tuple[int, ...] = (128, 64), dropout: float = 0.1):
        super().__init__()
        layers, width = [], features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Churn probability per learner, shape [batch, 1]."""
        return torch.sigmoid(self.logits(features))


class ChurnModel(nn.Module):
    """Raw vector [batch, RAW_WIDTH] (schema order, NaN = missing) -> churn probability [batch, 1]."""

    def __init__(self, hidden: tuple[int, ...] = (128, 64), dropout: float = 0.1):
        super().__init__()
        self.preprocess = Preprocess()
        self.mlp = ChurnMLP(FEATURES, hidden, dropout)

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.mlp.logits(self.preprocess(raw))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.preprocess(raw))


def build_model(hidden: tuple[int, ...] = (128, 64), seed: int = 0) -> ChurnModel:
    """Recipe entrypoint: the whole pipeline; load weights.safetensors to get the trained one."""
    torch.manual_seed(seed)
    return ChurnModel(tuple(hidden))


def build_mlp(hidden: tuple[int, ...] = (128, 64), seed: int = 0) -> ChurnMLP:
    """The MLP alone, on already-standardised features (the benchmark's unfolded baseline)."""
    torch.manual_seed(seed)
    return ChurnMLP(FEATURES, tuple(hidden))



def build_preprocess() -> Preprocess:
    """The folded preprocessing alone, raw vector -> 39 features (the benchmark times it compiled)."""
    return Preprocess()
