"""`accelc doctor`: which targets this machine can build and verify, and how to get what is missing."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelc import emulate
from accelc.config import host_cpu as host
from accelc.config import targets
from accelc.errors import AccelcError

# as benchmarks/gpu_check.sh's usage says (a test holds them together): pack here, run there
GPU_HINT = ("verify on a GPU host: `bash benchmarks/gpu_check.sh pack OUT --python 3.12 ARTIFACT...` here "
            "(3.12: the GPU host's Python), copy OUT there, run `bash OUT/src/benchmarks/gpu_check.sh run OUT` "
            "(or `accelc verify ARTIFACT` where accelc is installed)")


@dataclass
class Finding:
    """One target: can it be built here, can its artifacts be verified here, and the fixes."""

    target: str
    build: bool
    build_note: str
    verify: str  # "native", "emulated", "no"
    verify_note: str
    fixes: list[str] = field(default_factory=list)


def check(spec) -> Finding:
    build, build_note, fixes = True, "", []
    try:
        spec.check_toolchain()
        build_note = _toolchain_note(spec)
    except AccelcError as exc:
        build, build_note = False, exc.problems[0].message
        fixes += [p.hint for p in exc.problems if p.hint]
    runs, why = spec.runs_here()
    if runs:
        return Finding(spec.name, build, build_note, "native", "", fixes)
    if spec.emulator:
        reason = emulate.unavailable(spec)
        if reason is None:
            return Finding(spec.name, build, build_note, "emulated",
                           f"{spec.emulator}, root {emulate.root_dir(spec.arch)}", fixes)
        fixes.append(reason if "apt-get" in reason else f"`{emulate.SETUP_COMMAND}` or `accelc doctor --setup-arm`"
                     f" (needs root, debootstrap, qemu-user-static; about 2 minutes, cached in "
                     f"{emulate.root_dir(spec.arch)})")
        return Finding(spec.name, build, build_note, "no", reason, fixes)
    if spec.device == "cuda":
        fixes.append(GPU_HINT)
    return Finding(spec.name, build, build_note, "no", why, fixes)


def _toolchain_note(spec) -> str:
    if spec.device == "cuda":
        from accelc.backends.tvm import cuda
        release, _ = cuda.nvcc_facts(cuda.find_nvcc())
        return f"nvcc {release}, {', '.join(cuda.target_archs(spec))}"
    if spec.cross_compiler:
        return spec.cross_compiler
    return "host compiler"


def report(root: Path | None = None) -> list[Finding]:
    return [check(spec) for spec in targets.load_all(root).values()]


def format_findings(findings: list[Finding]) -> str:
    """A table, then one line per fix (deduplicated: several targets share a fix)."""
    rows = [(f.target, ("yes" if f.build else "NO") + (f" ({f.build_note})" if f.build_note else ""),
             f.verify + (f" ({f.verify_note})" if f.verify_note and f.verify != "no" else ""))
            for f in findings]
    header = ("target", "build here", "verify here")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(f"\nthis machine: {host.host_arch()}, "
                 f"{'an NVIDIA GPU' if host.has_nvidia_gpu() else 'no NVIDIA GPU'}")
    fixes: dict[str, list[str]] = {}
    for f in findings:
        if f.verify == "no" and f.verify_note:
            fixes.setdefault(f"cannot verify: {f.verify_note}", []).append(f.target)
        for fix in f.fixes:
            fixes.setdefault(fix, []).append(f.target)
    if fixes:
        lines.append("to do:")
        lines += [f"  - {text} [{', '.join(names)}]" for text, names in fixes.items()]
    return "\n".join(lines)


def as_json(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]
