"""prune: structured (remove whole output channels, so every dependent tensor really shrinks)
and unstructured magnitude pruning (zero weights; dense kernels gain nothing from it).

Structured pruning works on channel groups from channel_groups.py: coupled layers (residual adds) lose the
same channels, their consumers lose the matching input columns, BatchNorm statistics follow.
A group the analysis cannot resolve is skipped with its reason in the report.
"""
from __future__ import annotations

import logging
import math

import torch

from accelc.passes import stats
from accelc.passes import channel_groups as deps
from accelc.passes.base import Pass, PassContext, PassResult, glob_warnings
from accelc.passes.configs.prune import PruneConfig
from accelc.passes.finetune import finetune
from accelc.passes.fold import attach, drop_unused, fetch

__all__ = ["Prune", "PruneConfig", "structured", "magnitude"]
_LOG = logging.getLogger(__name__)
DENSE_NOTE = ("unstructured sparsity: the zeroed weights are still stored and multiplied by dense kernels, "
              "so the compiled model is neither smaller nor faster; params and MACs are unchanged")


class Prune(Pass):
    Config = PruneConfig

    def run(self, gm, ctx: PassContext) -> PassResult:
        cfg = self.config
        table = stats.shapes(gm, ctx.example_inputs)
        layers = [n for n in gm.graph.nodes if deps.is_layer(n)]
        warnings = glob_warnings({"skip": cfg.skip, "layers": list(cfg.layers)},
                                 [deps.layer_name(n) for n in layers])
        before = stats.measure(gm, ctx.example_inputs, table)
        old_weights = {n: table[n.args[1]] for n in layers}
        if cfg.method == "magnitude":
            rows, masks, changed = magnitude(gm, cfg, layers)
        else:
            status, changed = structured(gm, cfg, layers, table)
            masks = None
        tuned = finetune(gm, cfg.finetune, ctx, masks) if cfg.finetune and changed else None
        try:
            new_table = stats.shapes(gm, ctx.example_inputs)
        except Exception as exc:  # the rules promised a consistent graph: this is a bug, not a user error
            exc.add_note("the pruned graph does not run on the example inputs")
            raise
        after = stats.measure(gm, ctx.example_inputs, new_table)
        if cfg.method != "magnitude":
            rows = layer_rows(layers, old_weights, new_table, status)
        report = {"method": cfg.method, "params": {"before": before["params"], "after": after["params"]},
                  "macs_per_sample": {"before": before["macs"], "after": after["macs"]},
                  "layers": rows, "warnings": warnings}
        if cfg.method == "magnitude":
            report["note"] = DENSE_NOTE
        if cfg.finetune:
            report["finetune"] = tuned or {"status": "skipped", "reason": "nothing was pruned"}
        _log(ctx, report)
        return PassResult(gm, changed, report)


def _log(ctx: PassContext, report: dict) -> None:
    """One summary line, then the warnings, through the build's log."""
    log = ctx.logger_or(_LOG)
    params, macs = report["params"], report["macs_per_sample"]
    done = sum(r["status"].startswith(("pruned", "sparsified")) for r in report["layers"])
    log.info(f"  prune {report['method']}: {done}/{len(report['layers'])} layers changed; params "
            f"{params['before']} -> {params['after']}, MACs/sample {macs['before']} -> {macs['after']}")
    for line in report["warnings"]:
        log.warning(f"  prune: {line}")
    if "note" in report:
        log.info(f"  note: {report['note']}")
    tuned = report.get("finetune")
    if tuned and tuned["status"] == "skipped":
        log.info(f"  note: fine-tune skipped: {tuned['reason']}")


# ---- structured ----------------------------------------------------------------------------

def structured(gm, cfg: PruneConfig, layers: list, table: dict) -> tuple[dict, bool]:
    """Prune every resolvable group; returns ({layer: status}, changed)."""
    groups, unfit = deps.build_groups(layers, table)
    status = {n: f"skipped: {why}" for n, why in unfit.items()}
    removals: dict = {}  # (get_attr node, dim) -> indices to delete
    reshapes: set = set()
    for group in groups:
        verdict, removed = plan(gm, cfg, group)
        for node in group.producers:
            status[node] = verdict
        if removed:
            for piece in group.slices:
                removals.setdefault((piece.node, piece.dim), set()).update(piece.indices(removed))
            reshapes |= group.reshapes
    if removals:
        shrink(gm, removals, reshapes)
    return status, bool(removals)


def plan(gm, cfg: PruneConfig, group: deps.Group) -> tuple[str, list[int]]:
    """(status, channels to remove) for one group."""
    names = [deps.layer_name(p) for p in group.producers]
    if group.reason:
        return f"skipped: {group.reason}", []
    amounts = [cfg.amount_for(name) for name in names]
    if None in amounts:
        held = [n for n, a in zip(names, amounts) if a is None]
        return f"skipped: in skip list ({', '.join(held)})" if len(names) == 1 else \
            f"skipped: coupled with skipped layer(s) {', '.join(held)}", []
    keep = keep_count(group.size, min(amounts), cfg.round_to)
    if keep == group.size:
        return "unchanged: the amount removes no channel", []
    p = 1 if cfg.method == "l1_structured" else 2
    score = sum(_norms(fetch(gm, node.args[1]), p) for node in group.producers)
    kept = set(torch.topk(score, keep).indices.tolist())
    coupled = f" together with {', '.join(names)} (coupled channels)" if len(names) > 1 else ""
    if len(set(amounts)) > 1:
        coupled += f" at the smallest of their amounts, {min(amounts):g}"
    return f"pruned{coupled}", [k for k in range(group.size) if k not in kept]


def keep_count(size: int, amount: float, round_to: int) -> int:
    """Channels to keep: at least one, rounded up to a multiple of round_to, never above size."""
    keep = size - math.floor(amount * size + 1e-9)
    return min(size, max(1, math.ceil(keep / round_to) * round_to))


def _norms(weight: torch.Tensor, p: int) -> torch.Tensor:
    """Per-output-channel L1 or L2 norm (importance)."""
    flat = weight.detach().reshape(weight.shape[0], -1).float()
    return flat.abs().sum(1) if p == 1 else flat.pow(2).sum(1).sqrt()


def shrink(gm, removals: dict, reshapes: set) -> None:
    """Replace every affected parameter by its smaller copy and let reshapes infer the channel count."""
    by_node: dict = {}
    for (node, dim), indices in removals.items():
        by_node.setdefault(node, {})[dim] = indices
    for node, dims in by_node.items():
        tensor = fetch(gm, node)
        for dim, indices in dims.items():
            keep = torch.tensor([i for i in range(tensor.shape[dim]) if i not in indices], dtype=torch.long)
            tensor = tensor.index_select(dim, keep)
        node.replace_all_uses_with(attach(gm, node.target, tensor, node))
        gm.graph.erase_node(node)
    for view, position in reshapes:
        shape = list(view.args[1])
        shape[position] = -1
        view.args = (view.args[0], shape, *view.args[2:])
    gm.graph.eliminate_dead_code()
    drop_unused(gm, {n.target for n in by_node})
    gm.recompile()


def layer_rows(layers: list, old_weights: dict, new_table: dict, status: dict) -> list[dict]:
    """Per layer: output channels and input features before/after (read from the weight shapes)."""
    rows = []
    for node in layers:
        old, new = old_weights[node], new_table[node.args[1]]
        rows.append({"layer": deps.layer_name(node), "node": node.name, "out_before": old[0], "out_after": new[0],
                     "in_before": old[1], "in_after": new[1],
                     "status": status.get(node, "unchanged: not a prunable layer")})
    return rows


# ---- unstructured --------------------------------------------------------------------------

def magnitude(gm, cfg: PruneConfig, layers: list) -> tuple[list[dict], dict, bool]:
    """Zero the smallest-magnitude weights of each Linear/Conv to its amount; returns rows, masks, changed."""
    rows, masks, seen = [], {}, set()
    for node in layers:
        name, weight_node = deps.layer_name(node), node.args[1]
        if weight_node in seen or not (isinstance(weight_node, torch.fx.Node) and weight_node.op == "get_attr"):
            continue
        seen.add(weight_node)
        amount = cfg.amount_for(name)
        weight = fetch(gm, weight_node)
        zeros_before = int((weight == 0).sum())
        count = math.floor((amount or 0.0) * weight.numel() + 1e-9)
        row = {"layer": name, "node": node.name, "weights": weight.numel(), "zeros_before": zeros_before}
        if amount is None or count == 0:
            rows.append({**row, "zeros_after": zeros_before, "status": "skipped" if amount is None else "unchanged"})
            continue
        mask = torch.ones(weight.numel())
        mask[weight.detach().abs().reshape(-1).argsort(stable=True)[:count]] = 0
        mask = mask.reshape(weight.shape).to(weight.dtype)
        new = attach(gm, weight_node.target, weight.detach() * mask, weight_node)
        weight_node.replace_all_uses_with(new)
        gm.graph.erase_node(weight_node)
        masks[new.target] = mask
        rows.append({**row, "zeros_after": int((fetch(gm, new) == 0).sum()), "status": "sparsified"})
    if masks:
        drop_unused(gm, {n.target for n in seen})
        gm.recompile()
    return rows, masks, bool(masks)
