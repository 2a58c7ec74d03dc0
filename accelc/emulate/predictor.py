"""A Predictor whose artifact runs in accelc's own runtime under qemu-user (the host side)."""
from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

from accelc.emulate import wire
from accelc.emulate.root import ARCHS, EmulatorUnavailable, guest_environment, guest_python, root_dir
from accelc.errors import ArtifactError

# What the guest imports (stdlib, numpy and the TVM runtime besides): copied into a temp package.
GUEST_FILES = ("__init__.py", "errors.py", "logs.py", "artifact/__init__.py", "artifact/store.py",
               "artifact/signing.py", "artifact/manifest.py", "artifact/records.py", "config/__init__.py",
               "config/host_cpu.py", "runtime/__init__.py", "runtime/predictor.py", "runtime/buckets.py",
               "emulate/__init__.py",
               "emulate/root.py", "emulate/predictor.py", "emulate/wire.py", "emulate/guest.py")


class EmulatedPredictor:
    """A Predictor whose artifact runs in accelc.runtime.predictor under qemu-user; same predict() call."""

    def __init__(self, folder: Path, spec, root: Path | None = None):
        self.root = Path(root or root_dir(spec.arch))
        self.description = f"{spec.emulator} with the {ARCHS[spec.arch][0]} Debian root {self.root}"
        python = guest_python(self.root)
        self._tmp = tempfile.TemporaryDirectory(prefix="accelc-emulate-")
        package = Path(self._tmp.name) / "accelc"
        package.mkdir()
        here = Path(__file__).resolve().parents[1]
        for name in GUEST_FILES:  # the runtime itself, not a copy of its logic
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(here / name, package / name)
        env = {**guest_environment(self.root, self._tmp.name), "HOME": self._tmp.name}
        self._log = open(Path(self._tmp.name) / "stderr.txt", "w+b")  # a file: a full pipe would block
        try:
            self._proc = subprocess.Popen([spec.emulator, str(python), "-m", "accelc.emulate.guest",
                                           str(Path(folder).resolve())], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._log, env=env)
        except OSError as exc:
            self._log.close()
            self._tmp.cleanup()
            raise EmulatorUnavailable(f"cannot start {spec.emulator}: {exc}") from None
        if self._proc.stdout.readline() != wire.READY:
            raise EmulatorUnavailable(f"the emulated runtime did not start: {self._stderr_tail()}")

    def predict(self, *arrays) -> list:
        import numpy as np
        buffer = io.BytesIO()
        np.savez(buffer, *[np.asarray(a) for a in arrays])
        try:
            wire.send(self._proc.stdin, buffer.getvalue())
            ok, payload = wire.receive(self._proc.stdout)
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
