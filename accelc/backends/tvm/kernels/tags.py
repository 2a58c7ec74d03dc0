"""Block tags: what a block computes, for the schedule rules to match on instead of block names.

accelc sets a tag as a block annotation (`accelc.kernel`) where it creates the block (the TE
computes of lower/quant.py, lower/patches.py, lower/conv.py); blocks that TVM's legalization
creates carry no annotation, and their tag comes from TVM's block name through `TVM_NAMES`, the one
place that knows those names. Fusion keeps block annotations, so a fused kernel's blocks keep
their tags.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

KEY = "accelc.kernel"  # the block annotation that holds the tag

GEMM = "gemm"  # float32 C[i, j] = sum_k A[i, k] * B[k, j] (also with int8 B converted in the kernel)
IM2COL = "im2col"  # patches of an NHWC image, one contiguous run of channels per tap
DEPTHWISE = "depthwise"  # float32 depthwise convolution, NHWC: out[n, y, x, o] = sum over taps of x * w[r, s, o]
POOL = "pool"  # float32 pool, NHWC: out[n, y, x, c] = sum or max over a window of x[n, iy, ix, c]
INT8_GEMM = "int8.gemm"  # uint8 x int8 -> int32 over weights packed for a micro-kernel
INT8_GEMV = "int8.gemv"  # the same sum for a few output columns, weights row-major
QUANTIZE_INPUT = "quantize.input"  # float32 -> uint8 of a GEMM's input, computed in the GEMM kernel
CONCAT = "concat"  # a concatenation (its inputs are computed row by row)

# Further annotations on tagged blocks.
MICROKERNEL = "accelc.microkernel"  # INT8_GEMM: the name of its micro-kernel (kernels/microkernels.py)
ACTIVATION_BITS = "accelc.activation_bits"  # INT8_GEMM: 7 when the activations are at most 127, else 8
PATCH_GROUP = "accelc.patch_group"  # IM2COL: channels per tap (C padded), the length of one vector copy
PANEL_COLUMNS = "accelc.panel_columns"  # GEMM: B is packed as panels [N / this, K, this] (lower/gemm.py)

# Tags of blocks TVM's legalization creates, by block name (fnmatch pattern, first match wins).
TVM_NAMES = (
    ("*matmul", GEMM),  # relax.matmul (dense and batched)
    ("T_concat*", CONCAT),  # relax.concat
)


def attrs(tag: str, **annotations) -> dict:
    """The `attrs` of a TE compute whose block gets `tag` (and `annotations`, keyed by their names
    above: `attrs(INT8_GEMM, **{MICROKERNEL: "avx2_pairs"})`)."""
    return {KEY: tag, **annotations}


def of(block) -> str:
    """A block's tag ("" when it has none): its annotation, else its TVM name's."""
    tag = block.annotations.get(KEY)
    if tag is not None:
        return str(tag)
    return next((t for pattern, t in TVM_NAMES if fnmatchcase(block.name_hint, pattern)), "")


def matches(pattern: str, kernel_tags) -> bool:
    """Whether a rule's tag pattern matches a kernel: "*" matches every kernel (tagged or not),
    any other fnmatch pattern a kernel with a block so tagged."""
    return pattern == "*" or any(fnmatchcase(tag, pattern) for tag in kernel_tags if tag)
