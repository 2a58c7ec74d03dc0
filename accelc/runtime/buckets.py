"""A named dimension besides batch (a sequence length) at call time: each input is padded along it
with its stated value up to the smallest built size (bucket) that holds the call's length, and
the outputs' axes that follow it are cut back to the length. Numpy only, like the predictor."""
from __future__ import annotations

from typing import Callable

import numpy as np

from accelc.artifact.manifest import Dim, Manifest
from accelc.errors import InputError


class Buckets:
    """The padding of one named dimension (manifest.dims), shared by the predictor and verification."""

    def __init__(self, dim: Dim, input_specs, output_specs):
        self.name, self.sizes, self.mask = dim.name, tuple(dim.sizes), dim.mask
        self.inputs = [spec.name for spec in input_specs]
        self.in_axes = [spec.axis(dim.name) for spec in input_specs]
        self.pad_values = [dim.pad.get(spec.name, 0) for spec in input_specs]  # the mask pads with 0
        self.out_axes = [spec.axis(dim.name) for spec in output_specs]

    @classmethod
    def of(cls, manifest: Manifest) -> Buckets | None:
        """The artifact's named dimension, or None when it has none (only batch varies)."""
        return cls(manifest.dims[0], manifest.inputs, manifest.outputs) if manifest.dims else None

    def length(self, arrays: list[np.ndarray]) -> int:
        """The call's length along the dimension: the same in every input that has it, and built for."""
        lengths = {name: a.shape[axis] for name, a, axis in zip(self.inputs, arrays, self.in_axes)
                   if axis is not None}
        if len(set(lengths.values())) > 1:
            raise InputError(f"inputs disagree on the '{self.name}' length: {lengths}", code="E802")
        name, length = next(iter(lengths.items()))
        if length < 1:
            raise InputError(f"input '{name}': empty '{self.name}' dimension", code="E802")
        if length > self.sizes[-1]:
            raise InputError(f"input '{name}' has {self.name} length {length}; the largest built {self.name} size "
                             f"is {self.sizes[-1]}", code="E808",
                             hint=f"cut the input to {self.sizes[-1]}, or rebuild with a larger size in "
                                  f"model.dims.{self.name}.sizes")
        return length

    def size(self, length: int) -> int:
        """The bucket a call of this length runs on: the smallest built size >= it."""
        return next(s for s in self.sizes if s >= length)

    def pad(self, arrays: list[np.ndarray], size: int,
            empty: Callable[[tuple, np.dtype], np.ndarray] = np.empty) -> list[np.ndarray]:
        """Each input carrying the dimension, padded at its end to `size` with its pad value."""
        padded = []
        for array, axis, value in zip(arrays, self.in_axes, self.pad_values):
            if axis is not None and array.shape[axis] != size:
                whole = empty((*array.shape[:axis], size, *array.shape[axis + 1:]), array.dtype)
                whole[...] = value
                whole[(slice(None),) * axis + (slice(0, array.shape[axis]),)] = array
                array = whole
            padded.append(array)
        return padded

    def cut(self, outputs: list[np.ndarray], length: int) -> list[np.ndarray]:
        """Outputs with their axes along the dimension cut back to the call's length."""
        return [out if axis is None or out.shape[axis] == length else
                np.ascontiguousarray(out[(slice(None),) * axis + (slice(0, length),)])
                for out, axis in zip(outputs, self.out_axes)]

    def real(self, arrays: list[np.ndarray], outputs: list[np.ndarray], batched: list[bool]) -> list[np.ndarray]:
        """Outputs with the positions the mask marks as padding set to 0 along the dimension (with no
        mask every position is real): what verification compares."""
        mask = None if self.mask is None else arrays[self.inputs.index(self.mask)] != 0
        if mask is None or mask.ndim > 2:  # [batch, length] or [length]; other layouts: compared whole
            return outputs
        kept = []
        for out, axis, rows in zip(outputs, self.out_axes, batched):
            if axis is not None:
                shape = [1] * out.ndim
                shape[axis] = mask.shape[-1]
                if rows and mask.ndim == 2:
                    shape[0] = mask.shape[0]
                out = np.where(mask.reshape(shape), out, 0)
            kept.append(out)
        return kept
