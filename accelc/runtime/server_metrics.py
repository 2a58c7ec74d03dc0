"""Prometheus metrics of one `accelc serve` app, scraped at GET /metrics (text format).

Each app has its own CollectorRegistry, not prometheus_client's global one: two apps in one process
(tests, an embedding server) keep separate counts and never clash on metric names. /metrics itself
is not counted, so a scrape does not see itself in flight.
"""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from accelc.artifact.manifest import Manifest

# Seconds: a batch-1 call on the CPU takes ~0.1-5 ms; the top buckets catch queueing under load.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "unmatched"  # the endpoint label of a request no route took (404, 405)


def row_buckets(max_rows: int) -> tuple[float, ...]:
    """Powers of two up to the largest batch a predictor call can get, and that batch itself."""
    return tuple(sorted({2 ** k for k in range(max_rows.bit_length()) if 2 ** k <= max_rows} | {max_rows}))


class ServeMetrics:
    """The counters of one app: requests, latencies, batch rows per predictor call, requests in flight."""

    def __init__(self, manifest: Manifest, max_rows: int, accelc_version: str):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("accelc_requests", "HTTP requests answered, by endpoint (the route's path), status "
                                "class (2xx, 4xx, 5xx) and accelc error code ('' when none)",
                                ["endpoint", "status", "code"], registry=registry)
        self.latency = Histogram("accelc_request_duration_seconds", "Time from a request's arrival at its endpoint "
                                 "to its response, body read and prediction included", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.rows = Histogram("accelc_batch_rows", "Rows per predictor call (requests merged by micro-batching "
                              "count as one call)", buckets=row_buckets(max_rows), registry=registry)
        self.in_flight = Gauge("accelc_requests_in_flight", "Requests being answered now (/metrics excluded)",
                               registry=registry)
        Info("accelc_model", "The served artifact", registry=registry).info({
            "name": manifest.name, "target": manifest.target.name,
            "device": manifest.target.device, "built_by_accelc": manifest.accelc,
            "accelc_version": accelc_version})

    def instrument(self, endpoint: str, handler):
        """`handler` counted under `endpoint`: in flight while it runs, then its latency and outcome."""
        latency = self.latency.labels(endpoint)

        async def counted(request: Request) -> Response:
            self.in_flight.inc()
            start = time.perf_counter()
            status, code = "5xx", ""  # an exception is a 500 (Starlette's error middleware answers it)
            try:
                response = await handler(request)
                status, code = f"{response.status_code // 100}xx", getattr(response, "error_code", "")
                return response
            finally:
                latency.observe(time.perf_counter() - start)
                self.requests.labels(endpoint, status, code).inc()
                self.in_flight.dec()

        return counted

    def count(self, endpoint: str, status_code: int, code: str) -> None:
        """A request answered outside an instrumented endpoint (no route took it)."""
        self.requests.labels(endpoint, f"{status_code // 100}xx", code).inc()

    def batch(self, rows: int) -> None:
        self.rows.observe(rows)

    async def scrape(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
