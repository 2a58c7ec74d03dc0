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

    def __init__(self, path: str | Path, check_host: bool = True, batching: str = "pad"):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self.path = Path(path)
        self.manifest = _checked_manifest(self.path)  # hashes checked before any native code is loaded
        self.inputs = self.manifest["inputs"]
        self.outputs = self.manifest["outputs"]
        if batching not in ("pad", "exact"):
            raise InputError(f"batching must be 'pad' or 'exact', got {batching!r}", code="E804")
        self.batching = batching  # pad/split other sizes onto built ones, or refuse them
        target = self.manifest["target"]
        if check_host:
            ok, why = host.can_run(target["device"], target["arch"], target.get("cpu_features", []))
            if not ok:
                raise ArtifactError(f"artifact for target '{target['name']}' cannot run here: {why}", code="E704")
        self.device = tvm.cuda(0) if target["device"] == "cuda" else tvm.cpu(0)
        try:
            library = tvm.runtime.load_module(str(self.path / artifact.LIBRARY))
            self._vm = VirtualMachine(library, self.device)
            params = tvm.runtime.load_param_dict_from_file(str(self.path / artifact.PARAMS))
            ordered = [tvm.runtime.tensor(params[name].numpy(), self.device) for name in self.manifest["params"]]
            self._params = list(self._vm["transform_params"](ordered)) if ordered else []
            # One static function per built batch size, looked up once ({None: main} without a batch dim).
            self._functions = {(int(b) if b != "None" else None): self._vm[name]
                               for b, name in self.manifest["functions"].items()}
        except (RuntimeError, OSError, KeyError, AttributeError, ValueError, TypeError) as exc:  # TVM: builtins
            lines = str(exc).strip().splitlines()
            raise ArtifactError(f"cannot load artifact {self.path}: {type(exc).__name__}: "
                                f"{lines[-1][:300] if lines else ''}", code="E706",
                                hint="it may come from another accelc or TVM version; rebuild it") from None
        self.sizes = sorted(b for b in self._functions if b is not None)
        self._tensor = tvm.runtime.tensor

    def _prepare(self, args, kwargs) -> list[np.ndarray]:
        names = [spec["name"] for spec in self.inputs]
        if kwargs:
            unknown = sorted(set(kwargs) - set(names))
            if unknown:
                raise InputError(f"unknown input(s) {unknown}; the artifact takes {names}", code="E801")
            twice = [n for n in names[:len(args)] if n in kwargs]
            if twice:
                raise InputError(f"input(s) {twice} given both by position and by name", code="E801")
            missing = [n for n in names[len(args):] if n not in kwargs]
            if missing:
                raise InputError(f"missing input(s) {missing}; the artifact takes {names}", code="E801")
            args = list(args) + [kwargs[n] for n in names[len(args):]]
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
        if "batch" in shape and shape.index("batch") != 0:
            raise InputError(f"input '{name}': the batch dimension must come first", code="E802")
        if "batch" in shape and self.batching == "exact" and array.shape[0] not in self.sizes:
            raise InputError(f"input '{name}': batch {array.shape[0]} was not built (built: {self.sizes}); "
                             "use batching='pad' to pad or split", code="E802")
        if "batch" in shape and array.shape[0] < 1:
            raise InputError(f"input '{name}': empty batch", code="E802")
        if "range" in spec and array.dtype.kind in "iu" and array.size:
            # integer inputs index tables (embeddings): out of range they read out of bounds in native code
            low, high = spec["range"]
            if array.min() < low or array.max() >= high:
                bad = np.flatnonzero((array < low) | (array >= high))[0]
                raise InputError(f"input '{name}': value {array.flat[bad]} at flat index {bad} is outside "
                                 f"[{low:g}, {high:g})", code="E805")
        return np.ascontiguousarray(array)

    def predict(self, *args, **kwargs) -> list[np.ndarray]:
        """All outputs as a list of numpy arrays."""
        arrays = self._prepare(args, kwargs)
        if not self.sizes:
            return self._run(None, arrays)
        batch = next(a.shape[0] for a, s in zip(arrays, self.inputs) if "batch" in s["shape"])
        chunks = []
        for start in range(0, batch, self.sizes[-1]):  # above the largest size: split
            part = [a[start:start + self.sizes[-1]] if "batch" in s["shape"] else a
                    for a, s in zip(arrays, self.inputs)]
            chunks.append(self._run_padded(part, min(batch - start, self.sizes[-1])))
        if len(chunks) == 1:
            return chunks[0]
        return [np.concatenate(parts) if "batch" in o["shape"] else parts[0]
                for o, parts in zip(self.outputs, zip(*chunks))]

    def _run_padded(self, arrays: list[np.ndarray], n: int) -> list[np.ndarray]:
        """Run on the smallest built size >= n, zero-padding the batch, and cut the outputs back."""
        size = next(b for b in self.sizes if b >= n)
        if size != n:
            arrays = [np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)]) if "batch" in s["shape"]
                      else a for a, s in zip(arrays, self.inputs)]
        outputs = self._run(size, arrays)
        return [out[:n] if "batch" in o["shape"] else out for o, out in zip(self.outputs, outputs)]

    def _run(self, size: int | None, arrays: list[np.ndarray]) -> list[np.ndarray]:
        result = self._functions[size](*[self._tensor(a, self.device) for a in arrays], *self._params)
        items = result if isinstance(result, (list, tuple)) or hasattr(result, "__len__") and not hasattr(
            result, "numpy") else [result]
        return [item.numpy() for item in items]

    def __call__(self, *args, **kwargs):
        """The output array, or a tuple of them for multi-output models."""
        outputs = self.predict(*args, **kwargs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _checked_manifest(folder: Path) -> dict:
    """The manifest, with the fields the predictor reads present and every file's hash checked."""
    manifest = artifact.read_manifest(folder)
    artifact.require(manifest, folder, inputs=list, outputs=list, target=dict, params=list, functions=dict)
    target = manifest["target"]
    if not all(isinstance(target.get(key), str) for key in ("name", "device", "arch")) or not all(
            isinstance(spec, dict) and {"name", "shape", "dtype"} <= set(spec) for spec in manifest["inputs"]):
        raise ArtifactError(f"{folder / artifact.MANIFEST}: malformed target or inputs", code="E701")
    missing = [name for name in (artifact.LIBRARY, artifact.PARAMS) if name not in manifest["files"]]
    if missing:
        raise ArtifactError(f"{folder / artifact.MANIFEST} does not list {missing}", code="E701")
    artifact.check_files(folder, manifest)
    return manifest


def load(path: str | Path, check_host: bool = True, batching: str = "pad") -> Predictor:
    """Load an artifact directory, checking file hashes and that it can run on this machine.

    batching='pad' serves any batch size by padding to the next built size (and splitting above
    the largest); batching='exact' refuses sizes that were not built.
    """
    return Predictor(path, check_host=check_host, batching=batching)
