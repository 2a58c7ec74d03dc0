"""Default CPU schedules for kernels no tuning record covers.

TVM 0.27's CPU DLight rules cover GEMV and reductions but not matrix multiply, and the naive
loop nest legalization produces runs ~20x slower than PyTorch on an MLP (benchmarks/tuning.py).
This rule gives every dense matmul (+ fused elementwise epilogue) a register-tiled, vectorised,
multi-threaded schedule: the classic CPU GEMM blocking, with no search.
"""
from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

ROWS = 4  # register tile: ROWS x 2 vectors of accumulators (4 x 16 floats = 8 of AVX2's 16 registers);
# doubled with AVX-512's 32 registers: 16 accumulators hide the FMA latency (8-12% faster here)
TILE_SCOPE = "global"  # a register tile's buffer: TVM puts small "global" CPU buffers on the stack (and
# LLVM then into registers), while a "local" one is a workspace allocated and freed per tile (~30% of
# the int8 kernels' time, 7% of the float ones', on the MLP at batch 256)
MATVEC_ROWS = 8  # rows of a one-column matmul computed together (4 and 8 measured alike, 16 slower)
K_STEPS = 8  # k steps per iteration of the reduction loop (the largest divisor of k up to this): one
# step is 8 FMAs and 6 loads, so a loop counter and branch per step are ~15% more instructions. Alone
# on a core that is hidden behind the FMAs; with a busy SMT sibling sharing the core's dispatch it is
# not (the MLP's layers at batch 256: 0.70-0.80x the time under load, equal on a quiet host)


def _extent(sch, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


class Matmul(CPUScheduleRule):
    """C[i, j] = sum_k A[i, k] * B[k, j], followed by elementwise blocks (bias, activation)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        names = [sch.get(b).name_hint for b in blocks]
        patches = None
        if names[:1] == ["im2col"] and len(names) > 1:  # a convolution (conv_lower.patches_matmul)
            patches, blocks, names = blocks[0], blocks[1:], names[1:]
        if not names or not names[0].endswith("matmul"):
            return None
        matmul = blocks[0]
        loops = sch.get_loops(matmul)
        kinds = [iv.iter_type for iv in sch.get(matmul).iter_vars]
        if len(loops) < 3 or kinds[-1] != tirx.IterVar.CommReduce or any(k != tirx.IterVar.DataPar for k in kinds[:-1]):
            return None
        extents = [_extent(sch, loop) for loop in loops]
        if None in extents:
            return None  # symbolic shapes: leave to the defaults
        lanes = _lanes(target)
        if extents[-2] == 1 and (vector := _vector_width(extents[-1], lanes)):
            return _matvec(sch, blocks, extents, vector)
        *batch, i, j, k = loops
        rows, cols = min(ROWS * (2 if lanes == 16 else 1), extents[-3]), min(2 * lanes, extents[-2])
        io, ii = sch.split(i, [None, rows])
        jo, ji = sch.split(j, [None, cols])
        ko, ki = sch.split(k, [None, largest_divisor(extents[-1], K_STEPS)])
        sch.reorder(*batch, io, jo, ko, ki, ii, ji)
        for block in blocks[1:-1]:
            sch.compute_inline(block)  # the epilogue becomes one elementwise pass
        # Accumulate the tile in a small buffer of its own so LLVM keeps it in registers across k.
        tile = sch.cache_write(matmul, 0, TILE_SCOPE)
        sch.reverse_compute_at(tile, jo)
        if len(blocks) > 1:
            sch.reverse_compute_inline(blocks[-1])  # bias/activation applied as the tile is stored
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


def patches_per_tile(sch, patches, tile_loop) -> None:
    """A convolution's `im2col` block computed for each row tile just before the tile, so that
    the patches are in L1 when read, never all in memory; one vector copy per tap."""
    sch.compute_at(patches, tile_loop)
    group = int(sch.get(patches).annotations["accelc_group"])
    sch.vectorize(sch.split(sch.get_loops(patches)[-1], [None, group])[1])


def _matvec(sch, blocks, extents: list[int], lanes: int):
    """One output column (a classifier head): a tile of one column would run scalar, so each row's
    dot product is summed in vector lanes across k, the lanes added at the end, and the
    epilogue (bias, sigmoid) vectorised across rows: 4x faster on edu_churn's head.

    When the row count allows, rows go in groups of one vector (MATVEC_ROWS): a group's lane sums,
    totals and epilogue run back to back while they are in registers and L1, instead of three
    passes over all rows (0.74-0.80x the time on edu_churn's head at batch 256 and 4096)."""
    matmul = blocks[0]
    for block in blocks[1:-1]:
        sch.compute_inline(block)
    *outer, k = sch.get_loops(matmul)
    ko, ki = sch.split(k, [None, lanes])
    partial = sch.rfactor(ki, len(outer))
    group = _vector_width(math.prod(extents[:-1]), MATVEC_ROWS)  # 8 rows, else 4
    vector = group and _vector_width(group, lanes)
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


class Elementwise(CPUScheduleRule):
    """Injective kernels (preprocessing, activations, reshapes). Default legalization leaves them
    as scalar loop nests, which made edu_churn's folded preprocessing slower than numpy.

    Rows whose width is a multiple of the vector width are vectorised along the row; other
    shapes run as one flat loop in vector chunks. A concatenation along the last axis keeps its
    inputs as separate blocks, computed row by row into small buffers that the row's copy reads
    while they are in L1: fused into the concat, their per-column branches and broadcast
    statistics turn into gathers LLVM cannot vectorise (2x slower on edu_churn), and computed
    whole before the copy they cost another pass over memory (3x slower)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        if not blocks or any(iv.iter_type != tirx.IterVar.DataPar
                             for b in blocks for iv in sch.get(b).iter_vars):
            return None
        lanes = _lanes(target)
        last = blocks[-1]
        concat = sch.get(last).name_hint.startswith("T_concat") and len(blocks) > 1
        keep = {sch.get(b).name_hint for b in sch.get_producers(last)} if concat else set()
        try:
            for block in blocks[:-1]:
                if sch.get(block).name_hint not in keep:
                    sch.compute_inline(block)
            shape = [_extent(sch, loop) for loop in sch.get_loops(last)]
            if not shape or None in shape:
                return None
            if concat:
                return _concat(sch, last, shape, lanes)
            if _vector_width(shape[-1], lanes):
                _by_rows(sch, last, shape, lanes)
            else:
                flat(sch, last, lanes)
        except Exception:  # a producer that cannot be inlined (e.g. read twice at other indices)
            return None
        return sch


class InnerKeptReduction(CPUScheduleRule):
    """Sums over outer axes into a kept innermost axis (a global average pool over NHWC, a column
    sum): the reduced axes run outside the kept one, which is vectorised, so each step adds whole
    rows. TVM's CPU reduction rule summed every channel on its own with a strided scalar loop
    (resnet_small's pool: ~7 us, MetaSchedule found 1.9 us)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if (found := root_blocks(self, func, target)) is None:
            return None
        sch, blocks = found
        if not blocks:
            return None
        block = blocks[0]
        iters, loops = sch.get(block).iter_vars, sch.get_loops(block)
        kinds = [iv.iter_type for iv in iters]
        reads = sch.get(block).reads
        if (len(loops) != len(iters) or tirx.IterVar.CommReduce not in kinds or len(reads) != 1
                or any(k not in (tirx.IterVar.DataPar, tirx.IterVar.CommReduce) for k in kinds)
                or any(iv.iter_type != tirx.IterVar.DataPar for b in blocks[1:] for iv in sch.get(b).iter_vars)):
            return None
        spatial = [i for i, k in enumerate(kinds) if k == tirx.IterVar.DataPar]
        if not spatial or not reads[0].region[-1].min.same_as(iters[spatial[-1]].var):
            return None  # the input's contiguous axis is reduced (a row sum): not this rule's case
        width = _extent(sch, loops[spatial[-1]])
        lanes = _vector_width(width, _lanes(target)) if width else None
        if lanes is None:
            return None
        reduced = [loops[i] for i, k in enumerate(kinds) if k == tirx.IterVar.CommReduce]
        sch.reorder(*[loops[i] for i in spatial[:-1]], *reduced, loops[spatial[-1]])
        sch.vectorize(sch.split(loops[spatial[-1]], [None, lanes])[1])
        sch.decompose_reduction(block, reduced[0])
        for later in blocks[1:]:
            flat(sch, later, _lanes(target))
        return sch


PARALLEL_MIN = 1 << 14  # elements worth the thread pool's wake-up


def _concat(sch, concat, shape: list[int], lanes: int):
    """Row by row when the concat is along the last axis; otherwise each input and the copy as
    separate row-vectorised loops."""
    attempt = sch.copy()
    try:
        _concat_by_rows(attempt, concat, shape, lanes)
        return attempt
    except Exception:  # along another axis: compute_at cannot cut its inputs into rows
        for block in [*sch.get_producers(concat), concat]:
            _by_rows(sch, block, [_extent(sch, loop) for loop in sch.get_loops(block)], lanes)
        return sch


def _concat_by_rows(sch, concat, shape: list[int], lanes: int) -> None:
    """Each input of the concat computed for one output row just before that row is copied."""
    *outer, inner = sch.get_loops(concat)
    if not outer:
        raise ValueError("a one-dimensional concatenation: nothing to compute row by row")
    for producer in sch.get_producers(concat):
        sch.compute_at(producer, outer[-1])
        row = sch.get_loops(producer)[len(outer):]
        if len(row) != 1:  # the concat is not along the last axis
            raise ValueError("not a concatenation of rows")
        width = _extent(sch, row[0])
        if width is not None and (vector := _vector_width(width, lanes)):
            sch.vectorize(sch.split(row[0], [None, vector])[1])
        elif width is not None and width <= 64:
            sch.unroll(row[0])
    if shape[-1] <= 64:
        sch.unroll(inner)  # the copy's column branches fold away
    if math.prod(shape) >= PARALLEL_MIN:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _by_rows(sch, block, shape: list[int], lanes: int) -> None:
    """Outer axes in parallel when large; the last axis vectorised, or unrolled when it is short
    and not a multiple of the vector width (LLVM then vectorises what it can across it)."""
    *outer, inner = sch.get_loops(block)
    if vector := _vector_width(shape[-1], lanes):
        _, lane = sch.split(inner, [None, vector])
        sch.vectorize(lane)
    elif shape[-1] <= 64:
        sch.unroll(inner)
    if outer and math.prod(shape) >= PARALLEL_MIN:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def flat(sch, block, lanes: int, parallel_min: int = PARALLEL_MIN) -> None:
    """One flat loop in vector chunks, split across threads when large: for same-shaped
    operands the flat index stays affine."""
    loops = sch.get_loops(block)
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = int(sch.get(fused).extent)
    if total >= parallel_min:
        outer, fused = sch.split(fused, [None, 1 << 12])
        sch.parallel(outer)
    if total >= lanes:
        _, inner = sch.split(fused, [None, lanes])
        sch.vectorize(inner)


def largest_divisor(extent: int, most: int) -> int:
    """The largest divisor of `extent` not above `most`: a split without a remainder."""
    return next(d for d in range(min(most, extent), 0, -1) if extent % d == 0)


def _vector_width(width: int, lanes: int) -> int | None:
    """The widest vector (a full register, else a half or a quarter of one, at least 4 lanes) that
    divides a row: AVX-512 rows of 24 floats run as three 8-lane vectors, not unrolled scalars."""
    return next((w for w in (lanes, lanes // 2, lanes // 4) if w >= 4 and width % w == 0), None)


def root_blocks(rule: CPUScheduleRule, func, target: Target):
    """(schedule, the root block's children) of a kernel `rule` may schedule, else None."""
    if not isinstance(func, tirx.PrimFunc) or not rule.is_target_available(target):
        return None
    sch = s_tir.Schedule(func)
    try:
        return sch, sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # hand-written kernels may have no root block: not ours to schedule
        return None


def _lanes(target: Target) -> int:
    """fp32 lanes of one vector register: 8 on AVX2, 16 with AVX-512, 4 on NEON."""
    mattr = " ".join(target.attrs.get("mattr", [])) + str(target.attrs.get("mcpu", ""))
    if "avx512" in mattr or "skylake-avx512" in mattr or "icelake" in mattr or "sapphirerapids" in mattr:
        return 16
    return 8 if target.attrs.get("mtriple", "x86_64").startswith("x86_64") else 4


class Tolerant(CPUScheduleRule):
    """One of TVM's own rules, taken as not applying where its analysis fails: dlight.cpu.GEMV
    asserts (`assert s_loops`) on EfficientNet's squeeze-excitation kernels instead of returning
    None, and a kernel one rule cannot schedule must fall to the next rule, not end the build."""

    def __init__(self, rule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except (AssertionError, IndexError, ValueError, RuntimeError):  # TVM's errors are RuntimeErrors
            return None
