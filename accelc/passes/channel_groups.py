"""Channel dependency groups: which tensors must shrink together when a layer loses output channels.

Each prunable Linear/Conv (a *producer*) starts a channel space at its output. The space is
followed forward through the graph by per-op rules (rules as data, `RULES`): elementwise ops
carry it, BatchNorm parameters follow it, a consumer Linear/Conv takes it on its input dimension
and stops it, flatten/view spread each channel over a run of features, concat shifts it.
A binary op that meets another full-width tensor is a *junction*: residual adds tie the spaces
on both sides into one group that is pruned together or not at all. Anything the rules do not
understand blocks the group with a reason, so the pruner skips it instead of breaking the graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import fx

from accelc.capture.export import module_path

aten = torch.ops.aten
LINEAR = aten.linear.default
CONVS = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default}

# ops that act on each element (or along non-channel dims only) and keep every dim in place
PASSTHROUGH = {
    aten.relu.default, aten.relu_.default, aten.relu6.default, aten.gelu.default, aten.silu.default,
    aten.sigmoid.default, aten.tanh.default, aten.hardswish.default, aten.hardsigmoid.default,
    aten.hardtanh.default, aten.hardtanh_.default, aten.leaky_relu.default, aten.elu.default,
    aten.selu.default, aten.softplus.default, aten.mish.default, aten.abs.default, aten.neg.default,
    aten.exp.default, aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default,
    aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.detach.default,
    aten.alias.default, aten._to_copy.default, aten.to.dtype, aten.pow.Tensor_Scalar,
}
BINARY = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.maximum.default,
          aten.minimum.default, aten.add_.Tensor, aten.mul_.Tensor}
# op -> how many trailing (spatial) dims it works on; the channel dim must not be one of them
SPATIAL = {aten.max_pool1d.default: 1, aten.avg_pool1d.default: 1, aten.adaptive_avg_pool1d.default: 1,
           aten.max_pool2d.default: 2, aten.avg_pool2d.default: 2, aten.adaptive_avg_pool2d.default: 2,
           aten.max_pool3d.default: 3, aten.avg_pool3d.default: 3, aten.adaptive_avg_pool3d.default: 3,
           aten.upsample_nearest2d.vec: 2, aten.upsample_bilinear2d.vec: 2}
REDUCTIONS = {aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default}
RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
SOFTMAX = {aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default}


class Blocked(Exception):
    """The channels reach something the rules cannot rewrite; the message says what and where."""


@dataclass(frozen=True)
class Slice:
    """A tensor dimension that follows the channels: channel k owns indices offset + k*repeat + [0, repeat)."""
    node: fx.Node  # a get_attr node
    dim: int
    offset: int = 0
    repeat: int = 1

    def indices(self, channels) -> list[int]:
        return [self.offset + k * self.repeat + r for k in channels for r in range(self.repeat)]


@dataclass(frozen=True)
class State:
    """Where the channels are: in `node`'s output, along `dim`, at offset/repeat as in Slice."""
    node: fx.Node
    dim: int
    offset: int = 0
    repeat: int = 1


@dataclass
class Space:
    """One producer's output channels and everything found to depend on them."""
    producer: fx.Node
    size: int
    slices: set = field(default_factory=set)
    reshapes: set = field(default_factory=set)  # (view node, position) whose shape entry becomes -1
    junctions: list = field(default_factory=list)  # (state, other operand node, its aligned dim)
    visited: set = field(default_factory=set)  # States reached
    blocked: str | None = None


@dataclass
class Group:
    """Producers whose output channels are coupled; pruned together (same channel indices) or not at all."""
    producers: list
    size: int
    slices: set
    reshapes: set
    reason: str | None = None  # why it cannot be pruned; None when it can


def layer_name(node: fx.Node) -> str:
    """The module path users write globs against ('layer1.conv1.0'), else the node name."""
    return module_path(node) or node.name


def is_layer(node: fx.Node) -> bool:
    return node.op == "call_function" and (node.target == LINEAR or node.target in CONVS)


def producer_problem(node: fx.Node) -> str | None:
    """Why a Linear/Conv cannot start a channel space of its own (None when it can)."""
    weight = node.args[1]
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        return "its weight is computed in the graph, not a stored parameter"
    if len(weight.users) > 1:
        return f"its weight is shared with {len(weight.users) - 1} other op(s)"
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    if node.target in CONVS and groups != 1:
        return f"grouped/depthwise conv (groups={groups}): its output channels are tied to its input channels"
    return None


def _norm(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def _next(state: State, node: fx.Node, dim: int | None = None, offset=None, repeat=None) -> list[State]:
    return [State(node, state.dim if dim is None else dim, state.offset if offset is None else offset,
                  state.repeat if repeat is None else repeat)]


# ---- rules: (space, state, user, shapes) -> next states; raise Blocked to stop ----------------

def _passthrough(space, state, user, shapes):
    if shapes[user][state.dim] != shapes[state.node][state.dim]:
        raise Blocked(f"{user.target} at node {user.name} changes the channel dim")
    return _next(state, user)


def _binary(space, state, user, shapes):
    out = shapes[user]
    dim = state.dim + len(out) - len(shapes[state.node])  # broadcasting aligns trailing dims
    for other in user.args[:2]:
        if not isinstance(other, fx.Node) or other is state.node:
            continue
        other_shape = shapes.get(other, ())
        aligned = dim - (len(out) - len(other_shape))
        if aligned < 0 or other_shape[aligned] == 1:
            continue  # broadcast along the channels: nothing to slice
        if other.op == "get_attr":
            space.slices.add(Slice(other, aligned, state.offset, state.repeat))
        else:
            space.junctions.append((state, other, aligned))
    return _next(state, user, dim)


def _batch_norm(space, state, user, shapes):
    if user.args[0] is not state.node or state.dim != 1:
        raise Blocked(f"batch_norm at node {user.name} normalises another dim than these channels")
    for arg in user.args[1:5]:
        if isinstance(arg, fx.Node):
            if arg.op != "get_attr":
                raise Blocked(f"batch_norm at node {user.name} has computed parameters")
            space.slices.add(Slice(arg, 0, state.offset, state.repeat))
    return _next(state, user)


def _layer_norm(space, state, user, shapes):
    rank = len(shapes[state.node])
    if user.args[0] is not state.node or state.dim >= rank - len(user.args[1]):
        raise Blocked(f"layer_norm at node {user.name} normalises over these channels")
    return _next(state, user)


def _spatial(space, state, user, shapes):
    if user.args[0] is not state.node or state.dim >= len(shapes[state.node]) - SPATIAL[user.target]:
        raise Blocked(f"{user.target} at node {user.name} works along the channel dim")
    return _next(state, user)


def _reduction(space, state, user, shapes):
    rank = len(shapes[state.node])
    dims = user.args[1] if len(user.args) > 1 else None
    keepdim = user.args[2] if len(user.args) > 2 else user.kwargs.get("keepdim", False)
    dims = [_norm(d, rank) for d in ([dims] if isinstance(dims, int) else dims or range(rank))]
    if state.dim in dims:
        raise Blocked(f"{user.target} at node {user.name} reduces over the channels")
    return _next(state, user, state.dim if keepdim else state.dim - sum(d < state.dim for d in dims))


def _softmax(space, state, user, shapes):
    if _norm(user.args[1], len(shapes[state.node])) == state.dim:
        raise Blocked(f"softmax at node {user.name} normalises over the channels")
    return _next(state, user)


def _flatten(space, state, user, shapes):
    shape = shapes[state.node]
    start = _norm(user.args[1] if len(user.args) > 1 else 0, len(shape))
    end = _norm(user.args[2] if len(user.args) > 2 else -1, len(shape))
    if state.dim < start:
        return _next(state, user)
    if state.dim > end:
        return _next(state, user, state.dim - (end - start))
    if state.dim != start:
        raise Blocked(f"flatten at node {user.name} merges the channels into an outer dim")
    inner = math.prod(shape[state.dim + 1:end + 1])
    return _next(state, user, start, state.offset * inner, state.repeat * inner)


def _reshape(space, state, user, shapes):
    before, after, dim = shapes[state.node], shapes[user], state.dim
    if before == after:
        return _next(state, user)
    target = list(user.args[1])
    flattens = len(after) == dim + 1 and after[:dim] == before[:dim]  # like flatten(dim, -1)
    keeps = after[:dim + 1] == before[:dim + 1]  # the channel dim itself untouched
    if not (flattens or keeps) or any(isinstance(t, int) and t == -1 for i, t in enumerate(target) if i != dim):
        raise Blocked(f"{user.target} at node {user.name} reshapes the channel dim {list(before)} -> {list(after)}")
    space.reshapes.add((user, dim))  # its shape entry for the channels becomes -1 (inferred)
    if flattens:
        inner = math.prod(before[dim + 1:])
        return _next(state, user, dim, state.offset * inner, state.repeat * inner)
    return _next(state, user)


def _transpose(space, state, user, shapes):
    rank = len(shapes[state.node])
    if user.target == aten.permute.default:
        order = [_norm(d, rank) for d in user.args[1]]
    else:
        order = list(range(rank))
        a, b = _norm(user.args[1], rank), _norm(user.args[2], rank)
        order[a], order[b] = order[b], order[a]
    return _next(state, user, order.index(state.dim))


def _unsqueeze(space, state, user, shapes):
    at = _norm(user.args[1], len(shapes[user]))
    return _next(state, user, state.dim + (at <= state.dim))


def _cat(space, state, user, shapes):
    tensors = list(user.args[0])
    rank = len(shapes[state.node])
    at = _norm(user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0), rank)
    if at != state.dim:
        for other in tensors:
            if other is not state.node:
                space.junctions.append((state, other, state.dim))
        return _next(state, user)
    found = []
    for i, tensor in enumerate(tensors):
        if tensor is state.node:
            shift = sum(shapes[t][at] for t in tensors[:i])
            found += _next(state, user, at, state.offset + shift)
    return found


def _linear(space, state, user, shapes):
    if user.args[0] is not state.node:
        raise Blocked(f"these channels are used as a weight by linear at node {user.name}")
    if state.dim != len(shapes[state.node]) - 1:
        return _next(state, user)  # Linear maps the last dim; the channels ride along
    return _consume(space, state, user, 1)


def _conv(space, state, user, shapes):
    groups = user.args[6] if len(user.args) > 6 else user.kwargs.get("groups", 1)
    if user.args[0] is not state.node or state.dim != 1:
        raise Blocked(f"conv at node {user.name} does not take these channels as its input channels")
    if groups != 1:
        raise Blocked(f"these channels feed grouped/depthwise conv {layer_name(user)} (groups={groups}), "
                      "whose input channels are tied to its output channels")
    return _consume(space, state, user, 1)


def _consume(space, state, user, dim: int) -> list:
    weight = user.args[1]
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr") or len(weight.users) > 1:
        raise Blocked(f"the weight of {layer_name(user)} (node {user.name}) is not a private parameter")
    space.slices.add(Slice(weight, dim, state.offset, state.repeat))
    return []


RULES = {
    **{op: _passthrough for op in PASSTHROUGH},
    **{op: _binary for op in BINARY},
    **{op: _spatial for op in SPATIAL},
    **{op: _reduction for op in REDUCTIONS},
    **{op: _reshape for op in RESHAPES},
    **{op: _softmax for op in SOFTMAX},
    **{op: _conv for op in CONVS},
    aten.batch_norm.default: _batch_norm,
    aten.layer_norm.default: _layer_norm,
    aten.flatten.using_ints: _flatten,
    aten.transpose.int: _transpose,
    aten.permute.default: _transpose,
    aten.unsqueeze.default: _unsqueeze,
    aten.cat.default: _cat,
    LINEAR: _linear,
}


# ---- tracing and grouping --------------------------------------------------------------------

def trace(producer: fx.Node, shapes: dict) -> Space:
    """Follow one producer's output channels forward until every path is consumed or blocked."""
    out_dim = 1 if producer.target in CONVS else len(shapes[producer]) - 1
    space = Space(producer, shapes[producer][out_dim])
    space.slices.add(Slice(producer.args[1], 0))
    bias = producer.args[2] if len(producer.args) > 2 else producer.kwargs.get("bias")
    if isinstance(bias, fx.Node):
        if bias.op != "get_attr" or len(bias.users) > 1:
            space.blocked = f"the bias of {layer_name(producer)} is not a private parameter"
            return space
        space.slices.add(Slice(bias, 0))
    queue = [State(producer, out_dim)]
    try:
        while queue:
            state = queue.pop()
            if state not in space.visited:
                space.visited.add(state)
                for user in state.node.users:
                    queue.extend(_step(space, state, user, shapes))
    except Blocked as exc:
        space.blocked = str(exc)
    return space


def _step(space: Space, state: State, user: fx.Node, shapes: dict) -> list[State]:
    if user.op == "output":
        raise Blocked(f"its channels reach the model output (through node {state.node.name})")
    rule = RULES.get(user.target) if user.op == "call_function" else None
    if rule is None:
        name = getattr(user.target, "__name__", str(user.target))
        raise Blocked(f"op {name} at node {user.name} uses these channels in a way the pass does not track")
    try:
        return rule(space, state, user, shapes)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise Blocked(f"{user.target} at node {user.name} could not be analysed ({type(exc).__name__})") from None


def build_groups(layers: list[fx.Node], shapes: dict) -> tuple[list[Group], dict[fx.Node, str]]:
    """Trace every layer that can be a producer and join spaces that meet at junctions.

    Returns the groups and {layer: reason} for layers that cannot be pruned on their own."""
    unfit = {n: p for n in layers if (p := producer_problem(n))}
    spaces = {n: trace(n, shapes) for n in layers if n not in unfit}
    tracked: dict[tuple, list] = {}
    for space in spaces.values():
        for state in space.visited:
            tracked.setdefault((state.node, state.dim), []).append((space, state))
    parent = {n: n for n in spaces}

    def root(n):
        while parent[n] is not n:
            n = parent[n]
        return n

    reasons = {n: s.blocked for n, s in spaces.items() if s.blocked}
    for space in spaces.values():
        for state, other, dim in space.junctions:
            partners = tracked.get((other, dim), [])
            for partner, _ in partners:
                parent[root(partner.producer)] = root(space.producer)
            problem = _junction_problem(space, state, other, dim, partners, shapes)
            if problem:
                reasons.setdefault(space.producer, problem)
    members: dict[fx.Node, list] = {}
    for n in spaces:
        members.setdefault(root(n), []).append(spaces[n])
    groups = []
    for group_spaces in members.values():
        reason = next((reasons[s.producer] for s in group_spaces if s.producer in reasons), None)
        groups.append(Group([s.producer for s in group_spaces], group_spaces[0].size,
                            set().union(*(s.slices for s in group_spaces)),
                            set().union(*(s.reshapes for s in group_spaces)), reason))
    return groups, unfit


def _junction_problem(space, state, other, dim, partners, shapes) -> str | None:
    """A junction is clean when both sides carry exactly one whole channel space each."""
    width = shapes[other][dim]
    whole = state.offset == 0 and state.repeat == 1 and shapes[state.node][state.dim] == space.size == width
    if not partners:
        return (f"node {state.node.name} meets {other.name} elementwise, and no prunable layer produces "
                f"the channels of {other.name}")
    if not whole or any(s.offset or s.repeat != 1 or p.size != width for p, s in partners):
        return f"node {state.node.name} meets {other.name} elementwise where channels of several layers are mixed"
    return None
