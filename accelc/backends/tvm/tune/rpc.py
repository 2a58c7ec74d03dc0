"""Measuring candidates on remote devices through a TVM RPC tracker (tuning.runner.rpc).

TVM's own client retries a dead tracker for 60 s and then blocks on a free device without a
limit; a farm that is down must instead fail fast with its address. So the tracker is probed
here first on a socket with a timeout, and every measurement session has a timeout too.
"""
from __future__ import annotations

import json
import socket
import struct

from accelc.errors import TuningError


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def probe(address: str, key: str, timeout: float, where: str | None = None) -> int:
    """How many devices with `key` the tracker at `address` knows; a coded error when it cannot be
    reached within `timeout` seconds, is not a tracker, or has no such device."""
    from tvm.rpc import base
    host, port = split_address(address)
    field = "tuning.runner.rpc.tracker"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", _receive(sock, 4))[0]
            if magic != base.RPC_TRACKER_MAGIC:
                raise TuningError(f"{address} answered but is not a TVM RPC tracker", code="E612",
                                  location=where, field=field)
            _send_json(sock, [base.TrackerCode.SUMMARY])
            size = struct.unpack("<i", _receive(sock, 4))[0]
            status, summary = json.loads(_receive(sock, size).decode())
            if status != base.TrackerCode.SUCCESS or not isinstance(summary, dict):
                raise ValueError(f"unexpected tracker answer {status!r}")
    except (OSError, ValueError, struct.error) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (getattr(exc, "strerror", None) or str(exc))
        raise TuningError(f"cannot reach the RPC tracker at {address} within {timeout:g} s: {reason}",
                          code="E611", location=where, field=field,
                          hint="start it with `python -m tvm.exec.rpc_tracker --host HOST --port PORT` and check "
                               "the address and firewall") from None
    servers = [s for s in summary.get("server_info", []) if str(s.get("key", "")).split(":")[-1] == key]
    if not servers:
        known = sorted({str(s.get("key", "")).split(":")[-1] for s in summary.get("server_info", [])})
        raise TuningError(f"no device with key '{key}' is registered at the RPC tracker {address}",
                          code="E613", location=where, field="tuning.runner.rpc.key",
                          hint=f"keys there: {', '.join(known)}" if known else
                          "start servers with `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`")
    return len(servers)


def _send_json(sock: socket.socket, data) -> None:
    payload = json.dumps(data).encode()
    sock.sendall(struct.pack("<i", len(payload)) + payload)


def _receive(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError("the connection was closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def runner(address: str, key: str, parallel: int, timeout: float):
    """MetaSchedule's RPC runner: `parallel` candidates measured at once, each session bounded."""
    from tvm.s_tir import meta_schedule as ms
    host, port = split_address(address)
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_timeout_sec=int(max(1, timeout)))
    return ms.runner.RPCRunner(rpc_config=config, max_workers=parallel)
