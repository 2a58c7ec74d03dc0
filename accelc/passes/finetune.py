"""Fine-tuning a rewritten fx graph so that accuracy lost to pruning comes back.

Assumptions (stated in every report): the graph is trained as captured, in eval mode, so
BatchNorm uses its running statistics and dropout is off; only the weights and biases of
Linear/Conv layers and the affine parameters of norms are trained; the data source returns
(inputs, labels) for the whole training set in memory. Loss `auto`: binary cross-entropy for a
single output column (on probabilities when the graph ends in a sigmoid, else on logits),
cross-entropy over classes for a wider output with integer labels.
"""
from __future__ import annotations

import time
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from accelc.capture.export import import_entrypoint
from accelc.errors import PassError
from accelc.passes.configs.finetune import FinetuneConfig
from accelc.passes.fold import fetch

__all__ = ["FinetuneConfig", "finetune", "trainable"]
aten = torch.ops.aten
ASSUMES = ("trained in eval mode (BatchNorm running statistics, no dropout); only Linear/Conv weights and "
           "biases and norm affine parameters are updated")
# op -> argument positions that hold trainable parameters
TRAINABLE_ARGS = {aten.linear.default: (1, 2), aten.conv1d.default: (1, 2), aten.conv2d.default: (1, 2),
                  aten.conv3d.default: (1, 2), aten.batch_norm.default: (1, 2), aten.layer_norm.default: (2, 3),
                  aten.embedding.default: (0,)}


def trainable(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """{target: tensor} of the parameters fine-tuning updates (see TRAINABLE_ARGS)."""
    found = {}
    for node in gm.graph.nodes:
        for position in TRAINABLE_ARGS.get(node.target, ()) if node.op == "call_function" else ():
            arg = node.args[position] if position < len(node.args) else None
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                tensor = fetch(gm, arg)
                if isinstance(tensor, torch.nn.Parameter) and tensor.is_floating_point():
                    found[arg.target] = tensor
    return found


def resolve_source(config: FinetuneConfig, loaded):
    """(callable, name) of the training data, or (None, why not)."""
    spec = config.data or (loaded.recipe.data.train if loaded is not None else None)
    if not spec:
        return None, "no training data: give finetune.data or the recipe's data.train"
    if loaded is None:
        return import_entrypoint(spec, Path.cwd(), None, field="finetune.data"), spec
    path = ("data", "train")
    if config.data:
        index = next((i for i, p in enumerate(loaded.recipe.passes) if getattr(p, "finetune", None) == config), 0)
        path = ("passes", index, "finetune", "data")
    return import_entrypoint(spec, loaded.root, loaded.where(*path), field=".".join(map(str, path))), spec


def load_data(source, name: str, input_count: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Call the source and normalise its (inputs, labels) to tensors: inputs as an array, a
    tuple of arrays, or {name: array} in the model's input order."""
    try:
        inputs, labels = source()
    except Exception as exc:  # user code: report it as theirs, not as a compiler bug
        raise PassError(f"the training source '{name}' failed: {type(exc).__name__}: {exc}"[:400],
                        code="E451", hint="it must return (inputs, labels)") from None
    if isinstance(inputs, dict):
        inputs = list(inputs.values())
    elif not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    if len(inputs) != input_count:
        raise PassError(f"the training source gives {len(inputs)} input array(s); the model takes {input_count}",
                        code="E451")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.number) or not np.isfinite(labels).all():
        raise PassError("the training labels must be finite numbers", code="E451")
    if any(len(a) != len(labels) for a in inputs):
        raise PassError(f"the training source gives {len(labels)} labels but inputs of lengths "
                        f"{[len(a) for a in inputs]}", code="E451")
    return [torch.as_tensor(np.asarray(a)) for a in inputs], torch.as_tensor(labels)


def loss_fn(kind: str, gm: fx.GraphModule):
    """The loss for `kind` ('auto' decided from the output width at the first batch)."""
    output = next(iter(gm.graph.find_nodes(op="output"))).args[0]
    last = output[0] if isinstance(output, (tuple, list)) else output
    probabilities = getattr(last, "target", None) == aten.sigmoid.default

    def compute(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        chosen = kind if kind != "auto" else ("bce" if pred.shape[-1] == 1 or pred.dim() == 1 else "cross_entropy")
        if chosen == "cross_entropy":
            return F.cross_entropy(pred, labels.long().reshape(-1))
        target = labels.float().reshape(pred.shape)
        if chosen == "mse":
            return F.mse_loss(pred, target)
        if probabilities:  # written out: F.binary_cross_entropy raises on NaN instead of reporting it
            p = pred.clamp(1e-7, 1 - 1e-7)
            return -(target * p.log() + (1 - target) * (1 - p).log()).mean()
        return F.binary_cross_entropy_with_logits(pred, target)
    return compute


def finetune(gm: fx.GraphModule, config: FinetuneConfig, ctx, masks: dict | None = None) -> dict:
    """Train `gm` in place with Adam and gradient accumulation; returns what happened.

    `masks` ({target: 0/1 tensor}) keeps pruned-away weights at zero (unstructured sparsity)."""
    source, name = resolve_source(config, getattr(ctx, "loaded", None))
    if source is None:
        return {"status": "skipped", "reason": name}
    inputs, labels = load_data(source, name, len(gm.graph.find_nodes(op="placeholder")))
    params = trainable(gm)
    for tensor in params.values():
        tensor.requires_grad_(True)
    optimizer = torch.optim.Adam(params.values(), lr=config.lr)
    compute, batches = loss_fn(config.loss, gm), _micro_batches(len(labels), config.batch_size, config.seed)
    start, losses = time.perf_counter(), []
    try:
        with torch.enable_grad():
            for step in range(config.steps):
                optimizer.zero_grad()
                total = 0.0
                for index in (next(batches) for _ in range(config.accumulate)):
                    out = gm(*[x[index] for x in inputs])
                    out = out[0] if isinstance(out, (tuple, list)) else out
                    loss = compute(out, labels[index]) / config.accumulate  # summed grads = mean over all
                    loss.backward()
                    total += float(loss.detach())
                if not np.isfinite(total):
                    raise PassError(f"fine-tuning diverged: loss {total} at step {step}", code="E452", hint=(
                        "lower finetune.lr, or check that the training inputs are finite and scaled"))
                optimizer.step()
                _apply_masks(gm, masks)
                losses.append(total)
    finally:
        for tensor in params.values():
            tensor.requires_grad_(False)
            tensor.grad = None
    return {"status": "done", "data": name, "examples": int(len(labels)), "steps": config.steps,
            "accumulate": config.accumulate, "batch_size": config.batch_size, "lr": config.lr,
            "loss_first": round(losses[0], 6), "loss_last10": round(float(np.mean(losses[-10:])), 6),
            "trained_tensors": len(params), "seconds": round(time.perf_counter() - start, 3), "assumes": ASSUMES}


def _micro_batches(count: int, size: int, seed: int):
    """Endless example-index batches: consecutive slices of a fresh seeded permutation per epoch,
    so `accumulate` micro-batches of `size` see the same examples as one batch of accumulate*size."""
    order = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(count, generator=order)
        for begin in range(0, max(count - size, 0) + 1, size):
            yield perm[begin:begin + size]


@torch.no_grad()
def _apply_masks(gm: fx.GraphModule, masks: dict | None) -> None:
    for target, mask in (masks or {}).items():
        tensor = gm.get_parameter(target)
        tensor.mul_(mask)
