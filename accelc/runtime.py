"""Load and run a compiled artifact with the TVM runtime only.

Never imports torch, the passes or the backends: a production server needs none of them.
Set TVM_USE_RUNTIME_LIB=1 before the first `import tvm` to load only libtvm_runtime.so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import artifact, host
from .errors import ArtifactError, InputError


class Predictor:
    """A loaded artifact: call it with numpy arrays (positional or by input name)."""

    def __init__(self, path: str | Path, check_host: bool = True):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self.path = Path(path)
        self.manifest = artifact.read_manifest(self.path)
        artifact.check_files(self.path, self.manifest)  # before any native code is loaded
        self.inputs = self.manifest["inputs"]
        self.outputs = self.manifest["outputs"]
        self.max_batch = max(self.manifest["batch"])
        target = self.manifest["target"]
        if check_host:
            ok, why = host.can_run(target["device"], target["arch"], target.get("cpu_features", []))
            if not ok:
                raise ArtifactError(f"artifact for target '{target['name']}' cannot run here: {why}", code="E704")
        self.device = tvm.cuda(0) if target["device"] == "cuda" else tvm.cpu(0)
        library = tvm.runtime.load_module(str(self.path / artifact.LIBRARY))
        self._vm = VirtualMachine(library, self.device)
        params = tvm.runtime.load_param_dict_from_file(str(self.path / artifact.PARAMS))
        ordered = [tvm.runtime.tensor(params[name].numpy(), self.device) for name in self.manifest["params"]]
        self._params = list(self._vm["main_transform_params"](ordered)) if ordered else []
        self._main = self._vm["main"]  # looked up once
        self._tensor = tvm.runtime.tensor

    def _prepare(self, args, kwargs) -> list[np.ndarray]:
        names = [spec["name"] for spec in self.inputs]
        if kwargs:
            unknown = sorted(set(kwargs) - set(names))
            if unknown:
                raise InputError(f"unknown input(s) {unknown}; the artifact takes {names}", code="E801")
            args = list(args) + [kwargs[n] for n in names[len(args):] if n in kwargs]
        if len(args) != len(names):
            raise InputError(f"expected {len(names)} input(s) {names}, got {len(args)}", code="E801")
        arrays = [self._check(spec, np.asarray(value)) for spec, value in zip(self.inputs, args)]
        batches = {a.shape[s["shape"].index("batch")] for s, a in zip(self.inputs, arrays) if "batch" in s["shape"]}
        if len(batches) > 1:
            raise InputError(f"inputs disagree on the batch size: {sorted(batches)}", code="E802")
        return arrays

    def _check(self, spec: dict, array: np.ndarray) -> np.ndarray:
        name, shape, dtype = spec["name"], spec["shape"], spec["dtype"]
        if array.dtype != np.dtype(dtype):
            raise InputError(f"input '{name}' must be {dtype}, got {array.dtype}", code="E803",
                             hint=f"convert with .astype(np.{dtype})")
        expected = ["batch" if d == "batch" else int(d) for d in shape]
        ok = array.ndim == len(shape) and all(d == "batch" or d == a for d, a in zip(expected, array.shape))
        if not ok:
            raise InputError(f"input '{name}' must have shape {expected}, got {list(array.shape)}", code="E802")
        if "batch" in shape and not 1 <= array.shape[shape.index("batch")] <= self.max_batch:
            raise InputError(f"input '{name}': batch {array.shape[shape.index('batch')]} is outside the built "
                             f"range [1, {self.max_batch}]", code="E802")
        return np.ascontiguousarray(array)

    def predict(self, *args, **kwargs) -> list[np.ndarray]:
        """All outputs as a list of numpy arrays."""
        arrays = self._prepare(args, kwargs)
        result = self._main(*[self._tensor(a, self.device) for a in arrays], *self._params)
        items = result if isinstance(result, (list, tuple)) or hasattr(result, "__len__") and not hasattr(
            result, "numpy") else [result]
        return [item.numpy() for item in items]

    def __call__(self, *args, **kwargs):
        """The output array, or a tuple of them for multi-output models."""
        outputs = self.predict(*args, **kwargs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def load(path: str | Path, check_host: bool = True) -> Predictor:
    """Load an artifact directory, checking file hashes and that it can run on this machine."""
    return Predictor(path, check_host=check_host)
