"""Verify cross-compiled ARM artifacts without ARM hardware: qemu-user runs accelc.runtime itself
inside a cached arm64 Debian root, fed the host's sample inputs over a pipe.

Set-up, once (cached under ~/.cache/accelc, reused by later builds and CI):
    python -m accelc.emulate setup        (or: accelc doctor --setup-arm)
It needs root, `debootstrap` and network access to Debian and PyPI; running needs `qemu-user-static`.

Part of this package also runs *inside* the emulator (`python -m accelc.emulate.guest ARTIFACT`), so it
imports only the standard library and accelc.errors at module level.
"""
from accelc.emulate.predictor import EmulatedPredictor  # noqa: F401
from accelc.emulate.root import SETUP_COMMAND, EmulatorUnavailable, root_dir, setup, unavailable  # noqa: F401
