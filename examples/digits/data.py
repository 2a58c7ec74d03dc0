"""Handwritten digits (scikit-learn's bundled `load_digits`: 1,797 8x8 images, 17 grey levels,
no download) split once with a seed, and the data sources the digits recipes name.

Both models take `images` float32 [n, 1, 8, 8] in [0, 1] (grey level / 16). Calibration reads
training images only; verify.metric reads the validation split, which training never sees (no
early stopping on it either).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

SEED = 0
TRAIN_SHARE = 0.6  # 1,078 training images, 719 held out for validation


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(grey levels int64 [1797, 64], labels int64 [1797]) from the copy inside scikit-learn's wheel."""
    from sklearn.datasets import load_digits  # ~1-2 s to import: only when data is asked for

    digits = load_digits()
    return digits.data.astype(np.int64), digits.target.astype(np.int64)


@lru_cache(maxsize=4)
def split(seed: int = SEED) -> dict[str, np.ndarray]:
    """{"train": row indices, "validation": row indices}: one seeded permutation."""
    levels, _ = _digits()
    order = np.random.default_rng(seed).permutation(len(levels))
    cut = int(TRAIN_SHARE * len(order))
    return {"train": np.sort(order[:cut]), "validation": np.sort(order[cut:])}


def images(part: str, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n, 1, 8, 8] in [0, 1], int64 labels [n]) of one split."""
    levels, labels = _digits()
    rows = split(seed)[part]
    return (levels[rows] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), labels[rows]


# ---- recipe data sources ----------------------------------------------------------------------

def train_images() -> tuple[np.ndarray, np.ndarray]:
    """Recipe `data.calibration`: the training images (and labels, which calibration ignores)."""
    return images("train")


def validation_images() -> tuple[np.ndarray, np.ndarray]:
    """Recipe `data.validation`: 719 held-out images and labels for the top-1 gate."""
    return images("validation")


def sample_images(batch: int, seed: int) -> np.ndarray:
    """Recipe `data.samples`: `batch` held-out images (real digits, not noise)."""
    x, _ = images("validation")
    return x[np.random.default_rng(seed).integers(0, len(x), batch)]

