"""Load and run a compiled artifact with the TVM runtime only.

Never imports torch, the passes or the backends: a production server needs none of them.
Set TVM_USE_RUNTIME_LIB=1 before the first `import tvm` to load only libtvm_runtime.so.
"""
from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from accelc.artifact import store as artifact
from accelc.artifact.manifest import DeviceCode, Manifest, TensorSpec
from accelc.config import host_cpu as host
from accelc.runtime.buckets import Buckets
from accelc.errors import ArtifactError, InputError


ALIGN = 64  # TVM's kernels assume 64-byte aligned buffers (tvm.runtime.from_dlpack enforces it)
_IMPORT_LOCK = threading.Lock()


def import_tvm():
    """(tvm, tvm_ffi), imported without torch where torch is installed but not yet imported.

    tvm_ffi imports torch at import time when it can (a workaround for a Windows symbol clash),
    which costs a server ~190 MB of RSS and seconds of start-up. torch is blocked for that first
    import only: a later `import torch` works, and a process that imported torch first (the
    compiler) imports tvm as usual. `accelc serve` also sets TVM_USE_RUNTIME_LIB=1 first; this does
    not, so that the compiler still loads in a process that loaded an artifact before.
    """
    with _IMPORT_LOCK:
        blocked = "torch" not in sys.modules and "tvm_ffi" not in sys.modules
        if blocked:
            sys.modules["torch"] = None  # `import torch` raises ImportError, which tvm_ffi tolerates
        try:
            import tvm
            import tvm_ffi
        finally:
            if blocked and "torch" in sys.modules and sys.modules["torch"] is None:
                del sys.modules["torch"]
    return tvm, tvm_ffi


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    offset = (-raw.ctypes.data) % ALIGN
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


class Predictor:
    """A loaded artifact: call it with numpy arrays (positional or by input name). `predictor(...)`
    returns what calling the model returns (one array, or a tuple for several outputs);
    `predictor.predict(...)` always returns a list. `manifest` is the artifact's typed Manifest,
    `inputs` and `outputs` its TensorSpecs, `sizes` the batch sizes it was built for.

    Shared by all threads: the library, the transformed parameters, the manifest. Per thread:
    the Relax VM (it keeps call frames) and nothing else. Inputs that are C-contiguous, of the
    right dtype and 64-byte aligned are passed zero-copy; others are copied once into an aligned
    buffer. Outputs are returned zero-copy (each call gets fresh arrays).
    """

    def __init__(self, path: str | Path, check_host: bool = True, batching: str = "pad",
                 key: str | bytes | None = None, reject_nonfinite: bool = False):
        tvm, tvm_ffi = import_tvm()

        self.path = Path(path)
        self.manifest: Manifest = _checked_manifest(self.path, key)  # signature, hashes checked before native code
        self.reject_nonfinite = reject_nonfinite
        self.inputs: tuple[TensorSpec, ...] = self.manifest.inputs
        self.outputs: tuple[TensorSpec, ...] = self.manifest.outputs
        if batching not in ("pad", "exact"):
            raise InputError(f"batching must be 'pad' or 'exact', got {batching!r}", code="E804")
        self.batching = batching  # pad/split other sizes onto built ones, or refuse them
        target = self.manifest.target
        if check_host:
            ok, why = host.can_run(target.device, target.arch, target.cpu_features)
            if not ok:
                raise ArtifactError(f"artifact for target '{target.name}' cannot run here: {why}", code="E704")
        self.device = tvm.cuda(0) if target.device == "cuda" else tvm.cpu(0)
        self._on_cpu = target.device != "cuda"
        self._from_dlpack, self._tensor, self._tensor_type = tvm_ffi.from_dlpack, tvm.runtime.tensor, tvm.runtime.Tensor
        self._names = {spec.name: i for i, spec in enumerate(self.inputs)}
        # (dtype, dims with None for the batch) per input: what the hot path compares against
        self._expect = [(np.dtype(spec.dtype), spec.dims) for spec in self.inputs]
        self._batched = [spec.batched for spec in self.inputs]
        # per input: [low, high) of an integer input that indexes a table (E805 outside), as clipped to
        # its dtype, and the quick all-in-range test; None where nothing needs checking
        self._bounds = [_int_bounds(dtype, spec.range) for (dtype, _), spec in zip(self._expect, self.inputs)]
        self._in_range = [_range_test(dtype, bounds) for (dtype, _), bounds in zip(self._expect, self._bounds)]
        # Bytes each input's address must be a multiple of: TVM's 64, or the element's size where the
        # build declared the kernels reading it unaligned (input_alignment.py): then no copy.
        self._align = [np.dtype(spec.dtype).itemsize if spec.unaligned else ALIGN for spec in self.inputs]
        self._out_batched = [spec.batched for spec in self.outputs]
        # a named dimension (seq): functions per bucket, inputs padded and outputs cut (buckets.py)
        self._buckets = Buckets.of(self.manifest)
        self._by_batch = self.manifest.by_bucket if self._buckets else self.manifest.by_batch
        self._local = threading.local()
        if not self._on_cpu:
            _load_cuda_runtime()
            if check_host:
                check_gpu_arch(self.device, self.manifest.device_code)
        try:
            self._library = _load_library(artifact.read_checked(self.path, self.manifest, artifact.LIBRARY))
            params = tvm.runtime.load_param_dict(artifact.read_checked(self.path, self.manifest, artifact.PARAMS))
            ordered = [tvm.runtime.tensor(params[name].numpy(), self.device) for name in self.manifest.params]
            vm = self._thread_functions()
            self._params = list(self._local.vm["transform_params"](ordered)) if ordered else []
        except (RuntimeError, OSError, KeyError, AttributeError, ValueError, TypeError) as exc:  # TVM: builtins
            lines = str(exc).strip().splitlines()
            raise ArtifactError(f"cannot load artifact {self.path}: {type(exc).__name__}: "
                                f"{lines[-1][:300] if lines else ''}", code="E706",
                                hint="it may come from another accelc or TVM version; rebuild it") from None
        self.sizes = sorted(b for b in (next(iter(vm.values())) if self._buckets else vm) if b is not None)
        # The common call (numpy arrays by position, a built batch size, no per-value checks but
        # ranges) skips the general path: its checks and lookups cost ~10 us a call, 12% of the MLP
        # at batch 256. Ranged inputs keep it: one reduction each (~2 us) checks them.
        lean = (self._on_cpu and not reject_nonfinite and bool(self.sizes) and bool(self.inputs)
                and all(self._batched) and self._buckets is None)
        # per built batch size: each input's (dtype, whole shape, alignment, range test), compared as they are
        self._lean = {b: [(dtype, (b, *dims[1:]), align, test)
                          for (dtype, dims), align, test in zip(self._expect, self._align, self._in_range)]
                      for b in self.sizes} if lean else {}

    def library(self) -> tuple:
        """(the loaded library, the transformed parameters its VM functions take after the inputs):
        for tools that run a VM of their own on it (`accelc profile` times each kernel)."""
        return self._library, self._params

    def _thread_functions(self) -> dict:
        """This thread's VM functions, one static function per built batch size (None: no batch dim);
        with a named dimension, {bucket: {batch: function}}."""
        functions = getattr(self._local, "functions", None)
        if functions is None:
            from tvm.runtime.vm import VirtualMachine
            vm = self._local.vm = VirtualMachine(self._library, self.device)
            functions = self._local.functions = {
                key: ({b: vm[name] for b, name in value.items()} if isinstance(value, dict) else vm[value])
                for key, value in self._by_batch.items()}
        return functions

    # ---- validation ---------------------------------------------------------------------------

    def _prepare(self, args, kwargs) -> list[np.ndarray]:
        if not kwargs and len(args) == len(self._expect):
            arrays = [self._check(spec, value if isinstance(value, np.ndarray) else np.asarray(value))
                      for spec, value in zip(self.inputs, args)]
            if len(arrays) > 1:
                self._same_batch(arrays)
            return arrays
        names = list(self._names)
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
        arrays = [self._check(spec, value if isinstance(value, np.ndarray) else np.asarray(value))
                  for spec, value in zip(self.inputs, args)]
        self._same_batch(arrays)
        return arrays

    def _same_batch(self, arrays: list[np.ndarray]) -> None:
        batches = {a.shape[0] for a, batched in zip(arrays, self._batched) if batched}
        if len(batches) > 1:
            raise InputError(f"inputs disagree on the batch size: {sorted(batches)}", code="E802")

    def _check(self, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        index = self._names[spec.name]
        dtype_expected, dims = self._expect[index]
        shape = array.shape
        if (array.dtype == dtype_expected and len(shape) == len(dims) and self._in_range[index] is None
                and all(d is None or d == n for d, n in zip(dims, shape))
                and (dims[:1] != (None,) or 1 <= shape[0]) and (self.batching == "pad" or dims[:1] != (None,)
                                                                 or shape[0] in self.sizes)):
            return array  # the common case, checked in a few comparisons
        return self._check_slow(spec, array)

    def _check_slow(self, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        name, shape, dtype = spec.name, spec.shape, spec.dtype
        if array.dtype != np.dtype(dtype):
            raise InputError(f"input '{name}' must be {dtype}, got {array.dtype}", code="E803",
                             hint=f"convert with .astype(np.{dtype})")
        expected = [d if isinstance(d, str) else int(d) for d in shape]
        ok = array.ndim == len(shape) and all(isinstance(d, str) or d == a for d, a in zip(expected, array.shape))
        if not ok:
            raise InputError(f"input '{name}' must have shape {expected}, got {list(array.shape)}", code="E802")
        if "batch" in shape and shape.index("batch") != 0:
            raise InputError(f"input '{name}': the batch dimension must come first", code="E802")
        if "batch" in shape and self.batching == "exact" and array.shape[0] not in self.sizes:
            raise InputError(f"input '{name}': batch {array.shape[0]} was not built (built: {self.sizes}); "
                             "use batching='pad' to pad or split", code="E802")
        if "batch" in shape and array.shape[0] < 1:
            raise InputError(f"input '{name}': empty batch", code="E802")
        index = self._names[name]
        if self._in_range[index] is not None and array.size and not self._in_range[index](array):
            # integer inputs index tables (embeddings): out of range they read out of bounds in native code
            low, high = self._bounds[index]
            bad = int(np.flatnonzero((array < low) | (array > high - 1))[0])  # high - 1 fits the dtype
            shown_low, shown_high = spec.range
            raise InputError(f"input '{name}': value {array.flat[bad]} at flat index {bad} is outside "
                             f"[{shown_low:g}, {shown_high:g})", code="E805",
                             hint="ids must index the model's tables; PyTorch raises IndexError for these")
        return array

    # ---- execution ----------------------------------------------------------------------------

    def predict(self, *args, **kwargs) -> list[np.ndarray]:
        """Every output as a list of numpy arrays in the order of `self.outputs`, whatever their
        number (one output is a list of one): for code that handles any artifact alike (servers,
        verification). Calling the predictor returns the model's own shape instead."""
        return (not kwargs and self._lean_call(args)) or self._checked_call(args, kwargs)

    def _checked_call(self, args, kwargs) -> list[np.ndarray]:
        """Every input checked (names, dtypes, shapes, values where asked), padded or split to
        the built batch sizes."""
        arrays = self._prepare(args, kwargs)
        if self.reject_nonfinite:
            for spec, array in zip(self.inputs, arrays):
                check_finite(f"input '{spec.name}'", array, "loaded with reject_nonfinite=True")
        functions = self._thread_functions()
        if self._buckets is not None:
            length = self._buckets.length(arrays)
            size = self._buckets.size(length)
            arrays = self._buckets.pad(arrays, size, aligned_empty)
            return self._buckets.cut(self._batched_call(functions[(size,)], arrays), length)
        return self._batched_call(functions, arrays)

    def _batched_call(self, functions: dict, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Run on the built batch sizes: padded up to one, or split above the largest."""
        if not self.sizes:
            return self._run(functions[None], [self._device_tensor(i, a) for i, a in enumerate(arrays)])
        batch = next((a.shape[0] for a, b in zip(arrays, self._batched) if b), 1)
        largest = self.sizes[-1]
        if batch <= largest:
            return self._run_padded(functions, arrays, batch)
        if not all(self._batched):  # an input without a batch axis (EmbeddingBag's flat ids) cannot be split
            unbatched = next(spec.name for spec, b in zip(self.manifest.inputs, self._batched) if not b)
            raise InputError(f"batch {batch} is above the largest built size {largest}, and input '{unbatched}' "
                             "has no batch dimension to split it by; add the size to model.batch", code="E802")
        chunks = [self._run_padded(functions, [a[start:start + largest] if b else a
                                               for a, b in zip(arrays, self._batched)],
                                   min(batch - start, largest))
                  for start in range(0, batch, largest)]  # above the largest size: split
        return [np.concatenate(parts) if b else parts[0] for b, parts in zip(self._out_batched, zip(*chunks))]

    def _run_padded(self, functions: dict, arrays: list[np.ndarray], n: int) -> list[np.ndarray]:
        """Run on the smallest built size >= n; other sizes are zero-padded and the outputs cut back."""
        size = n if n in functions else next(b for b in self.sizes if b >= n)
        if size == n:
            return self._run(functions[size], [self._device_tensor(i, a) for i, a in enumerate(arrays)])
        padded = []
        for index, (array, batched) in enumerate(zip(arrays, self._batched)):
            if batched:
                staging = aligned_empty((size, *array.shape[1:]), array.dtype)
                staging[:n], staging[n:] = array, 0
                array = staging
            padded.append(self._device_tensor(index, array))
        outputs = self._run(functions[size], padded)
        return [out[:n] if b else out for b, out in zip(self._out_batched, outputs)]

    def _device_tensor(self, index: int, array: np.ndarray):
        """Zero-copy when the array is contiguous and aligned on the CPU; otherwise exactly one copy."""
        if not self._on_cpu:
            return self._tensor(np.ascontiguousarray(array), self.device)
        # The alignment is read from the tensor: ndarray.ctypes costs ~3 us, and letting DLPack refuse
        # a misaligned array (require_alignment) ~850 us for its error.
        if array.flags.c_contiguous:  # checked here: DLPack's require_contiguous costs 0.3 us more
            try:
                tensor = self._from_dlpack(array)
            except BufferError:  # read-only (np.load(mmap_mode='r'), setflags(write=False)): DLPack refuses
                return self._staged(index, array)
            if tensor.data_ptr() % self._align[index] == 0:
                return tensor
        return self._staged(index, array)

    def _staged(self, index: int, array: np.ndarray):
        """Input `index` copied into this thread's reusable aligned buffer for its shape, as the tensor
        over that buffer (made once: importing it every call cost 1.5 us of a 6 us misaligned call).
        Calls are synchronous and outputs never alias inputs, so the buffer is free when a call returns."""
        cache = self._local.__dict__.setdefault("staging", {})
        key = (index, array.shape, array.dtype.str)
        staging = cache.get(key)
        if staging is None:
            if len(cache) > 64:  # many distinct shapes (padding off): keep the cache bounded
                cache.clear()
            buffer = aligned_empty(array.shape, array.dtype)
            staging = cache[key] = (buffer, self._from_dlpack(buffer, require_alignment=ALIGN, require_contiguous=True))
        np.copyto(staging[0], array)
        return staging[1]

    def _run(self, function, tensors: list) -> list[np.ndarray]:
        result = function(*tensors, *self._params)
        # a single output comes back as a tensor, several as an array of them (isinstance: 0.4 us)
        items = [result] if type(result) is self._tensor_type else result
        if self._on_cpu:
            return [np.from_dlpack(item) for item in items]  # fresh VM allocations: safe to share
        return [item.numpy() for item in items]

    def _lean_call(self, args) -> list[np.ndarray] | None:
        """The outputs when every input is a contiguous numpy array of the right dtype and shape at
        one built batch size (then nothing else needs checking); None sends the call down the
        general path. Kept short: it runs after the kernels have evicted the interpreter's code and
        data from the caches, so each check costs several times its warm ~0.1 us (with the checks
        folded into one shape comparison per input: edu_churn at batch 1, 17.8 -> 15.8 us p50)."""
        functions = getattr(self._local, "functions", None)
        first = args[0] if args else None
        if functions is None or type(first) is not np.ndarray or not first.ndim:
            return None
        specs = self._lean.get(first.shape[0])
        if specs is None or len(args) != len(specs):
            return None
        tensors = []
        for array, (dtype, shape, align, in_range) in zip(args, specs):
            if type(array) is not np.ndarray or array.dtype != dtype or array.shape != shape \
                    or not array.flags.c_contiguous or (in_range is not None and not in_range(array)):
                return None  # out of range: the general path names the value (E805)
            try:
                tensor = self._from_dlpack(array)  # _device_tensor inlined: the call and its checks cost 0.5 us
            except BufferError:  # read-only: one copy (a try costs nothing until it raises)
                tensors.append(self._staged(len(tensors), array))
                continue
            tensors.append(tensor if tensor.data_ptr() % align == 0 else self._staged(len(tensors), array))
        return self._run(functions[first.shape[0]], tensors)

    def __call__(self, *args, **kwargs) -> np.ndarray | tuple[np.ndarray, ...]:
        """What calling the PyTorch model returns: its one output array, or for a model with several
        outputs a tuple of arrays in the order of `self.outputs` (nested tuples, lists and dicts
        flattened as the output names say: `hidden.0`). `predict` always returns a list."""
        outputs = (not kwargs and self._lean_call(args)) or self._checked_call(args, kwargs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _int_bounds(dtype: np.dtype, declared) -> tuple[int, int] | None:
    """An integer input's [low, high) as integers its dtype can hold (a value v is in [0.5, 3) iff
    it is in [1, 3)); None for other dtypes, no range, or a range that holds every value."""
    if declared is None or dtype.kind not in "iu":
        return None
    info = np.iinfo(dtype)
    low, high = max(math.ceil(declared[0]), int(info.min)), min(math.ceil(declared[1]), int(info.max) + 1)
    return None if low == info.min and high == info.max + 1 else (low, high)


def _range_test(dtype: np.dtype, bounds: tuple[int, int] | None):
    """array -> whether every value is in `bounds` (non-empty arrays), in as few passes as possible:
    from 0, one maximum over the unsigned view (a negative value is then above any signed high)."""
    if bounds is None:
        return None
    low, high = bounds
    largest, smallest = np.maximum.reduce, np.minimum.reduce
    if low == 0:
        unsigned = np.dtype(f"u{dtype.itemsize}")
        return lambda array: largest(array.view(unsigned), None) < high
    return lambda array: smallest(array, None) >= low and largest(array, None) < high


def _load_cuda_runtime() -> None:
    """TVM's CUDA runtime library: a runtime-only TVM (TVM_USE_RUNTIME_LIB=1, or no
    libtvm_compiler.so) does not load it at import, and a CUDA library cannot load without it."""
    import tvm
    import tvm_ffi
    if tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is not None:
        return
    from tvm_ffi.libinfo import load_lib_ctypes
    lib_dir = Path(tvm.base._LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        tvm.base._LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes("tvm", "tvm_runtime_cuda", "RTLD_LOCAL",
                                                                    extra_lib_paths=[lib_dir])
    except (OSError, RuntimeError) as exc:
        raise ArtifactError(f"cannot load TVM's CUDA runtime: {str(exc).strip()[:300]}", code="E708",
                            hint="install an NVIDIA driver and the CUDA 13 runtime (pip install "
                                 "nvidia-cuda-runtime)") from None


def check_gpu_arch(device, code: DeviceCode | None) -> None:
    """Refuse a GPU that none of the embedded machine code (sm_XY runs on X.Y..X.9) or PTX
    (JIT-compiled by the driver for X.Y and newer) can run on."""
    if code is None or not code.sass:
        return
    major, minor = (int(x) for x in device.compute_version.split("."))
    numbers = lambda names: [int(re.search(r"\d+", n).group()) for n in names]  # noqa: E731  sm_90a -> 90
    if any(n // 10 == major and n % 10 <= minor for n in numbers(code.sass)) or any(
            major * 10 + minor >= n for n in numbers(code.ptx)):
        return
    raise ArtifactError(f"this GPU ({device.device_name}) is sm_{major}{minor}; the artifact holds code for "
                        f"{', '.join(code.sass + code.ptx)}", code="E709",
                        hint="rebuild it for a target whose cuda_archs include this GPU")


def _load_library(data: bytes):
    """dlopen exactly the bytes that were hash-checked, from a private copy (in memory where Linux
    allows, so a noexec /tmp does not matter). TVM picks its loader by the name's extension, hence
    a `lib.so` link to the memfd."""
    import tvm_ffi
    with tempfile.TemporaryDirectory(prefix="accelc-lib-") as private:
        path = Path(private) / artifact.LIBRARY
        if not (hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")):
            path.write_bytes(data)
            return tvm_ffi.load_module(str(path))
        fd = os.memfd_create(artifact.LIBRARY)
        try:
            with open(fd, "wb", closefd=False) as handle:
                handle.write(data)
            path.symlink_to(f"/proc/self/fd/{fd}")
            return tvm_ffi.load_module(str(path))
        finally:
            os.close(fd)  # the mapping keeps the memory


def check_finite(where: str, array: np.ndarray, why: str) -> None:
    """Refuse NaN and infinities in a float array (E806), naming the first one."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InputError(f"{where}: non-finite value {array.flat[bad]} at flat index {bad}; {why}", code="E806")


def _checked_manifest(folder: Path, key: str | bytes | None = None) -> Manifest:
    """The typed manifest, its signature (with a key) and every file's hash checked, parsed once
    here so that calls read attributes prepared at load."""
    manifest = artifact.load_manifest(folder, key)
    missing = [name for name in (artifact.LIBRARY, artifact.PARAMS) if name not in manifest.files]
    if missing:
        raise ArtifactError(f"{folder / artifact.MANIFEST} does not list {missing}", code="E701")
    return manifest


def load(path: str | Path, check_host: bool = True, batching: str = "pad", key: str | bytes | None = None,
         reject_nonfinite: bool = False) -> Predictor:
    """Load an artifact directory, checking file hashes and that it can run on this machine.

    batching='pad' serves any batch size by padding to the next built size (and splitting above
    the largest); batching='exact' refuses sizes that were not built. With a signing `key` (or
    $ACCELC_SIGNING_KEY set) unsigned or badly signed artifacts are refused (E711, E712).
    reject_nonfinite=True refuses NaN and infinities in float inputs (E806).
    """
    return Predictor(path, check_host=check_host, batching=batching, key=key, reject_nonfinite=reject_nonfinite)
