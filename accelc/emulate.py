"""Verify cross-compiled ARM artifacts without ARM hardware: qemu-user runs accelc.runtime itself
inside a cached arm64 Debian root, fed the host's sample inputs over a pipe.

Set-up, once (cached under ~/.cache/accelc, reused by later builds and CI):
    python -m accelc.emulate setup        (or: accelc doctor --setup-arm)
It needs root, `debootstrap` and network access to Debian and PyPI; running needs `qemu-user-static`.

This module also runs *inside* the emulator (`python -m accelc.emulate serve ARTIFACT`), so at module
level it imports only the standard library and accelc.errors.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from .errors import AccelcError, ArtifactError, ToolchainError

SUITE = "bookworm"
# Per CPU architecture: Debian's name for it, and the wheel platform tags that run on that root.
ARCHS = {"aarch64": ("arm64", ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"])}
SETUP_COMMAND = "python -m accelc.emulate setup"
PACKAGES = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "typing_extensions")
RUNTIME_MODULES = ("__init__.py", "errors.py", "artifact.py", "signing.py", "host.py", "runtime.py", "emulate.py")
MARKER = ".accelc-root.json"
READY = b"accelc-emulated-runtime-ready\n"


def root_dir(arch: str = "aarch64") -> Path:
    """Where the emulation root lives: $ACCELC_EMULATION_ROOT, else the user cache dir."""
    if os.environ.get("ACCELC_EMULATION_ROOT"):
        return Path(os.environ["ACCELC_EMULATION_ROOT"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "accelc" / f"{ARCHS[arch][0]}-{SUITE}"


def pins() -> list[str]:
    """The host's versions: the emulated runtime must read the library format the host compiler wrote."""
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(name)
    return found


def unavailable(spec) -> str | None:
    """Why `spec` cannot be verified under emulation here (None when it can), with what to do."""
    if not spec.emulator or spec.arch not in ARCHS:
        return "no emulator is known for this target"
    if shutil.which(spec.emulator) is None:
        return f"the emulator '{spec.emulator}' is missing (apt-get install {spec.emulator_package or spec.emulator})"
    root = root_dir(spec.arch)
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return f"no emulation root at {root}; set it up once with `{SETUP_COMMAND}`"
    if marker.get("pins") != pins():
        return (f"the emulation root at {root} has {marker.get('pins')}, the host {pins()}; "
                f"refresh it with `{SETUP_COMMAND} --force`")
    return None


# ----------------------------------------------------------------------------------- set-up


def setup(arch: str = "aarch64", root: Path | None = None, force: bool = False, log=print) -> Path:
    """Make the emulation root: Debian base + python3 unpacked by debootstrap, the runtime wheels."""
    root = Path(root or root_dir(arch))
    if (root / MARKER).is_file() and not force:
        marker = json.loads((root / MARKER).read_text())
        if marker.get("pins") == pins():
            log(f"emulation root ready at {root}")
            return root
    for tool, package in (("debootstrap", "debootstrap"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            raise ToolchainError(f"setting up the emulation root needs '{tool}'", code="E506",
                                 hint=f"apt-get install {package}")
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    _debian_root(arch, partial, log)
    _install_wheels(arch, partial, log)
    _smoke_test(arch, partial, log)
    (partial / MARKER).write_text(json.dumps({"suite": SUITE, "arch": arch, "pins": pins()}, indent=2) + "\n")
    if root.exists():
        shutil.rmtree(root)
    os.rename(partial, root)
    log(f"emulation root ready at {root}")
    return root


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-6:])
        raise ToolchainError(f"{what} failed ({' '.join(cmd[:3])} ...):\n{tail}", code="E506")


def _debian_root(arch: str, root: Path, log) -> None:
    """debootstrap's first stage downloads and unpacks without running foreign binaries (no
    binfmt_misc, ~1 min instead of ~6); we unpack the packages it leaves for the second stage."""
    log(f"debootstrap {SUITE} {ARCHS[arch][0]} into {root} (about a minute) ...")
    mirror = os.environ.get("ACCELC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    _run(["debootstrap", "--foreign", f"--arch={ARCHS[arch][0]}", "--variant=minbase",
          "--include=python3,libstdc++6", SUITE, str(root), mirror], "debootstrap")
    paths = dict(line.split(None, 1) for line in (root / "debootstrap/debpaths").read_text().splitlines())
    base = (root / "debootstrap/base").read_text().split()
    for package in base:
        _unpack(root / paths[package].strip().lstrip("/"), root)
    if not any((root / "usr/bin").glob("python3.*")):
        raise ToolchainError(f"the Debian root at {root} has no python3", code="E506")


def _unpack(deb: Path, root: Path) -> None:
    """dpkg-deb -x, but keeping merged-/usr links (lib -> usr/lib) instead of replacing them."""
    reader = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    extract = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root)], stdin=reader.stdout,
                             capture_output=True, text=True)
    reader.stdout.close()
    if reader.wait() or extract.returncode:
        raise ToolchainError(f"unpacking {deb.name} failed: {extract.stderr.strip()[-300:]}", code="E506")


def _smoke_test(arch: str, root: Path, log) -> None:
    """Import the runtime under the emulator once, so a broken root fails here, not in a build."""
    emulator = f"qemu-{arch}-static"
    if shutil.which(emulator) is None:
        raise ToolchainError(f"'{emulator}' is needed to run the emulation root", code="E506",
                             hint="apt-get install qemu-user-static")
    log(f"checking the runtime under {emulator} ...")
    done = subprocess.run([emulator, str(_python(root)), "-c", "import numpy, tvm, tvm.runtime.vm; print('ok')"],
                          capture_output=True, text=True, env=_environment(root), timeout=600)
    if done.stdout.strip() != "ok":
        raise ToolchainError(f"the emulated Python cannot import the TVM runtime: {done.stderr.strip()[-400:]}",
                             code="E506")


def _environment(root: Path, *paths: str) -> dict:
    """For the emulated Python: the root's libraries and the runtime wheels, nothing of the host's."""
    return {"PATH": "/usr/bin:/bin", "QEMU_LD_PREFIX": str(root), "TVM_USE_RUNTIME_LIB": "1",
            "PYTHONPATH": ":".join([*paths, str(root / "opt/accelc/site")]), "PYTHONNOUSERSITE": "1",
            "LC_ALL": "C.UTF-8"}


def _python(root: Path) -> Path:
    return root / "usr/bin" / f"python{_python_version(root)}"


def _python_version(root: Path) -> str:
    names = sorted(p.name for p in (root / "usr/bin").glob("python3.*") if p.name[8:].isdigit())
    if not names:
        raise EmulatorUnavailable(f"the emulation root at {root} has no python3")
    return names[-1][len("python"):]


def _install_wheels(arch: str, root: Path, log) -> None:
    """PyPI's wheels for that CPU, installed from the host (no pip inside the emulator)."""
    version = _python_version(root)
    log(f"installing {', '.join(pins())} for {arch} / Python {version} ...")
    platforms = [flag for tag in ARCHS[arch][1] for flag in ("--platform", tag)]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
          "--only-binary=:all:", *platforms, "--python-version", version, "--implementation", "cp",
          "--target", str(root / "opt/accelc/site"), *pins()], "pip install")
    compiler = next((root / "opt/accelc/site/tvm/lib").glob("libtvm_compiler.so"), None)
    if compiler:
        compiler.unlink()  # 240 MB the runtime never loads (TVM_USE_RUNTIME_LIB=1)


# ----------------------------------------------------------------------------------- running


class EmulatedPredictor:
    """A Predictor whose artifact runs in accelc.runtime under qemu-user; same predict() call."""

    def __init__(self, folder: Path, spec, root: Path | None = None):
        self.root = Path(root or root_dir(spec.arch))
        self.description = f"{spec.emulator} with the {ARCHS[spec.arch][0]} Debian root {self.root}"
        python = _python(self.root)
        self._tmp = tempfile.TemporaryDirectory(prefix="accelc-emulate-")
        package = Path(self._tmp.name) / "accelc"
        package.mkdir()
        here = Path(__file__).resolve().parent
        for name in RUNTIME_MODULES:  # the runtime itself, not a copy of its logic
            shutil.copy(here / name, package / name)
        env = {**_environment(self.root, self._tmp.name), "HOME": self._tmp.name}
        self._log = open(Path(self._tmp.name) / "stderr.txt", "w+b")  # a file: a full pipe would block
        try:
            self._proc = subprocess.Popen([spec.emulator, str(python), "-m", "accelc.emulate", "serve",
                                           str(Path(folder).resolve())], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._log, env=env)
        except OSError as exc:
            self._log.close()
            self._tmp.cleanup()
            raise EmulatorUnavailable(f"cannot start {spec.emulator}: {exc}") from None
        if self._proc.stdout.readline() != READY:
            raise EmulatorUnavailable(f"the emulated runtime did not start: {self._stderr_tail()}")

    def predict(self, *arrays) -> list:
        import numpy as np
        buffer = io.BytesIO()
        np.savez(buffer, *[np.asarray(a) for a in arrays])
        try:
            _send(self._proc.stdin, buffer.getvalue())
            ok, payload = _receive(self._proc.stdout)
        except (OSError, EOFError):
            raise ArtifactError(f"the artifact crashed under emulation: {self._stderr_tail()}", code="E707") from None
        if not ok:
            raise ArtifactError(f"the artifact failed under emulation: {payload.decode()}", code="E707")
        with np.load(io.BytesIO(payload), allow_pickle=False) as outputs:
            return [outputs[f"arr_{i}"] for i in range(len(outputs.files))]

    def _stderr_tail(self) -> str:
        self._stop()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        self.close()
        return " | ".join(text.strip().splitlines()[-4:]) or f"exit code {self._proc.returncode}"

    def _stop(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def close(self) -> None:
        self._stop()
        self._log.close()
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EmulatorUnavailable(Exception):
    """The emulation root is broken: verification is skipped, the build is not failed."""


def _send(stream, payload: bytes, ok: bool = True) -> None:
    stream.write(struct.pack("<?Q", ok, len(payload)) + payload)
    stream.flush()


def _receive(stream) -> tuple[bool, bytes]:
    header = stream.read(9)
    if len(header) < 9:
        raise EOFError
    ok, size = struct.unpack("<?Q", header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError
    return ok, payload


def serve(folder: str) -> int:
    """Inside the emulator: load the artifact, then answer npz requests on stdin until it closes."""
    import numpy as np
    from . import runtime
    # qemu-user shows the host's /proc/cpuinfo, so the CPU-feature check would read x86 flags;
    # the emulated CPU ('max') has every Armv8 feature the targets name.
    predictor = runtime.load(folder, check_host=False)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(READY)
    stdout.flush()
    while True:
        try:
            _, payload = _receive(stdin)
        except EOFError:
            return 0
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as request:
                arrays = [request[f"arr_{i}"] for i in range(len(request.files))]
            buffer = io.BytesIO()
            np.savez(buffer, *predictor.predict(*arrays))
            _send(stdout, buffer.getvalue())
        except AccelcError as exc:
            _send(stdout, exc.format().encode(), ok=False)
        except Exception as exc:  # reported to the host, which fails the build with it
            _send(stdout, f"{type(exc).__name__}: {exc}".encode(), ok=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accelc.emulate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="make the cached arm64 emulation root (once)")
    p.add_argument("--root", type=Path, help=f"where (default {root_dir()})")
    p.add_argument("--force", action="store_true", help="rebuild it even if it is ready")
    p = sub.add_parser("serve", help="(inside the emulator) run an artifact for the host")
    p.add_argument("artifact")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.artifact)
    try:
        setup(root=args.root, force=args.force)
    except AccelcError as exc:
        print(exc.format(), file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
