"""Index bounds: no compiled gather reads or writes outside its table.

TVM compiles gathers (take, gather_elements, index_put, ...) without bounds checks, so an
out-of-range index reads past the table (garbage, or a segfault) where PyTorch raises. Two
remedies, decided on the fx graph before it is exported per batch size:

- a model input that reaches an index only through shape-only ops (view, slice, expand, integer
  casts...) gets the tables' range, intersected with the recipe's `range`; the manifest records it
  and the runtime refuses values outside it (E805), as PyTorch raises;
- any other index (computed inside the model: positions = arange + offset, ids + 90, float casts)
  is made safe in the graph: clamped into [0, n) where torch raises outside it, taken modulo n
  where torch counts negatives from the end (TVM does not: -1 reads before the table).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

import torch

from accelc.errors import ModelError

aten = torch.ops.aten


def _arg(position: int, name: str, default=None) -> Callable[[torch.fx.Node], object]:
    return lambda node: node.args[position] if len(node.args) > position else node.kwargs.get(name, default)


@dataclass(frozen=True)
class Rule:
    """Where an op takes its index and which size bounds it."""
    index: int  # argument holding the index tensor (a list of them, one per axis, when `listed`)
    axis: Callable[[torch.fx.Node], object] | None  # node -> the indexed axis; None: all elements, flattened
    wrap: bool  # torch counts negative indices from the end; else it raises outside [0, n)
    table: int | None = 0  # argument holding the indexed tensor; None: one_hot (n is args[1], nothing read)
    listed: bool = False
    reads: bool = True  # False: the compiled op reads nothing at this index (range only, never rewritten)
    past_end: int = 0  # values may reach n + past_end - 1 (offsets of bags: n, the end of the ids)


_DIM = _arg(1, "dim", 0)
RULES = {
    aten.embedding.default: Rule(1, lambda node: 0, wrap=False),  # F.embedding(weight, ids)
    aten.index_select.default: Rule(2, _DIM, wrap=False),
    aten.gather.default: Rule(2, _DIM, wrap=False),
    aten.take.default: Rule(1, None, wrap=True),  # indexes the flattened tensor
    aten.take_along_dim.default: Rule(1, _arg(2, "dim"), wrap=True),  # dim None: flattened
    aten.index.Tensor: Rule(1, None, wrap=True, listed=True),  # x[ids], x[:, ids]: one index per axis
    aten.index_put.default: Rule(1, None, wrap=True, listed=True),  # writes: out of range corrupts memory
    aten.index_put_.default: Rule(1, None, wrap=True, listed=True),
    aten.index_fill.int_Scalar: Rule(2, _DIM, wrap=True),
    aten.index_fill.int_Tensor: Rule(2, _DIM, wrap=True),
    aten.index_add.default: Rule(2, _DIM, wrap=False),
    aten.index_copy.default: Rule(2, _DIM, wrap=False),
    aten.scatter.src: Rule(2, _DIM, wrap=False),
    aten.scatter.value: Rule(2, _DIM, wrap=False),
    aten.scatter_add.default: Rule(2, _DIM, wrap=False),
    aten.scatter_reduce.two: Rule(2, _DIM, wrap=False),
    aten.one_hot.default: Rule(0, None, wrap=False, table=None),  # compares, never reads: range only
}
# nn.EmbeddingBag (weight, ids, offsets, ...): the ids index the table; the offsets, the ids' positions
# [0, n], which the compiled bags compare with (lower/embedding_bag.py) and never read at
_BAG = (Rule(1, lambda node: 0, wrap=False), Rule(2, None, wrap=False, table=1, reads=False, past_end=1))
RULES.update({op: _BAG for op in (aten.embedding_bag.default, aten.embedding_bag.padding_idx,
                                   aten._embedding_bag.default, aten._embedding_bag_forward_only.default)})

CASTS = {aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default}
# Ops whose output holds only values of their first argument (positions may move or repeat): an
# index reached through them has the input's values. cat and arithmetic are not among them.
SHAPE_ONLY = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unsqueeze.default,
    aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.flatten.using_ints, aten.unflatten.int,
    aten.expand.default, aten.slice.Tensor, aten.select.int, aten.narrow.default, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.clone.default, aten.alias.default, aten.detach.default,
    aten.repeat.default, aten.contiguous.default, aten.lift_fresh_copy.default,
    *CASTS,  # to integer dtypes only (checked where they are followed)
    aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int,  # tuples ...
    operator.getitem,  # ... and their members
}


@dataclass
class Operand:
    """One index argument of one gather-type op."""
    op: torch.fx.Node
    index: torch.fx.Node
    slot: tuple[int, int | None]  # (argument, position in its list or None)
    rule: Rule
    axis: int | None  # None: flattened
    size: int | None  # the table's size along the axis when static; else None


@dataclass
class Bounds:
    ranges: dict[str, tuple]  # [low, high) per input: derived and declared ones (ints for integer inputs)
    rewritten: list[str]  # index operands clamped or wrapped, as 'op:index'


def bound_indices(gm: torch.fx.GraphModule, specs, where: Callable[..., str]) -> Bounds:
    """Derive each input's index range and make every other index safe, in place."""
    operands = [o for node in list(gm.graph.nodes) for o in _operands(gm, node)]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    ranges, checked = {}, {}  # checked: index nodes whose values the runtime bounds -> that range
    for position, spec in enumerate(specs):
        ranges[spec.name] = tuple(spec.range) if spec.range else None
        if len(placeholders) == len(specs) and _is_integer(_dtype(placeholders[position])):
            ranges[spec.name], uses = _input_range(spec, placeholders[position], operands,
                                                   lambda: where("model", "inputs", position, "range"), position)
            checked.update({o.index: ranges[spec.name] for o in uses})
    rewritten = [f"{o.op.name}:{o.index.name}" for o in operands if _guard(gm, o, checked.get(o.index))]
    if rewritten:
        gm.recompile()
    return Bounds({name: r for name, r in ranges.items() if r is not None}, rewritten)


def _input_range(spec, placeholder: torch.fx.Node, operands: list[Operand], where: Callable[[], str],
                 position: int) -> tuple[tuple[int, int] | None, list[Operand]]:
    """An integer input's [low, high): what every table it reaches takes (a declared range may narrow
    it, never widen it: PyTorch raises for the rest), and the operands that range keeps in bounds."""
    declared = _int_range(spec.range) if spec.range else None
    reached = _reached(placeholder)
    uses = [o for o in operands if o.index in reached and o.size is not None]
    if not uses:
        return declared, []
    derived = _intersect([_table_range(o) for o in uses] + [reached[o.index] for o in uses])
    if declared is None:
        return derived, uses
    if not derived[0] <= declared[0] < declared[1] <= derived[1]:
        raise ModelError(f"input '{spec.name}': the declared range [{spec.range[0]:g}, {spec.range[1]:g}) goes "
                         f"beyond what the model's tables take, [{derived[0]}, {derived[1]}) ({_shown(uses)}); "
                         "PyTorch raises IndexError for the rest", code="E308", location=where(),
                         field=f"model.inputs.{position}.range",
                         hint=f"declare [{derived[0]}, {derived[1]}] or a narrower range, or none: the build "
                              "derives it from the model")
    return declared, uses


def _operands(gm: torch.fx.GraphModule, node: torch.fx.Node) -> list[Operand]:
    rules = RULES.get(node.target, ()) if node.op == "call_function" else ()
    return [o for rule in (rules if isinstance(rules, tuple) else (rules,)) for o in _rule_operands(gm, node, rule)]


def _rule_operands(gm: torch.fx.GraphModule, node: torch.fx.Node, rule: Rule) -> list[Operand]:
    if len(node.args) <= rule.index:
        return []
    if rule.table is None:  # one_hot: the classes are a constant
        classes = _arg(1, "num_classes", -1)(node)
        return [Operand(node, node.args[0], (0, None), rule, None, classes if classes > 0 else None)] \
            if isinstance(node.args[0], torch.fx.Node) and isinstance(classes, int) else []
    table = node.args[rule.table]
    if rule.listed:
        return [Operand(node, index, (rule.index, axis), rule, axis, _size(gm, table, axis))
                for axis, index in enumerate(node.args[rule.index])
                if isinstance(index, torch.fx.Node) and _is_integer(_dtype(index))
                and _dtype(index) is not torch.uint8]  # torch reads bool and uint8 index tensors as masks
    index, axis = node.args[rule.index], rule.axis(node) if rule.axis else None
    if not isinstance(index, torch.fx.Node) or not (axis is None or isinstance(axis, int)):
        return []
    size = _size(gm, table, axis)
    return [Operand(node, index, (rule.index, None), rule, axis, None if size is None else size + rule.past_end)]


def _reached(placeholder: torch.fx.Node) -> dict[torch.fx.Node, tuple[int, int]]:
    """Nodes holding only the input's values, each with the range its integer casts on the way keep
    exact (an id cast to int32 must fit int32 to stay the same id). Every shape-only op has one data
    argument, so these nodes form a tree: each is visited once."""
    reached, stack = {}, [(placeholder, (-math.inf, math.inf))]
    while stack:
        node, exact = stack.pop()
        reached[node] = exact
        for user in node.users:
            if user.op != "call_function" or user.target not in SHAPE_ONLY or not user.args or user.args[0] is not node:
                continue
            dtype = _dtype(user)
            if _is_integer(dtype) and user not in reached:
                info = torch.iinfo(dtype)
                stack.append((user, _intersect([exact, (info.min, info.max + 1)])))
    return reached


def _guard(gm: torch.fx.GraphModule, operand: Operand, checked: tuple[int, int] | None) -> bool:
    """Rewrite the operand's index where its values are not known to lie in [0, n): modulo n where
    torch wraps negatives, clamped to [0, n - 1] where it raises. Whether it rewrote."""
    if operand.rule.table is None or not operand.rule.reads:  # one_hot, bag offsets: nothing is read
        return False
    known = checked or _constant_range(gm, operand.index)  # checked: the runtime refuses other values
    if known is not None and operand.size is not None and 0 <= known[0] and known[1] <= operand.size:
        return False
    graph, op = gm.graph, operand.op
    with graph.inserting_before(op):
        size = operand.size if operand.size is not None else _size_node(graph, op.args[operand.rule.table],
                                                                         operand.axis)
        if operand.rule.wrap:  # torch's x[-1] is the last row; any integer lands in [0, n)
            safe = graph.call_function(aten.remainder.Scalar, (operand.index, size))
        else:
            last = size - 1 if isinstance(size, int) else graph.call_function(operator.sub, (size, 1))
            safe = graph.call_function(aten.clamp.default, (operand.index, 0, last))
    argument, position = operand.slot
    if position is None:
        op.update_arg(argument, safe)
    else:
        members = list(op.args[argument])
        members[position] = safe
        op.update_arg(argument, members)
    return True


def _size(gm: torch.fx.GraphModule, table, axis: int | None) -> int | None:
    """The table's static size along `axis` (all its elements for None), else None."""
    value = _value(gm, table)
    if value is None or not hasattr(value, "shape") or (axis is not None and not -value.dim() <= axis < value.dim()):
        return None
    size = math.prod(value.shape) if axis is None else value.shape[axis]
    return size if isinstance(size, int) else None  # a SymInt: the batch


def _size_node(graph: torch.fx.Graph, table: torch.fx.Node, axis: int | None) -> torch.fx.Node:
    """The size as the exported graph computes it: a batch-sized table at each built size."""
    if axis is None:
        return graph.call_function(aten.sym_numel.default, (table,))
    return graph.call_function(aten.sym_size.int, (table, axis))


def _constant_range(gm: torch.fx.GraphModule, node: torch.fx.Node) -> tuple[int, int] | None:
    """[min, max + 1) of an index that is a constant (a buffer like BERT's position_ids, an arange
    with constant bounds) seen through shape-only ops but casts; None when it depends on the inputs."""
    while node.op == "call_function" and node.target in SHAPE_ONLY - CASTS and node.target is not operator.getitem:
        node = node.args[0]
    if node.op == "get_attr":
        value = _value(gm, node)
        if isinstance(value, torch.Tensor) and value.numel() and _is_integer(value.dtype):
            return int(value.min()), int(value.max()) + 1
    if node.op == "call_function" and node.target in (aten.arange.default, aten.arange.start,
                                                        aten.arange.start_step):
        bounds = node.args if node.target is not aten.arange.default else (0, *node.args[:1])
        if all(isinstance(b, int) for b in bounds) and len(bounds) >= 2:
            values = range(*bounds[:3])
            return (min(values), max(values) + 1) if values else None
    return None


def _value(gm: torch.fx.GraphModule, node):
    """A node's example value (meta 'val'), or the tensor itself for a get_attr."""
    if not isinstance(node, torch.fx.Node):
        return None
    if node.op == "get_attr":
        value = gm
        for part in node.target.split("."):
            value = getattr(value, part, None)
        return value
    return node.meta.get("val")


def _dtype(node: torch.fx.Node):
    """The node's dtype; for a tuple (split, unbind) its members'."""
    value = node.meta.get("val")
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    return value.dtype if isinstance(value, torch.Tensor) else None


def _is_integer(dtype) -> bool:
    return dtype is not None and not dtype.is_floating_point and not dtype.is_complex and dtype is not torch.bool


def _table_range(operand: Operand) -> tuple[int, int]:
    n = operand.size
    return (-n if operand.rule.wrap else 0, n)


def _int_range(declared: tuple) -> tuple[int, int]:
    """A declared [low, high) as the integers in it."""
    return math.ceil(declared[0]), math.ceil(declared[1])


def _intersect(ranges: list[tuple]) -> tuple:
    low, high = max(r[0] for r in ranges), min(r[1] for r in ranges)
    return (int(low) if math.isfinite(low) else low, int(high) if math.isfinite(high) else high)


def _shown(uses: list[Operand]) -> str:
    """'embedding n=100, index n=50': each op and the size it indexes."""
    return ", ".join(dict.fromkeys(f"{o.op.target.__name__.split('.')[0]} n={o.size}" for o in uses))
