"""Train both digit classifiers: `python -m examples.digits.train [--help]`.

Adam with a cosine learning rate, cross-entropy, a fixed number of epochs on the training split
(the validation split is only evaluated, never used to choose), then cnn.safetensors,
encoder.safetensors and metrics.json. Seeds, a fixed thread count and deterministic algorithms make
two runs byte-identical on one machine and torch version.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from . import data
from .model import build_cnn, build_encoder

HERE = Path(__file__).resolve().parent


@dataclass
class TrainConfig:
    epochs: int
    lr: float
    batch: int = 32
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1  # one thread: bit-for-bit reproducible


CNN = TrainConfig(epochs=12, lr=3e-3)
ENCODER = TrainConfig(epochs=25, lr=2e-3, weight_decay=1e-2)


@contextmanager
def _reproducible(threads: int):
    """Fixed thread count and deterministic kernels, restored afterwards (callers share the process)."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def top1(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Held-out top-1 of the eager model in eval mode."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)])
    return float((logits.argmax(dim=1).numpy() == y).mean())


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, log: Callable = print) -> list[float]:
    """Adam + cosine schedule over `cfg.epochs` seeded shuffles; returns the mean loss per epoch."""
    with _reproducible(cfg.threads):
        torch.manual_seed(cfg.seed)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * -(-len(x) // cfg.batch)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=steps, pct_start=0.15)
        generator = torch.Generator().manual_seed(cfg.seed)
        history = []
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            total = 0.0
            for rows in torch.randperm(len(x), generator=generator).split(cfg.batch):
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(xt[rows]), yt[rows])
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(rows)
            history.append(round(total / len(x), 6))
            log(f"  epoch {epoch:3d}  train loss {history[-1]:.4f}")
        model.eval()
        return history


def train_cnn(cfg: TrainConfig = CNN, log: Callable = print) -> tuple[nn.Module, dict]:
    """The trained CNN and its metrics (train/validation top-1, loss history, seconds)."""
    return _train(build_cnn(seed=cfg.seed), data.images, cfg, log)


def train_encoder(cfg: TrainConfig = ENCODER, log: Callable = print) -> tuple[nn.Module, dict]:
    """The trained transformer encoder and its metrics."""
    return _train(build_encoder(seed=cfg.seed), data.images, cfg, log)


def _train(model: nn.Module, view: Callable, cfg: TrainConfig, log: Callable) -> tuple[nn.Module, dict]:
    start = time.perf_counter()
    (xt, yt), (xv, yv) = view("train"), view("validation")
    history = fit(model, xt, yt, cfg, log)
    metrics = {"config": asdict(cfg), "train_rows": len(xt), "validation_rows": len(xv),
               "train_top1": round(top1(model, xt, yt), 6), "validation_top1": round(top1(model, xv, yv), 6),
               "loss_history": history}
    return model, {**metrics, "seconds": round(time.perf_counter() - start, 1)}


def save(model: nn.Module, path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.digits.train", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["cnn", "encoder"], default=["cnn", "encoder"])
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where the weights and metrics.json go")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = args.out_dir / "metrics.json"
    summary = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    for name in args.models:
        print(f"training {name}")
        model, metrics = (train_cnn if name == "cnn" else train_encoder)()
        save(model, args.out_dir / f"{name}.safetensors")
        summary[name] = {k: v for k, v in metrics.items() if k != "seconds"}  # nothing time-dependent on disk
        print(f"{name}: validation top-1 {metrics['validation_top1']:.4f} ({metrics['seconds']:.0f} s)")
    metrics_path.write_text(json.dumps(dict(sorted(summary.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
