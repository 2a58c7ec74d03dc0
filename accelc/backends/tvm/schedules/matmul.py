"""Float GEMM (tags.GEMM): C[i, j] = sum_k A[i, k] * B[k, j] with its elementwise epilogue (bias,
activation), a convolution's patches (tags.IM2COL) before it when the lowering fused them.

TVM 0.27's CPU DLight rules cover GEMV and reductions but not matrix multiply, and the naive loop
nest runs ~20x slower than PyTorch on an MLP. This rule gives every dense matmul a register-tiled,
vectorised, multi-threaded schedule: the classic CPU GEMM blocking, with no search. Convolutions
a few panels wide are blocked further (`_blocked`): rows and k in blocks, C accumulated per block.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import tvm
from tvm import tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from accelc.backends.tvm.kernels import isa as isa_info
from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.schedules.loops import (PARALLEL_MIN, TILE_SCOPE, flat, largest_divisor,
                                                 patches_per_tile, static_extent, vector_width)
from accelc.backends.tvm.schedules.rule import block_tags, root_blocks

ROWS = 4  # register tile: ROWS x 2 vectors of accumulators (4 x 16 floats = 8 of AVX2's 16 registers);
# doubled with AVX-512's 32 registers: 16 accumulators hide the FMA latency
MATVEC_ROWS = 8  # rows of a one-column matmul computed together (4 and 8 alike, 16 slower)
K_STEPS = 8  # k steps per iteration of the reduction loop (the largest divisor of k up to this): one
# step is 8 FMAs and 6 loads, so a loop counter and branch per step cost a share of instructions that
# a core shared with a busy SMT sibling cannot hide
K_BLOCK = 256  # k per block of a blocked GEMM (MLAS steps k by 128-256): a block's panel of B (kc x nr)
# stays in L1 while every row tile of the row block reads it
BLOCK_ROWS = 128  # rows per row block: their patches (rows x kc) stay in L2 and B is read once per block
C_BLOCK_BYTES = 1 << 18  # at most this much of C per row block (rows x N floats), accumulated in L2
BLOCKED_PANELS = 4  # GEMMs this few panels wide are blocked: a row tile's patches serve only this many
# panels, so the per-tile copy of the plain schedule is not hidden behind enough FMAs (ResNet's conv1
# and 64- and 128-channel layers); wider ones keep the plain schedule, whose tile stores C once


class Matmul(CPUScheduleRule):
    """C[i, j] = sum_k A[i, k] * B[k, j], followed by elementwise blocks (bias, activation)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        tagged = block_tags(sch, blocks)
        patches = None
        if tagged[:1] == [tags.IM2COL] and len(blocks) > 1:  # a convolution (lower/conv.patches_matmul)
            patches, blocks, tagged = blocks[0], blocks[1:], tagged[1:]
        if tagged[:1] != [tags.GEMM]:
            return None
        matmul = blocks[0]
        loops = sch.get_loops(matmul)
        kinds = [iv.iter_type for iv in sch.get(matmul).iter_vars]
        if len(loops) < 3 or kinds[-1] != tirx.IterVar.CommReduce or any(k != tirx.IterVar.DataPar for k in kinds[:-1]):
            return None
        extents = [static_extent(sch, loop) for loop in loops]
        if None in extents:
            return None  # symbolic shapes: leave to the defaults
        isa = isa_info.of(target)
        if extents[-2] == 1 and (vector := vector_width(extents[-1], isa.lanes())):
            return _matvec(sch, blocks, extents, vector)
        if (plan := blocking(sch, blocks[0], patches, extents, isa)) is not None:
            return _blocked(sch, blocks, patches, plan)
        return _tiled(sch, blocks, patches, extents, isa)


def _tiled(sch, blocks, patches, extents: list[int], isa: isa_info.Isa):
    """A register tile of rows x 2 vectors, k in steps of K_STEPS, the epilogue applied as the tile
    is stored and a convolution's patches computed per row tile."""
    matmul = blocks[0]
    lanes = isa.lanes()
    rows, cols = tile_rows(extents[-3], isa), min(2 * lanes, extents[-2])
    panel = sch.get(matmul).annotations.get(tags.PANEL_COLUMNS)
    if panel is not None:  # B packed in panels (lower/gemm.py): a tile is one panel wide
        cols = int(panel)
    padded = panel is None and patches is None and extents[-2] % cols != 0
    if padded:  # a partial vector of columns would run scalar: B and C padded to whole tiles instead
        blocks = _pad_columns(sch, blocks, len(extents) - 3, cols, lanes)
        matmul = blocks[0]
    *batch, i, j, k = sch.get_loops(matmul)
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, cols])
    ko, ki = sch.split(k, [None, largest_divisor(extents[-1], K_STEPS)])
    sch.reorder(*batch, io, jo, ko, ki, ii, ji)
    for block in blocks[1:-1]:
        sch.compute_inline(block)  # the epilogue becomes one elementwise pass
    # Accumulate the tile in a small buffer of its own so LLVM keeps it in registers across k.
    tile = sch.cache_write(matmul, 0, TILE_SCOPE)
    sch.reverse_compute_at(tile, jo)
    if len(blocks) > 1 and (padded or not _stored_with_tile(sch, blocks[-1])):
        # padding columns are not stored: the epilogue runs per row tile over the real columns, a
        # plain loop LLVM vectorises with a remainder
        sch.reverse_compute_at(blocks[-1], io)
    if patches is not None:
        patches_per_tile(sch, patches, io)
    outer = sch.fuse(*batch, io) if batch else io
    if (extents[-3] // rows) * max(1, len(batch)) >= 2:
        sch.parallel(outer)
    sch.vectorize(ji)
    sch.unroll(ii)
    sch.unroll(ki)
    tile_loops = sch.get_loops(tile)[-2:]
    sch.vectorize(tile_loops[-1])
    sch.decompose_reduction(matmul, ko)
    return sch


class Blocking(NamedTuple):
    """How a GEMM over packed panels is blocked (`_blocked`): the register tile, the row tiles
    per row block and the k per block."""
    rows: int
    cols: int
    lanes: int
    tiles_per_block: int
    k_block: int


def blocking(sch, matmul, patches, extents: list[int], isa: isa_info.Isa) -> Blocking | None:
    """The blocking of a convolution's GEMM over packed panels (lower/gemm.py), at most
    BLOCKED_PANELS wide and more than one row tile; None where the plain row-tile schedule runs."""
    panel = sch.get(matmul).annotations.get(tags.PANEL_COLUMNS)
    if patches is None or panel is None or len(extents) != 3:
        return None
    m, n, depth = extents
    rows = tile_rows(m, isa)
    tiles = -(-m // rows)
    if tiles < 2 or n > BLOCKED_PANELS * int(panel):
        return None
    group = int(sch.get(patches).annotations[tags.PATCH_GROUP])
    k_block = next(d for d in range(min(K_BLOCK, depth), 0, -1)
                   if depth % d == 0 and (d % group == 0 or group % d == 0))
    per = max(1, min(BLOCK_ROWS, C_BLOCK_BYTES // (4 * n)) // rows)
    per = min(per, -(-tiles // 2))  # at least two row blocks: one per thread on two cores
    return Blocking(rows, int(panel), isa.lanes(), per, k_block)


def _blocked(sch, blocks, patches, plan: Blocking):
    """A row block's C accumulated over k blocks (as MLAS blocks its SGEMM): for each k block the
    block's patches (rows x kc, in L2), then for each panel of B (kc x nr, in L1) every row tile of
    the block, its register tile loaded from C, kc steps of FMAs and stored back (LLVM keeps the
    tile in registers across the k loop); the epilogue runs once per row block. B is read once per
    row block instead of once per row tile, and the patches are copied in long runs."""
    matmul = blocks[0]
    i, j, k = sch.get_loops(matmul)
    row_blocks = -(-static_extent(sch, i) // (plan.rows * plan.tiles_per_block))
    io, ii = sch.split(i, [None, plan.rows])
    io, it = sch.split(io, [None, plan.tiles_per_block])
    jo, ji = sch.split(j, [None, plan.cols])
    kb, k = sch.split(k, [None, plan.k_block])
    ko, ki = sch.split(k, [None, largest_divisor(plan.k_block, K_STEPS)])
    sch.reorder(io, kb, jo, it, ko, ki, ii, ji)
    for block in blocks[1:-1]:
        sch.compute_inline(block)  # the epilogue becomes one elementwise pass
    if len(blocks) > 1:
        sch.reverse_compute_at(blocks[-1], io)
        columns = sch.get_loops(blocks[-1])[-1]  # N, or the real columns of panels padded past N
        if vector := vector_width(static_extent(sch, columns), plan.lanes):
            sch.vectorize(sch.split(columns, [None, vector])[1])
    sch.compute_at(patches, kb)
    group = int(sch.get(patches).annotations[tags.PATCH_GROUP])
    sch.vectorize(sch.split(sch.get_loops(patches)[-1], [None, min(group, plan.k_block)])[1])
    sch.vectorize(ji)
    sch.unroll(ii)
    sch.unroll(ki)
    if row_blocks >= 2:
        sch.parallel(io)
    init = sch.decompose_reduction(matmul, kb)  # after parallel: TVM refuses a loop over an init block
    sch.vectorize(sch.get_loops(init)[-1])
    return sch


def _stored_with_tile(sch, epilogue) -> bool:
    """The epilogue applied as the tile is stored (bias, activation), where it covers every column
    the tile computes; False (nothing changed) when it reads fewer (panels padded past N)."""
    try:
        sch.reverse_compute_inline(epilogue)
        return True
    except tvm.s_tir.ScheduleError:
        return False


def tile_rows(m: int, isa: isa_info.Isa) -> int:
    """Rows of the register tile: ROWS (2 x ROWS with AVX-512's 32 registers), else the nearest
    count of rows the registers hold that divides m. Where none does, the last tile runs under a
    row predicate, which costs nothing up to 6 rows but halves the speed of 8 (registers spill)."""
    most = ROWS * (2 if isa.avx512f else 1)
    if m <= most:
        return m
    fitting = (most, most - 1, most - 2, most + 2) if isa.avx512f else (most, most + 2, most + 1, most - 1)
    return next((rows for rows in fitting if m % rows == 0), min(most, 6))


def _pad_columns(sch, blocks, batch_axes: int, cols: int, lanes: int) -> list:
    """Pad the GEMM's columns to a multiple of `cols` (TVM's pad_einsum): B is copied into a padded
    buffer first (one vectorised pass), the GEMM computes whole tiles into a padded C, and the copy
    back to C joins the epilogue. Returns the blocks as `_tiled` takes them: the GEMM first."""
    matmul = blocks[0]
    sch.pad_einsum(matmul, [1] * batch_axes + [1, cols, 1])
    children = sch.get_child_blocks(sch.get_sblock("root"))
    at = [sch.get(b).name_hint for b in children].index(sch.get(matmul).name_hint)
    for pad in children[:at]:  # B's padded copy (A needs none: rows are not padded)
        flat(sch, pad, lanes)
    return children[at:]


def _matvec(sch, blocks, extents: list[int], lanes: int):
    """One output column (a classifier head): a tile of one column would run scalar, so each row's
    dot product is summed in vector lanes across k, the lanes added at the end, and the
    epilogue (bias, sigmoid) vectorised across rows.

    When the row count allows, rows go in groups of one vector (MATVEC_ROWS): a group's lane sums,
    totals and epilogue run back to back while they are in registers and L1, instead of three
    passes over all rows."""
    matmul = blocks[0]
    for block in blocks[1:-1]:
        sch.compute_inline(block)
    *outer, k = sch.get_loops(matmul)
    ko, ki = sch.split(k, [None, lanes])
    partial = sch.rfactor(ki, len(outer))
    group = vector_width(math.prod(extents[:-1]), MATVEC_ROWS)  # 8 rows, else 4
    vector = group and vector_width(group, lanes)
    if vector:
        rows = sch.get_loops(matmul)[:-1]
        groups, _ = sch.split(sch.fuse(*rows) if len(rows) > 1 else rows[0], [None, group])
        sch.compute_at(partial, groups)
        ki, *rows, ko = sch.get_loops(partial)[1:]  # compute_at orders loops as the block's iterators
        sch.reorder(*rows, ko, ki)
    else:
        *rows, ko, ki = sch.get_loops(partial)
        groups = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    sch.vectorize(ki)
    if extents[-1] // lanes <= 16:
        sch.unroll(ko)
    sch.unroll(sch.get_loops(matmul)[-1])  # adding up the lanes
    if len(blocks) > 1 and vector:
        sch.reverse_compute_at(blocks[-1], groups)
        epilogue = sch.get_loops(blocks[-1])[1:]
        fused = sch.fuse(*epilogue) if len(epilogue) > 1 else epilogue[0]
        sch.vectorize(sch.split(fused, [None, vector])[1])
    elif len(blocks) > 1:
        flat(sch, blocks[-1], lanes)
    if math.prod(extents) >= PARALLEL_MIN and int(sch.get(groups).extent) >= 2:
        sch.parallel(groups)
    sch.decompose_reduction(partial, ko)  # after parallel: TVM refuses a loop over an init block
    return sch
