"""Train the churn model: `python -m examples.edu_churn.train [--help]`.

Generates the seeded learner table, deduplicates and splits it, learns the preprocessing
statistics on the training split, trains the MLP with Adam and binary cross-entropy using
gradient accumulation (micro-batches summed into one effective batch), stops early on
validation AUC, and writes weights.safetensors (MLP weights + preprocessing statistics) and
metrics.json. Seeds, one thread and deterministic algorithms make two runs byte-identical.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from accelc.verify import metrics

from . import data, preprocess
from .model import ChurnModel, build_model

HERE = Path(__file__).resolve().parent


class DivergedError(RuntimeError):
    """The loss stopped being a finite number."""


@dataclass
class TrainConfig:
    learners: int = data.DEFAULT_LEARNERS
    seed: int = data.DEFAULT_SEED
    hidden: tuple[int, ...] = (128, 64)
    micro_batch: int = 64  # rows per forward/backward
    accumulate: int = 4  # micro-batches per optimizer step: effective batch = micro_batch * accumulate
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_epochs: int = 40
    patience: int = 5  # epochs without a better validation AUC before stopping
    threads: int = 1  # one thread: bit-for-bit reproducible


@dataclass
class TrainResult:
    model: ChurnModel
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


def _features(model: ChurnModel, part: data.Table) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess once with the model's own (folded) preprocessing; the MLP trains on the result."""
    with torch.no_grad():
        return model.preprocess(torch.from_numpy(part.raw)), torch.from_numpy(part.labels)


def _evaluate(model: ChurnModel, x: torch.Tensor, y: torch.Tensor) -> dict:
    model.eval()
    with torch.no_grad():
        p = model.mlp(x).numpy().reshape(-1)
    labels = y.numpy()
    return {"auc": round(metrics.auc(labels, p), 6), "accuracy": round(metrics.accuracy(labels, p), 6),
            "logloss": round(metrics.logloss(labels, p), 6), "rows": int(len(labels)),
            "churn_rate": round(float(labels.mean()), 6)}


def _epoch(model: ChurnModel, optimizer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
           generator: torch.Generator, epoch: int) -> float:
    """One pass; each optimizer step sums `accumulate` micro-batch gradients of the mean BCE."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    step_rows = cfg.micro_batch * cfg.accumulate
    total = 0.0
    for step, start in enumerate(range(0, len(x), step_rows)):
        rows = order[start:start + step_rows]
        optimizer.zero_grad(set_to_none=True)
        for micro in rows.split(cfg.micro_batch):
            logits = model.mlp.logits(x[micro]).reshape(-1)
            # summed BCE over the effective batch's size: the accumulated gradient is the mean's
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[micro], reduction="sum")
            if not torch.isfinite(loss):
                raise DivergedError(f"the loss became {loss.item()} at epoch {epoch}, step {step} "
                                    f"(lr={cfg.lr:g}); lower --lr or check the data for infinities")
            (loss / len(rows)).backward()
            total += loss.item()
        optimizer.step()
    return total / len(x)


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


def train(cfg: TrainConfig, log=print) -> TrainResult:
    """Data -> statistics -> early-stopped training; returns the best model and its metrics."""
    with _reproducible(cfg.threads):
        return _train(cfg, log)


def _train(cfg: TrainConfig, log) -> TrainResult:
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    table = data.generate(cfg.learners, cfg.seed)
    parts = data.split(table, cfg.seed)
    model = build_model(cfg.hidden, cfg.seed)
    model.preprocess.set_stats(preprocess.fit(parts["train"].raw))
    (xt, yt), (xv, yv), (xs, ys) = (_features(model, parts[k]) for k in ("train", "validation", "test"))
    optimizer = torch.optim.Adam(model.mlp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    best, best_auc, best_epoch, history = None, -1.0, 0, []
    for epoch in range(1, cfg.max_epochs + 1):
        loss = _epoch(model, optimizer, xt, yt, cfg, generator, epoch)
        val = _evaluate(model, xv, yv)
        history.append({"epoch": epoch, "train_loss": round(loss, 6), "val_auc": val["auc"]})
        log(f"epoch {epoch:3d}  train loss {loss:.4f}  val AUC {val['auc']:.4f}")
        if val["auc"] > best_auc + 1e-4:
            best, best_auc, best_epoch = {k: v.clone() for k, v in model.state_dict().items()}, val["auc"], epoch
        elif epoch - best_epoch >= cfg.patience:
            log(f"early stop: no better validation AUC for {cfg.patience} epochs")
            break
    model.load_state_dict(best)
    model.eval()
    summary = {"config": {**asdict(cfg), "hidden": list(cfg.hidden)},
               "data": {"rows_generated": len(table), "duplicates_removed": len(table) - sum(map(len, parts.values())),
                        **{f"{k}_rows": len(v) for k, v in parts.items()}},
               "best_epoch": best_epoch, "epochs_run": len(history), "history": history,
               "validation": _evaluate(model, xv, yv), "test": _evaluate(model, xs, ys)}
    return TrainResult(model, summary, time.perf_counter() - start)


def save(result: TrainResult, out_dir: Path) -> tuple[Path, Path]:
    """weights.safetensors (MLP + preprocessing statistics) and metrics.json, both deterministic."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights, metrics_path = out_dir / "weights.safetensors", out_dir / "metrics.json"
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    # one metadata key: safetensors writes a map's keys in no fixed order
    save_file(state, str(weights), metadata={"producer": "python -m examples.edu_churn.train"})
    metrics_path.write_text(json.dumps(result.metrics, indent=2, sort_keys=True) + "\n", "utf-8")
    return weights, metrics_path


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, Path]:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m examples.edu_churn.train", description=__doc__.split("\n\n")[0])
    for name in ("learners", "seed", "micro_batch", "accumulate", "max_epochs", "patience", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("lr", "weight_decay"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    p.add_argument("--hidden", type=int, nargs="+", default=list(defaults.hidden))
    p.add_argument("--out-dir", type=Path, default=HERE, help="where weights.safetensors and metrics.json go")
    args = vars(p.parse_args(argv))
    out_dir = args.pop("out_dir")
    return TrainConfig(**{**args, "hidden": tuple(args["hidden"])}), out_dir


def main(argv: list[str] | None = None) -> int:
    cfg, out_dir = parse_args(argv)
    try:
        result = train(cfg)
    except DivergedError as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 1
    weights, metrics_path = save(result, out_dir)
    test = result.metrics["test"]
    print(f"test AUC {test['auc']:.4f}  accuracy {test['accuracy']:.4f}  log-loss {test['logloss']:.4f}  "
          f"({test['rows']} learners, best epoch {result.metrics['best_epoch']}, {result.seconds:.1f} s)")
    print(f"wrote {weights} and {metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
