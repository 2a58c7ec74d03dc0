"""Row reductions followed by a normalisation: softmax, LayerNorm, GroupNorm, RMSNorm (and their
fused epilogues), as TVM's legalization writes them: reduction blocks over the innermost axes of
a row (max, sum, sum of squares), elementwise blocks between them, an elementwise last block.

TVM's CPU rule (dlight.cpu.Reduction) runs each row's reductions as scalar loops: a float sum
cannot be vectorised by LLVM without reassociation. Here each reduction is split into a vector
of partial results (rfactor) that accumulate one vector of the row per step and are summed once
at the end of the row; every block of a row is computed inside the row's loop, so the row stays
in L1 between its passes; rows run in parallel; the elementwise passes are vectorised (`exp`
through schedules/vector_math.py). GroupNorm's rows are groups of channels: the last block's
channel axis is split into (group, channel in group) to meet the reductions' rows.
"""
from __future__ import annotations

import math

from tvm import tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from accelc.backends.tvm.kernels import isa as isa_info
from accelc.backends.tvm.schedules.loops import PARALLEL_MIN, static_extent, vector_width
from accelc.backends.tvm.schedules.rule import root_blocks

SPATIAL, REDUCE = tirx.IterVar.DataPar, tirx.IterVar.CommReduce


class RowReduction(CPUScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        if len(blocks) < 2 or _is_reduction(sch, blocks[-1]):
            return None
        reductions = [b for b in blocks if _is_reduction(sch, b)]
        if not reductions or not all(_reduces_innermost(sch, b) for b in reductions):
            return None
        try:
            return _schedule(sch, blocks, isa_info.of(target).lanes())
        except Exception:  # a shape or access pattern this rule does not cover: the next rule's
            return None


def _is_reduction(sch, block) -> bool:
    return any(iv.iter_type == REDUCE for iv in sch.get(block).iter_vars)


def _reduces_innermost(sch, block) -> bool:
    """Spatial axes first, then reduction axes, each a loop of its own with a static extent."""
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)
    spatial = kinds.count(SPATIAL)
    return (len(loops) == len(kinds) and spatial >= 1 and set(kinds) <= {SPATIAL, REDUCE}
            and kinds == [SPATIAL] * spatial + [REDUCE] * (len(kinds) - spatial)
            and None not in [static_extent(sch, loop) for loop in loops])


def _schedule(sch, blocks, lanes: int):
    blocks = _inline(sch, blocks)
    reductions = [b for b in blocks if _is_reduction(sch, b)]
    rows = _row_extents(sch, reductions[0])
    if any(_row_extents(sch, b) != rows for b in reductions[1:]):
        return None
    last = blocks[-1]
    work = math.prod(static_extent(sch, lp) or 1 for lp in sch.get_loops(last))
    row = _row_loop(sch, last, rows)
    if row is None:
        return None
    if math.prod(rows) >= 2 and work >= PARALLEL_MIN:
        sch.parallel(row)  # before the blocks move under it (their decomposed reductions would block it)
    partials = [p for p in (_vector_partials(sch, b, lanes) for b in reductions) if p is not None]
    for block in reversed(_blocks_before(sch, last)):
        sch.compute_at(block, row, preserve_unit_loops=True)
    for block in _blocks_before(sch, last):
        if not _is_reduction(sch, block):
            _vectorise_inner(sch, block, row, lanes)
    for partial, vector in partials:
        _vectorise_partial(sch, partial, row, vector)
    _vectorise_inner(sch, last, row, lanes)
    return sch


def _inline(sch, blocks):
    """Copies (reshapes) and single-use elementwise blocks inlined into their consumers, so that
    the kernel is reductions, the elementwise blocks more than one block reads (softmax's exp,
    computed once per row), and one last block."""
    for block in blocks[:-1]:
        if _is_reduction(sch, block):
            continue
        if _is_copy(sch, block) or len(sch.get_consumers(block)) <= 1:
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: S112 (kept as a block of its own)
                continue
    root = sch.get_sblock("root")
    return list(sch.get_child_blocks(root))


def _is_copy(sch, block) -> bool:
    body = sch.get(block).body  # tirx.BufferLoad is a function in TVM 0.27, not the node's class
    return isinstance(body, tirx.BufferStore) and type(body.value).__name__ == "BufferLoad"


def _row_extents(sch, block) -> list[int]:
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    return [static_extent(sch, lp) for lp, k in zip(sch.get_loops(block), kinds) if k == SPATIAL]


def _row_loop(sch, last, rows: list[int]):
    """The last block's loops over the reductions' rows, fused; its axis that holds a row's
    several channels (GroupNorm: C = groups x channels per group) split to match."""
    loops = sch.get_loops(last)
    if len(loops) <= len(rows):
        return None
    extents = [static_extent(sch, lp) for lp in loops]
    lead = list(loops[:len(rows)])
    for i, (have, want) in enumerate(zip(extents, rows)):
        if have == want:
            continue
        if i != len(rows) - 1 or have is None or have % want:
            return None
        lead[i] = sch.split(loops[i], [want, have // want])[0]
    return sch.fuse(*lead) if len(lead) > 1 else lead[0]


def _blocks_before(sch, last) -> list:
    root = sch.get_sblock("root")
    children = list(sch.get_child_blocks(root))
    return [b for b in children if not sch.get(b).same_as(sch.get(last))]


def _vector_partials(sch, block, lanes: int):
    """The reduction's axes fused and split into steps of one vector whose lanes accumulate apart
    (rfactor): (the partial results' block, the vector width); None (left scalar) when no vector
    divides the reduced extent."""
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    reduced = [lp for lp, k in zip(loops, kinds) if k == REDUCE]
    total = math.prod(static_extent(sch, lp) for lp in reduced)
    vector = vector_width(total, lanes)
    if vector is None or total == vector:
        return None
    fused = sch.fuse(*reduced) if len(reduced) > 1 else reduced[0]
    _, lane = sch.split(fused, [None, vector])
    return sch.rfactor(lane, len(kinds) - len(reduced)), vector


def _vectorise_partial(sch, partial, row, vector: int) -> None:
    """Once under the row (compute_at regenerates its loops): the vector's lanes innermost and
    vectorised inside the step loop, the zeroing of the partial results outside it."""
    loops = sch.get_loops(partial)
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(row)))
    inner = loops[at + 1:]
    step = inner[-1]  # the only reduction loop, last
    lane = next(lp for lp in inner[:-1] if static_extent(sch, lp) == vector)
    sch.reorder(step, lane)
    sch.vectorize(lane)
    init = sch.decompose_reduction(partial, step)
    init_loops = sch.get_loops(init)
    if static_extent(sch, init_loops[-1]) == vector:
        sch.vectorize(init_loops[-1])


def _vectorise_inner(sch, block, row, lanes: int) -> None:
    """The block's loops inside the row fused, in vectors where a vector width divides them."""
    loops = sch.get_loops(block)
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(row)))
    inner = loops[at + 1:]
    if not inner:
        return
    fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
    total = static_extent(sch, fused)
    vector = vector_width(total, lanes) if total else None
    if vector is not None:
        sch.vectorize(sch.split(fused, [None, vector])[1])
