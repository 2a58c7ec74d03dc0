"""Facts about the machine we run on. Torch- and TVM-free: the runtime uses it."""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """CPU feature flags as /proc/cpuinfo names them (avx2, fma, asimd, ...)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def can_run(device: str, arch: str, features) -> tuple[bool, str]:
    """Whether a module for (device, arch, features) can execute here, and why not."""
    if device == "cuda" and not has_nvidia_gpu():
        return False, "it runs on a CUDA GPU and this machine has none"
    if host_arch() != arch:
        return False, f"it was built for {arch} and this machine is {host_arch()}"
    missing = sorted(set(features) - cpu_flags())
    if missing:
        return False, f"it needs CPU features this machine lacks: {', '.join(missing)}"
    return True, ""
