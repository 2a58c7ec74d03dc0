"""CUDA ahead of time: device code is compiled by nvcc into a fatbin at build time and embedded in
lib.so, so a GPU server needs neither nvcc, NVRTC nor Python callbacks to load the module.

TVM's CUDA codegen calls its `tvm_callback_cuda_compile` hook only when the CUDA runtime library
(tvm/lib/libtvm_runtime_cuda.so) is loaded; otherwise it embeds CUDA *source*, JIT-compiled on the
server. That library needs libcudart and the driver's libcuda.so.1 to load, so on a GPU-less build
machine we load the toolkit's libcudart and, when no driver is installed, a stand-in libcuda built
here whose every function returns CUDA_ERROR_STUB_LIBRARY (as the toolkit's own stubs do). No
device function is ever called at build time: codegen only needs the module factories to exist.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from accelc.errors import TargetError, ToolchainError

FATBIN_MAGIC = 0xBA55ED50
NVCC_HINT = ("install the CUDA toolkit 13 (nvcc), e.g. `pip install nvidia-cuda-nvcc nvidia-cuda-runtime`, "
             "and put nvcc on PATH or set CUDA_HOME")
_ARCH = re.compile(r"^sm_(\d+)([af]?)$")
_MISSING_LIB = re.compile(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file")


def find_nvcc() -> str | None:
    """nvcc from CUDA_HOME/CUDA_PATH, PATH, or the usual install folder."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and (Path(os.environ[var]) / "bin" / "nvcc").is_file():
            return str(Path(os.environ[var]) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


@lru_cache(maxsize=4)
def nvcc_facts(nvcc: str) -> tuple[str, frozenset]:
    """(CUDA release such as '13.0', the sm_XX codes this nvcc can generate)."""
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
        codes = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"cannot run nvcc at {nvcc}: {exc}", code="E503", hint=NVCC_HINT) from None
    release = re.search(r"release (\d+\.\d+)", version)
    return (release.group(1) if release else "unknown"), frozenset(codes.split())


def check_toolchain(spec) -> None:
    """Before any work: nvcc present, and every arch of the target known to it and consistent."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise ToolchainError(f"target '{spec.name}' compiles device code ahead of time and needs nvcc",
                             code="E503", hint=NVCC_HINT)
    release, codes = nvcc_facts(nvcc)
    archs = target_archs(spec)
    unknown = [a for a in archs if not _ARCH.match(a) or f"sm_{_ARCH.match(a).group(1)}" not in codes]
    if unknown:
        raise TargetError(f"target '{spec.name}': CUDA arch {', '.join(unknown)} unknown to nvcc {release}",
                          code="E204", location=spec._source, field="cuda_archs",
                          hint="nvcc knows: " + ", ".join(sorted(codes, key=_arch_number)))
    codegen = spec.tvm.get("arch")
    if codegen and _arch_number(codegen) > min(_arch_number(a) for a in archs):
        raise TargetError(f"target '{spec.name}': tvm.arch {codegen} is newer than cuda_archs {archs}; code "
                          "generated for it may not run on the older ones", code="E204", location=spec._source,
                          field="tvm.arch", hint=f"set tvm.arch to the oldest, {min(archs, key=_arch_number)}")
    load_codegen_runtime()  # libcudart / driver stand-in: fail now, not after capture and passes


def target_archs(spec) -> list[str]:
    """The archs to embed: the target's cuda_archs, else the one its TVM target names."""
    return list(spec.cuda_archs) or [spec.tvm.get("arch", "sm_80")]


def _arch_number(arch: str) -> int:
    digits = re.search(r"(\d+)", arch)
    return int(digits.group(1)) if digits else 0


def gencode_flags(archs: list[str]) -> list[str]:
    """Machine code (SASS) per arch, plus PTX of the newest so that newer GPUs can still run it
    (the driver, not NVRTC, JIT-compiles PTX)."""
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    newest = max(archs, key=_arch_number)[3:]
    return flags + ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]


def compile_fatbin(code: str, archs: list[str], nvcc: str | None = None) -> bytes:
    """CUDA source -> fatbin for `archs`. No --use_fast_math: the build is verified against torch."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise ToolchainError("nvcc is needed to compile CUDA device code", code="E503", hint=NVCC_HINT)
    with tempfile.TemporaryDirectory(prefix="accelc-nvcc-") as tmp:
        source, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
        source.write_text(code)
        cmd = [nvcc, "--fatbin", "-O3", *gencode_flags(archs), "--expt-relaxed-constexpr",
               *(f"-U__CUDA_NO_{kind}__" for kind in ("HALF_OPERATORS", "HALF_CONVERSIONS",
                                                      "BFLOAT16_OPERATORS", "BFLOAT16_CONVERSIONS")),
               "-o", str(out), str(source)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            raise ToolchainError(f"nvcc failed to compile the generated CUDA code:\n{tail}", code="E504")
        return out.read_bytes()


def load_codegen_runtime() -> None:
    """Load tvm's libtvm_runtime_cuda.so so that codegen embeds compiled device code (see module doc)."""
    import tvm  # noqa: F401  (loads libtvm_runtime first)
    import tvm_ffi
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes
    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return
    lib_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    for _ in range(4):  # each round provides the shared library the loader reported missing
        try:
            _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                               extra_lib_paths=[lib_dir], mode="RTLD_LOCAL")
            return
        except (OSError, RuntimeError) as exc:
            missing = _MISSING_LIB.search(str(exc))
            if not missing:
                raise ToolchainError(f"cannot load TVM's CUDA runtime library: {exc}", code="E505") from None
            _provide(missing.group(1), lib_dir / "libtvm_runtime_cuda.so")
    raise ToolchainError("cannot load TVM's CUDA runtime library", code="E505")


def _provide(soname: str, runtime_lib: Path) -> None:
    """Make `soname` loadable by loading it globally: from the toolkit, or a stand-in driver."""
    if soname.startswith("libcuda.so"):
        candidates = [soname, str(_stub_driver(runtime_lib))]  # the real driver wins where installed
    else:
        candidates = [soname, *(str(d / soname) for d in cuda_lib_dirs())]
    for candidate in candidates:
        try:
            ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue
    raise ToolchainError(f"embedding compiled CUDA code needs {soname}, which is not found", code="E505",
                         hint="`pip install nvidia-cuda-runtime` (CUDA 13) or install the CUDA toolkit 13")


def cuda_lib_dirs() -> list[Path]:
    """Folders that may hold libcudart: the toolkit beside nvcc, CUDA_HOME, and the PyPI wheel."""
    roots = [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    nvcc = find_nvcc()
    if nvcc:
        roots.append(Path(nvcc).resolve().parent.parent)
    roots.append(Path("/usr/local/cuda"))
    dirs = [r / sub for r in roots for sub in ("lib64", "lib", "targets/x86_64-linux/lib")]
    with contextlib.suppress(ImportError):
        import nvidia  # the nvidia-cuda-runtime wheel: nvidia/cu13/lib
        dirs += [Path(p) / sub for p in nvidia.__path__ for sub in ("cu13/lib", "cuda_runtime/lib")]
    return [d for d in dirs if d.is_dir()]


def _stub_driver(runtime_lib: Path) -> Path:
    """A stand-in libcuda.so.1 with the functions `runtime_lib` imports, cached per symbol set."""
    names = _undefined_driver_symbols(runtime_lib)
    source = "".join(f"int {name}(void) {{ return 34; }}\n" for name in names)  # CUDA_ERROR_STUB_LIBRARY
    folder = _cache_dir() / f"cuda-stub-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    target = folder / "libcuda.so.1"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")
    if compiler is None:
        raise ToolchainError("a C compiler is needed to build the stand-in CUDA driver library", code="E505",
                             hint="apt-get install gcc")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        (Path(tmp) / "stub.c").write_text(source)
        subprocess.run([compiler, "-shared", "-fPIC", "-x", "c", "-Wl,-soname,libcuda.so.1", "-o",
                        str(Path(tmp) / "libcuda.so.1"), str(Path(tmp) / "stub.c")], check=True,
                       capture_output=True)
        os.replace(Path(tmp) / "libcuda.so.1", target)
    return target


def _undefined_driver_symbols(library: Path) -> list[str]:
    nm = shutil.which("nm")
    if nm is None:
        raise ToolchainError("`nm` (binutils) is needed to build the stand-in CUDA driver", code="E505",
                             hint="apt-get install binutils")
    out = subprocess.run([nm, "-D", "--undefined-only", str(library)], capture_output=True, text=True).stdout
    names = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    return sorted(n for n in names if re.match(r"^cu[A-Z]\w*$", n))


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "accelc"


@contextlib.contextmanager
def ahead_of_time(archs: list[str]):
    """Within this block TVM's CUDA codegen hands its source to nvcc and embeds the fatbin."""
    import tvm_ffi
    load_codegen_runtime()
    failure: dict = {}

    def compile_hook(code):
        try:
            return bytearray(compile_fatbin(str(code), archs))
        except ToolchainError as exc:
            failure["error"] = exc
            raise RuntimeError(str(exc)) from None

    previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_hook, override=True)
    try:
        yield
    except Exception:
        if "error" in failure:  # nvcc's own message, not TVM's wrapping of it
            raise failure["error"] from None
        raise
    finally:
        if previous is not None:
            tvm_ffi.register_global_func("tvm_callback_cuda_compile", previous, override=True)


def fatbin_entries(data: bytes) -> list[tuple[str, int]]:
    """(kind, sm number) of every entry of every fatbin in `data`: kind 'sass' (cubin) or 'ptx'.

    Layout: a 16-byte header (magic, version, header size, payload size), then entries whose header
    holds kind (u16 at 0: 1 PTX, 2 cubin), header size (u32 at 4), payload size (u64 at 8), arch (u32 at 28).
    """
    entries, start = [], data.find(struct.pack("<I", FATBIN_MAGIC))
    while start >= 0:
        if start + 16 <= len(data):
            _, version, header, size = struct.unpack_from("<IHHQ", data, start)
            pos, end = start + header, start + header + size
            while version == 1 and header == 16 and pos + 32 <= min(end, len(data)):
                kind, entry_header, payload = struct.unpack_from("<HxxIQ", data, pos)
                if kind in (1, 2):
                    entries.append(("ptx" if kind == 1 else "sass", struct.unpack_from("<I", data, pos + 28)[0]))
                if entry_header == 0:
                    break
                pos += entry_header + payload
        start = data.find(struct.pack("<I", FATBIN_MAGIC), start + 4)
    return entries


def describe_library(path: Path, archs: list[str]) -> dict:
    """What the exported library embeds; a CUDA source fallback or a missing arch is a build error."""
    data = Path(path).read_bytes()
    entries = fatbin_entries(data)
    sass = sorted({f"sm_{n}" for kind, n in entries if kind == "sass"}, key=_arch_number)
    missing = [a for a in archs if f"sm_{_arch_number(a)}" not in sass]
    if missing or b"__global__" in data:
        raise ToolchainError(f"the library does not embed machine code for {missing or archs}"
                             f"{' (it holds CUDA source)' if b'__global__' in data else ''}", code="E505",
                             hint="TVM's CUDA runtime library could not be loaded at build time")
    release, _ = nvcc_facts(find_nvcc())
    return {"format": "fatbin", "embedded": True, "archs": list(archs), "sass": sass,
            "ptx": sorted({f"compute_{n}" for kind, n in entries if kind == "ptx"}, key=_arch_number),
            "cuda": release}
