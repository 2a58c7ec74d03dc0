"""Loop-nest steps the default schedule rules share: static extents, splits without remainder,
vector widths, flat vectorised loops and the register tile's buffer scope."""
from __future__ import annotations

import math

from tvm import tirx

from accelc.backends.tvm.kernels import tags

TILE_SCOPE = "global"  # a register tile's buffer: TVM puts small "global" CPU buffers on the stack (and
# LLVM then into registers), while a "local" one is a workspace allocated and freed per tile
PARALLEL_MIN = 1 << 14  # elements worth the thread pool's wake-up


def static_extent(sch, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def largest_divisor(extent: int, most: int) -> int:
    """The largest divisor of `extent` not above `most`: a split without a remainder."""
    return next(d for d in range(min(most, extent), 0, -1) if extent % d == 0)


def vector_width(width: int, lanes: int) -> int | None:
    """The widest vector (a full register, else a half or a quarter of one, at least 4 lanes) that
    divides a row: AVX-512 rows of 24 floats run as three 8-lane vectors, not unrolled scalars."""
    return next((w for w in (lanes, lanes // 2, lanes // 4) if w >= 4 and width % w == 0), None)


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


def by_rows(sch, block, shape: list[int], lanes: int) -> None:
    """Outer axes in parallel when large; the last axis vectorised, or unrolled when it is short
    and not a multiple of the vector width (LLVM then vectorises what it can across it)."""
    *outer, inner = sch.get_loops(block)
    if vector := vector_width(shape[-1], lanes):
        _, lane = sch.split(inner, [None, vector])
        sch.vectorize(lane)
    elif shape[-1] <= 64:
        sch.unroll(inner)
    if outer and math.prod(shape) >= PARALLEL_MIN:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def patches_per_tile(sch, patches, tile_loop) -> None:
    """A convolution's patches block (tags.IM2COL) computed for each row tile just before the
    tile, so that the patches are in L1 when read, never all in memory; one vector copy per tap."""
    sch.compute_at(patches, tile_loop)
    group = int(sch.get(patches).annotations[tags.PATCH_GROUP])
    sch.vectorize(sch.split(sch.get_loops(patches)[-1], [None, group])[1])
