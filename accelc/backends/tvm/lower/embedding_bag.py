"""nn.EmbeddingBag (aten._embedding_bag), which TVM 0.27's importer has no converter for.

Each bag's rows are gathered with `take` (the ids are bounded like an embedding's:
capture/index_bounds.py) and reduced into the bag with `scatter_elements` (sum, mean, max), in
O(ids x dim). A position belongs to bag b when offsets[b] <= p < end_b; end_b is the next offset,
or the number of ids for the last bag and wherever the next offset is smaller: that only happens
where torch refuses the offsets, or after the zeros the runtime pads a batch of offsets with, so the
real bags keep their rows. Offsets never index memory here: any value gives a defined answer.
"""
from __future__ import annotations

import operator

import torch
from tvm import relax

from accelc.capture.export import node_location
from accelc.errors import Problem, UnsupportedOpError

SUM, MEAN, MAX = 0, 1, 2
# (weight, indices, offsets, scale_grad_by_freq, mode, sparse, per_sample_weights, include_last_offset,
#  padding_idx): the schema of aten._embedding_bag and aten.embedding_bag.padding_idx
DEFAULTS = (None, None, None, False, SUM, False, None, False, None)


def _arguments(node: torch.fx.Node) -> list:
    names = ("weight", "indices", "offsets", "scale_grad_by_freq", "mode", "sparse", "per_sample_weights",
             "include_last_offset", "padding_idx")
    return [node.args[i] if i < len(node.args) else node.kwargs.get(name, DEFAULTS[i])
            for i, name in enumerate(names)]


def _refuse(node: torch.fx.Node, last_offset: bool) -> None:
    """What is not compiled: offset2bag, bag sizes and max indices (outputs 1-3), and
    include_last_offset (its bags are one fewer than the offsets: they do not follow the batch, and
    torch's mean divides its last bag by the ids up to the end)."""
    others = [u for u in node.users if u.target is not operator.getitem or u.args[1] != 0]
    why = (f"only its first output (the bags) can be compiled; {others[0].name} reads another" if others else
           "include_last_offset=True is not supported: pass offsets with one start per bag" if last_offset else "")
    if why:
        raise UnsupportedOpError(problems=[Problem("E400", f"op {node.target.__name__}: {why}",
                                                   node_location(node))])


def convert_embedding_bag(node: torch.fx.Node, importer) -> relax.Var:
    weight, ids, offsets, _, mode, _, per_sample, last_offset, padding = _arguments(node)
    _refuse(node, last_offset)
    emit, env = importer.block_builder.emit, importer.env
    table, ids = env[weight], env[ids]
    dtype = str(table.ty.dtype)
    bag, counted = _membership(emit, ids, env[offsets], padding)
    rows = emit(relax.op.take(table, relax.op.astype(ids, "int32"), axis=0))  # [n, dim]
    if per_sample is not None:  # sum mode only (torch refuses it otherwise)
        rows = emit(relax.op.multiply(rows, relax.op.expand_dims(env[per_sample], 1)))
    return _reduce(emit, rows, bag, counted, int(env[offsets].ty.shape.values[0]), mode, dtype)


def _membership(emit, ids, offsets, padding) -> tuple[relax.Var, relax.Var]:
    """Per position: its bag (int64 [n]) and whether it counts (bool [n]: inside a bag, not padding)."""
    n, bags = int(ids.ty.shape.values[0]), int(offsets.ty.shape.values[0])
    starts = emit(relax.op.astype(offsets, "int64"))
    following = emit(relax.op.concat([relax.op.strided_slice(starts, [0], [1], [bags]),  # the last bag: to the end
                                      relax.const([n], "int64")]))
    ends = emit(relax.op.where(relax.op.less(following, starts), relax.const(n, "int64"), following))
    position = emit(relax.op.expand_dims(relax.op.arange(0, n, 1, "int64"), 1))  # [n, 1] against [bags]
    inside = emit(relax.op.astype(relax.op.logical_and(relax.op.greater_equal(position, starts),
                                                       relax.op.less(position, ends)), "int32"))
    bag = emit(relax.op.argmax(inside, axis=1))  # the first bag holding the position (0 for none)
    counted = emit(relax.op.greater(relax.op.max(inside, axis=1), relax.const(0, "int32")))
    if padding is not None and padding >= 0:  # the padding row is left out of its bag
        padded = relax.op.equal(relax.op.astype(ids, "int64"), relax.const(padding, "int64"))
        counted = emit(relax.op.logical_and(counted, relax.op.logical_not(padded)))
    return bag, counted


def _reduce(emit, rows, bag, counted, bags: int, mode: int, dtype: str) -> relax.Var:
    """[bags, dim]: the counted rows of each bag summed, averaged or maximised; empty bags are zeros."""
    n, dim = (int(v) for v in rows.ty.shape.values)
    keep = emit(relax.op.expand_dims(counted, 1))
    where = emit(relax.op.broadcast_to(relax.op.expand_dims(bag, 1), (n, dim)))
    sizes = emit(relax.op.scatter_elements(relax.op.zeros((bags,), dtype), bag,
                                           relax.op.astype(counted, dtype), axis=0, reduction="add"))
    if mode == MAX:
        lowest = relax.const(-65504.0 if dtype == "float16" else -3.0e38, dtype)  # TVM's full() refuses -inf
        rows = emit(relax.op.where(keep, rows, lowest))
        out = emit(relax.op.scatter_elements(relax.op.full((bags, dim), lowest, dtype), where, rows, axis=0,
                                             reduction="max"))
        empty = relax.op.expand_dims(relax.op.equal(sizes, relax.const(0, dtype)), 1)
        return emit(relax.op.where(empty, relax.const(0, dtype), out))
    rows = emit(relax.op.where(keep, rows, relax.const(0, dtype)))
    out = emit(relax.op.scatter_elements(relax.op.zeros((bags, dim), dtype), where, rows, axis=0, reduction="add"))
    if mode == MEAN:
        out = emit(relax.op.divide(out, relax.op.expand_dims(relax.op.maximum(sizes, relax.const(1, dtype)), 1)))
    return out


def convert_embedding_bag_tuple(node: torch.fx.Node, importer) -> relax.Var:
    """The op returns (bags, offset2bag, bag_size, max_indices); getitem 0 takes the bags."""
    return (convert_embedding_bag(node, importer),)


CONVERTERS = {"_embedding_bag.default": convert_embedding_bag_tuple,
              "_embedding_bag_forward_only.default": convert_embedding_bag_tuple,
              "embedding_bag.padding_idx": convert_embedding_bag_tuple}
