"""Memory of `accelc serve` over many HTTP calls: does the server's RSS grow?

Starts `python -m accelc serve ARTIFACT --port 0` (runtime-only TVM library), sends random requests
that fit the artifact's inputs from several client threads (keep-alive connections), and samples the
server process's RSS after a warm-up and after each tenth of the calls. Prints a table; asserts nothing.

    python benchmarks/serve_rss.py build/edu_churn-x86 --calls 20000 --clients 4 [--micro-batch-ms 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import select
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from accelc.artifact.store import read_manifest  # noqa: E402


def start(artifact: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    process = subprocess.Popen([sys.executable, "-m", "accelc", "serve", artifact, "--port", "0", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if select.select([process.stdout], [], [], 0.2)[0]:
            line = process.stdout.readline()
            if line.startswith("serving "):
                return process, line.split(" on ")[1].split()[0]
    process.kill()
    raise SystemExit(f"the server did not start (exit code {process.poll()})")


def bodies(manifest: dict, batch: int, count: int, seed: int = 0) -> list[bytes]:
    """Random request bodies that fit the artifact's inputs (float: normal; integer: its range)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        inputs = {}
        for spec in manifest["inputs"]:
            shape = [batch if d == "batch" else int(d) for d in spec["shape"]]
            if np.dtype(spec["dtype"]).kind in "iu":
                low, high = spec.get("range", (0, 2))
                inputs[spec["name"]] = rng.integers(int(low), int(high), shape).tolist()
            else:
                inputs[spec["name"]] = rng.standard_normal(shape).astype(np.float32).tolist()
        out.append(json.dumps({"inputs": inputs}).encode())
    return out


def run_calls(url: str, payloads: list[bytes], calls: int, clients: int) -> tuple[list[float], int]:
    """`calls` requests split over `clients` threads; latencies (s) and the number of non-200 answers."""
    def client(index: int) -> tuple[list[float], int]:
        times, errors = [], 0
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(index, calls, clients):
                begin = time.perf_counter()
                response = http.post("/predict", content=payloads[i % len(payloads)])
                times.append(time.perf_counter() - begin)
                errors += response.status_code != 200
        return times, errors

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    return [t for times, _ in results for t in times], sum(e for _, e in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--micro-batch-ms", type=float, default=0.0)
    args = parser.parse_args()
    manifest = read_manifest(Path(args.artifact))
    payloads = bodies(manifest, args.batch, 256)
    extra = ["--micro-batch-ms", str(args.micro_batch_ms)] if args.micro_batch_ms else []
    process, url = start(args.artifact, extra)
    server = psutil.Process(process.pid)
    try:
        run_calls(url, payloads, args.warmup, args.clients)
        base = server.memory_info().rss
        print(f"accelc serve {args.artifact} ({manifest['name']}), batch {args.batch}, {args.clients} clients, "
              f"micro-batching {args.micro_batch_ms or 'off'}; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs")
        print(f"{'calls':>8} {'RSS MiB':>9} {'growth MiB':>11} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>7}")
        print(f"{0:>8} {base / 2**20:>9.1f} {0:>11.2f} {'':>8} {'':>7} {'':>7} {'':>7}")
        done, step = 0, max(1, args.calls // 10)
        while done < args.calls:
            begin = time.perf_counter()
            times, errors = run_calls(url, payloads, min(step, args.calls - done), args.clients)
            elapsed, done = time.perf_counter() - begin, done + len(times)
            rss = server.memory_info().rss
            p50, p99 = np.percentile(times, [50, 99]) * 1e3
            print(f"{done:>8} {rss / 2**20:>9.1f} {(rss - base) / 2**20:>11.2f} {len(times) / elapsed:>8.0f} "
                  f"{p50:>7.2f} {p99:>7.2f} {errors:>7}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    main()
