"""Verification along a named dimension (model.dims): samples shorter than each bucket, the mask
marking a random length per row; the artifact (which pads them to the bucket and cuts the outputs
back) compared with the eager model on the unpadded samples at the real positions; and the
padding semantics themselves: the eager model on padded samples must agree with it unpadded, or
the mask does not make padding invisible (E602). Torch-free apart from the callables passed in."""
from __future__ import annotations

from typing import Callable

import numpy as np

from accelc.errors import VerificationError
from accelc.runtime.buckets import Buckets
from accelc.verify.compare import compare

Run = Callable[[list], list]


def sample_sets(recipe, make_inputs: Callable, ranges: dict | None = None) -> list[tuple[int, list, dict]]:
    """(batch, samples, {"bucket": {dim: size}}) per batch size and bucket: sample 0 fills the bucket,
    the others are as long as a random length above the next smaller bucket; with a mask, each row
    is real up to a random length of its own and padded after it with the inputs' pad values.
    `make_inputs(specs, batch, seed, ranges, sizes)` draws the arrays (capture.random_inputs)."""
    (name, dim), = recipe.model.dims.items()
    specs = recipe.model.inputs
    sets = []
    for batch in _batches(recipe):
        for below, size in zip((0, *dim.sizes[:-1]), dim.sizes):
            samples = []
            for i in range(recipe.verify.samples):
                seed = recipe.verify.seed + 1000 * batch + 100_000 * size + i
                rng = np.random.default_rng(seed)
                length = size if i == 0 else int(rng.integers(below + 1, size + 1))
                arrays = [np.asarray(a) for a in make_inputs(specs, batch, seed, ranges, {name: length})]
                if dim.mask is not None:
                    _mark_rows(arrays, specs, dim, name, rng)
                samples.append(tuple(arrays))
            sets.append((batch, samples, {"bucket": {name: size}}))
    return sets


def _batches(recipe) -> list[int]:
    sizes = list(recipe.model.batch)
    if any("batch" in spec.shape for spec in recipe.model.inputs) and sizes[0] + 1 not in sizes:
        sizes.append(sizes[0] + 1)  # a size that was not built: exercises the runtime's batch padding
    return sizes


def _mark_rows(arrays: list[np.ndarray], specs, dim, name: str, rng: np.random.Generator) -> None:
    """Row r real up to a random length (row 0: the whole length), padded after it as a tokenizer
    pads: the mask 0, the other inputs of the mask's shape their pad value."""
    index = [spec.name for spec in specs].index(dim.mask)
    mask = arrays[index]
    if mask.ndim not in (1, 2):  # [batch, length] or [length]; others keep what was drawn
        return
    rows, length = (1, mask.shape[0]) if mask.ndim == 1 else mask.shape
    ends = np.concatenate([[length], rng.integers(1, length + 1, rows - 1)])
    real = (np.arange(length)[None, :] < ends[:, None]).reshape(mask.shape)
    for i, spec in enumerate(specs):
        if arrays[i].shape == mask.shape and spec.axis(name) is not None:
            fill = 0 if i == index else dim.pad.get(spec.name, 0)
            arrays[i] = np.where(real, 1 if i == index else arrays[i], fill).astype(arrays[i].dtype)


def at_real_positions(run: Run, buckets: Buckets, batched: list[bool]) -> Run:
    """`run` with the outputs' padded positions (mask 0) set to 0: what is compared."""
    return lambda arrays: buckets.real(list(arrays), run(arrays), batched)


def check_padding(run_eager: Run, sets: list, buckets: Buckets, batched: list[bool], atol: float, rtol: float,
                  names: list[str]) -> None:
    """E602 when the eager model's outputs at the real positions change once its inputs are padded
    to the bucket as the runtime pads them: then no artifact can serve the dimension in buckets."""
    for batch, samples, extra in sets:
        size = extra["bucket"][buckets.name]
        for arrays in samples:
            arrays = list(arrays)
            length = buckets.length(arrays)
            if length == size:
                continue
            padded = buckets.cut(run_eager(buckets.pad(arrays, size)), length)
            rows = compare(buckets.real(arrays, run_eager(arrays), batched), buckets.real(arrays, padded, batched),
                           atol, rtol, names)
            bad = next((r for r in rows if not r["passed"]), None)
            if bad is not None:
                why = (f"the mask '{buckets.mask}' does not make padding invisible to the model" if buckets.mask
                       else "no mask is declared, and the model sees the padding")
                raise VerificationError(
                    f"padding {buckets.name} from {length} to the bucket {size} changes the eager model's output "
                    f"'{bad['output']}' at the real positions by up to {bad['max_abs']:.3g} (batch {batch}): "
                    f"{why}", code="E602",
                    hint=f"pass {buckets.mask or 'a mask'} to the model's attention (model.dims.{buckets.name}"
                         f".mask), or build {buckets.name} at fixed sizes only")
