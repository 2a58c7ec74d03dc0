"""Host <-> guest messages over the emulated process's pipes: a flag, a length, an npz payload."""
from __future__ import annotations

import struct

READY = b"accelc-emulated-runtime-ready\n"  # the guest's first line: the artifact loaded


def send(stream, payload: bytes, ok: bool = True) -> None:
    stream.write(struct.pack("<?Q", ok, len(payload)) + payload)
    stream.flush()


def receive(stream) -> tuple[bool, bytes]:
    header = stream.read(9)
    if len(header) < 9:
        raise EOFError
    ok, size = struct.unpack("<?Q", header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError
    return ok, payload


