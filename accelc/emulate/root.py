"""The cached arm64 Debian root the emulated runtime runs in: where it is, whether it is ready, making it."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from accelc import logs
from accelc.errors import ToolchainError

SUITE = "bookworm"
# Per CPU architecture: Debian's name for it, and the wheel platform tags that run on that root.
ARCHS = {"aarch64": ("arm64", ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"])}
SETUP_COMMAND = "python -m accelc.emulate setup"
PACKAGES = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "typing_extensions")
MARKER = ".accelc-root.json"
_LOG = logging.getLogger(__name__)


class EmulatorUnavailable(Exception):
    """The emulation root is broken: verification is skipped, the build is not failed."""


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


def setup(arch: str = "aarch64", root: Path | None = None, force: bool = False,
          logger: logs.Logger | None = None) -> Path:
    """Make the emulation root: Debian base + python3 unpacked by debootstrap, the runtime wheels."""
    log = logger or _LOG
    root = Path(root or root_dir(arch))
    if (root / MARKER).is_file() and not force:
        marker = json.loads((root / MARKER).read_text())
        if marker.get("pins") == pins():
            log.info(f"emulation root ready at {root}")
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
    log.info(f"emulation root ready at {root}")
    return root


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-6:])
        raise ToolchainError(f"{what} failed ({' '.join(cmd[:3])} ...):\n{tail}", code="E506")


def _debian_root(arch: str, root: Path, log: logs.Logger) -> None:
    """debootstrap's first stage downloads and unpacks without running foreign binaries (no
    binfmt_misc, ~1 min instead of ~6); we unpack the packages it leaves for the second stage."""
    log.info(f"debootstrap {SUITE} {ARCHS[arch][0]} into {root} (about a minute) ...")
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


def _smoke_test(arch: str, root: Path, log: logs.Logger) -> None:
    """Import the runtime under the emulator once, so a broken root fails here, not in a build."""
    emulator = f"qemu-{arch}-static"
    if shutil.which(emulator) is None:
        raise ToolchainError(f"'{emulator}' is needed to run the emulation root", code="E506",
                             hint="apt-get install qemu-user-static")
    log.info(f"checking the runtime under {emulator} ...")
    done = subprocess.run([emulator, str(guest_python(root)), "-c", "import numpy, tvm, tvm.runtime.vm; print('ok')"],
                          capture_output=True, text=True, env=guest_environment(root), timeout=600)
    if done.stdout.strip() != "ok":
        raise ToolchainError(f"the emulated Python cannot import the TVM runtime: {done.stderr.strip()[-400:]}",
                             code="E506")


def guest_environment(root: Path, *paths: str) -> dict:
    """For the emulated Python: the root's libraries and the runtime wheels, nothing of the host's."""
    return {"PATH": "/usr/bin:/bin", "QEMU_LD_PREFIX": str(root), "TVM_USE_RUNTIME_LIB": "1",
            "PYTHONPATH": ":".join([*paths, str(root / "opt/accelc/site")]), "PYTHONNOUSERSITE": "1",
            "LC_ALL": "C.UTF-8"}


def guest_python(root: Path) -> Path:
    return root / "usr/bin" / f"python{_python_version(root)}"


def _python_version(root: Path) -> str:
    names = sorted(p.name for p in (root / "usr/bin").glob("python3.*") if p.name[8:].isdigit())
    if not names:
        raise EmulatorUnavailable(f"the emulation root at {root} has no python3")
    return names[-1][len("python"):]


def _install_wheels(arch: str, root: Path, log: logs.Logger) -> None:
    """PyPI's wheels for that CPU, installed from the host (no pip inside the emulator)."""
    version = _python_version(root)
    log.info(f"installing {', '.join(pins())} for {arch} / Python {version} ...")
    platforms = [flag for tag in ARCHS[arch][1] for flag in ("--platform", tag)]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
          "--only-binary=:all:", *platforms, "--python-version", version, "--implementation", "cp",
          "--target", str(root / "opt/accelc/site"), *pins()], "pip install")
    compiler = next((root / "opt/accelc/site/tvm/lib").glob("libtvm_compiler.so"), None)
    if compiler:
        compiler.unlink()  # 240 MB the runtime never loads (TVM_USE_RUNTIME_LIB=1)
