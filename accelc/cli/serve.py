"""`accelc serve ARTIFACT`: serve an artifact over HTTP (JSON, KServe v2, Prometheus metrics)."""
from __future__ import annotations

import argparse

from accelc.cli.common import positive
from accelc.errors import EXIT_OK

OPTIONS = ("max_batch_rows", "max_body_bytes", "micro_batch_ms", "threads", "body_timeout_s")
SERVER_LOG = {-1: "warning", 0: "info", 1: "debug"}  # -q, default, -v; debug adds the access log


def add_arguments(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve an artifact over HTTP: JSON (POST /predict, GET /health, "
                              "GET /metadata), KServe v2 (/v2/...) and Prometheus metrics (GET /metrics)")
    p.add_argument("artifact")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    p.add_argument("--max-batch-rows", type=positive, help="rows per request (default: the largest built batch)")
    p.add_argument("--max-body-bytes", type=positive, help="larger bodies get 413 (default 8 MiB)")
    p.add_argument("--micro-batch-ms", type=float,
                   help="merge concurrent requests arriving within this many ms into one call (default 0: off)")
    p.add_argument("--reject-nonfinite", action="store_true", help="refuse NaN/Inf in float inputs (default: accept; "
                   "null means NaN)")
    p.add_argument("--threads", type=positive, help="predictor threads (default: CPU cores, at most 4)")
    p.add_argument("--body-timeout", type=float, dest="body_timeout_s", metavar="SECONDS",
                   help="answer 408 and close a connection that sends no body bytes for this long (default 30)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from accelc.runtime.server import ServeOptions, serve
    given = {name: getattr(args, name) for name in OPTIONS}
    options = ServeOptions(reject_nonfinite=args.reject_nonfinite,
                           **{name: value for name, value in given.items() if value is not None})  # else defaults
    serve(args.artifact, host=args.host, port=args.port, options=options, log_level=SERVER_LOG[args.verbosity])
    return EXIT_OK
