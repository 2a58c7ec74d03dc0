"""Pools (tags.POOL, lower/pools.py): average, max and adaptive average pools over NHWC images,
with their division and epilogue.

A pool is a depthwise convolution without weights: out[n, y, x, c] combines one window of
x[n, ., ., c] per output pixel, and in NHWC the channels of a pixel are contiguous. It is tiled
as schedules/depthwise.py tiles those: a few output pixels x one vector of channels accumulate
every tap (unrolled) in registers, output rows in parallel, the average's division and any
elementwise epilogue applied as the tile is stored.
"""
from __future__ import annotations

from accelc.backends.tvm.kernels import tags
from accelc.backends.tvm.schedules.depthwise import Depthwise


class Pool(Depthwise):
    """out[n, y, x, c] = sum or max over the window of x[n, iy, ix, c], then elementwise blocks."""

    TAG = tags.POOL
