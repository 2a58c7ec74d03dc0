"""Runs inside the emulator: `python -m accelc.emulate.guest ARTIFACT` loads the artifact with accelc.runtime
and answers the host's requests on stdin until it closes. Imports only what GUEST_FILES copies."""
from __future__ import annotations

import io
import sys

from accelc.emulate import wire
from accelc.errors import AccelcError


def serve(folder: str) -> int:
    """Inside the emulator: load the artifact, then answer npz requests on stdin until it closes."""
    import numpy as np
    from accelc.runtime import predictor as runtime
    # qemu-user shows the host's /proc/cpuinfo, so the CPU-feature check would read x86 flags;
    # the emulated CPU ('max') has every Armv8 feature the targets name.
    predictor = runtime.load(folder, check_host=False)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(wire.READY)
    stdout.flush()
    while True:
        try:
            _, payload = wire.receive(stdin)
        except EOFError:
            return 0
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as request:
                arrays = [request[f"arr_{i}"] for i in range(len(request.files))]
            buffer = io.BytesIO()
            np.savez(buffer, *predictor.predict(*arrays))
            wire.send(stdout, buffer.getvalue())
        except AccelcError as exc:
            wire.send(stdout, exc.format().encode(), ok=False)
        except Exception as exc:  # reported to the host, which fails the build with it
            wire.send(stdout, f"{type(exc).__name__}: {exc}".encode(), ok=False)


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
