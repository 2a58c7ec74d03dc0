"""HTTP serving of one artifact: POST /predict, GET /health, GET /metadata, the KServe v2 protocol
under /v2 (kserve_v2.py) and Prometheus metrics at GET /metrics (server_metrics.py).

Built on Starlette + uvicorn rather than http.server: HTTP parsing, keep-alive, header limits and
concurrent connections are a server library's job. This module reads bodies and runs the predictor;
a protocol is a codec (decode, encode, error) that Service.run takes, so both protocols share the
body limits, the Decoder's checks (codec.py), the predictor pool and micro-batching.
It imports the runtime side only (no torch, no compiler), like predictor.py.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from accelc import __version__
from accelc.runtime import predictor as runtime
from accelc.errors import AccelcError, InputError, ToolchainError

try:  # the server libraries are the `serve` extra: the runtime alone does not need them
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn
except ImportError as exc:
    raise ToolchainError(f"`accelc serve` needs starlette, uvicorn and prometheus-client ({exc.name} is not "
                         "installed)", code="E510", hint="pip install 'accelc[serve]'") from None

from accelc.runtime import kserve_v2 as v2  # noqa: E402
from accelc.runtime.codec import STATUS, Decoder, jsonable
from accelc.runtime.server_metrics import UNMATCHED, ServeMetrics

from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import ClientDisconnect, Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

__all__ = ["STATUS", "Decoder", "ServeOptions", "Service", "bind", "create_app", "serve", "server"]

# uvicorn's own logger: our lines go where the server's go, at the level `--log-level` sets
LOG = logging.getLogger("uvicorn.error")
_ACCELC_LOG = logging.getLogger(__name__)  # the start-up line: accelc's, shown by the CLI like a build's progress
INLINE_BYTES = 16 << 10  # bodies up to this size are decoded on the event loop (faster than a thread hop)
ASYNCIO_TIMEOUT = hasattr(asyncio, "timeout")  # Python 3.11+


@dataclass(frozen=True)
class ServeOptions:
    """What the server accepts and how it runs the predictor."""

    max_batch_rows: int | None = None  # rows per request; None: the largest built batch size
    max_body_bytes: int = 8 << 20
    micro_batch_ms: float = 0.0  # 0: off; else merge concurrent requests arriving within this window
    reject_nonfinite: bool = False  # edu_churn takes NaN (= missing) by design, so accept by default
    threads: int = min(4, os.cpu_count() or 1)  # predictor threads (each keeps its own VM)
    body_timeout_s: float = 30.0  # longest wait for the next body bytes (nginx's client_body_timeout)

    def __post_init__(self):
        for name in ("max_batch_rows", "max_body_bytes", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"serve option {name} must be an integer >= 1, got {value!r}", code="E804")
        if not (isinstance(self.micro_batch_ms, (int, float)) and 0 <= self.micro_batch_ms <= 10_000):
            raise InputError(f"micro_batch_ms must be between 0 and 10000, got {self.micro_batch_ms!r}", code="E804")
        if not (isinstance(self.body_timeout_s, (int, float)) and 0 < self.body_timeout_s <= 3600):
            raise InputError(f"body_timeout_s must be above 0 and at most 3600, got {self.body_timeout_s!r}",
                             code="E804")


# ---- responses ----------------------------------------------------------------------------------

def error_response(exc: AccelcError, headers: dict | None = None) -> JSONResponse:
    problem = exc.problems[0]
    error = {"code": problem.code, "message": problem.message, **({"hint": problem.hint} if problem.hint else {})}
    response = JSONResponse({"error": error}, status_code=STATUS.get(problem.code, 422), headers=headers)
    response.error_code = problem.code  # for the metrics
    return response


class JsonCodec:
    """POST /predict's protocol: {"inputs": {name: nested list}} in, {"outputs": {name: nested list}} out."""

    def __init__(self, decoder: Decoder, output_names: list[str]):
        self.decoder, self.output_names = decoder, output_names
        self.error = error_response

    def decode(self, body: bytes) -> tuple[list[np.ndarray], int, None]:
        return (*self.decoder.decode(body), None)

    def encode(self, outputs: list[np.ndarray], context=None) -> Response:
        return JSONResponse({"outputs": {name: jsonable(out) for name, out in zip(self.output_names, outputs)}})


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "(unknown)"


def _too_large(limit: int) -> InputError:
    return InputError(f"the request body is larger than {limit} bytes", code="E812",
                      hint="send fewer rows per request, or raise --max-body-bytes")


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused as soon as it is known to exceed `limit` (declared length or bytes received),
    or when no bytes come for `timeout_s`: a client that stalls mid-body would hold its connection
    (and a graceful shutdown) forever."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    try:
        await _receive(request.stream(), chunks, limit, timeout_s)
    except (TimeoutError, asyncio.TimeoutError):  # one class from 3.11 on
        raise InputError(f"no body bytes for {timeout_s:g} s ({sum(map(len, chunks))} received"
                         f"{f' of {declared}' if declared.isdigit() else ''}); closing the connection",
                         code="E815", hint="send the body without long pauses, or raise --body-timeout") from None
    return b"".join(chunks)


async def _receive(stream, chunks: list[bytes], limit: int, timeout_s: float) -> None:
    """Append the stream's chunks to `chunks`; TimeoutError when none comes for `timeout_s`. From 3.11
    one timer per body, pushed back at each chunk: a wait_for per chunk costs ~45 us a request."""
    size = 0
    if ASYNCIO_TIMEOUT:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s) as deadline:
            async for chunk in stream:
                deadline.reschedule(loop.time() + timeout_s)
                size = _keep(chunks, chunk, size, limit)
        return
    while True:  # Python 3.10
        try:
            size = _keep(chunks, await asyncio.wait_for(anext(stream), timeout_s), size, limit)
        except StopAsyncIteration:
            return


def _keep(chunks: list[bytes], chunk: bytes, size: int, limit: int) -> int:
    """The bytes received so far, `chunk` included; refused as soon as they exceed `limit`."""
    size += len(chunk)
    if size > limit:
        raise _too_large(limit)
    chunks.append(chunk)
    return size


# ---- the service --------------------------------------------------------------------------------

@dataclass
class _Pending:
    arrays: list
    rows: int
    future: asyncio.Future


class MicroBatcher:
    """Merges requests that arrive within `window_s` into one predictor call along the batch.

    Runs on the event loop thread only (no locks): the first request opens a batch and starts
    the timer; the batch is flushed when the timer fires or when it holds `max_rows` rows.
    """

    def __init__(self, service: Service, window_s: float, max_rows: int):
        self.service, self.window_s, self.max_rows = service, window_s, max_rows
        self._open: list[_Pending] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, arrays: list[np.ndarray], rows: int) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        if self._open and self._rows + rows > self.max_rows:
            self._flush()
        pending = _Pending(arrays, rows, loop.create_future())
        self._open.append(pending)
        self._rows += rows
        if self._rows >= self.max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await pending.future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._open, self._rows = self._open, [], 0
        if batch:
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a client that went away is cancelled
        results = None
        try:
            if len(live) > 1:
                results = await self.service.offload(_merged, self.service.call, [p.arrays for p in live],
                                                     [p.rows for p in live])
        except InputError:  # one request's values (an index out of range) spoil the merged call
            pass
        except Exception as exc:  # a bug: every waiting request gets it (-> 500), none hangs
            results = [exc] * len(live)
        if results is None:  # alone, or after a spoiled merge: each request on its own
            results = await asyncio.gather(*(self.service.offload(self.service.call, *p.arrays) for p in live),
                                           return_exceptions=True)
        for pending, result in zip(live, results):
            if not pending.future.done():
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)


def _merged(call, requests: list[list[np.ndarray]], rows: list[int]) -> list[list[np.ndarray]]:
    """One predictor call on the requests concatenated along the batch; outputs split back."""
    merged = []
    for parts in zip(*requests):
        out = runtime.aligned_empty((sum(rows), *parts[0].shape[1:]), parts[0].dtype)
        merged.append(np.concatenate(parts, out=out))
    outputs = call(*merged)
    bounds = np.cumsum([0, *rows])
    return [[out[start:stop] for out in outputs] for start, stop in zip(bounds[:-1], bounds[1:])]


class Service:
    """One loaded predictor behind the HTTP endpoints, with a fixed pool of predictor threads."""

    def __init__(self, predictor, options: ServeOptions):
        self.predictor, self.options = predictor, options
        largest = predictor.sizes[-1] if predictor.sizes else 1
        self.max_rows = options.max_batch_rows or largest
        self.decoder = Decoder(predictor.inputs, self.max_rows, options.reject_nonfinite)
        self.output_names = [spec.name for spec in predictor.outputs]
        self.json = JsonCodec(self.decoder, self.output_names)
        self._rows_from = next((i for i, spec in enumerate(self.decoder.inputs) if spec.batched), None)
        self.metrics = ServeMetrics(predictor.manifest, self.max_rows, __version__)
        self.pool = ThreadPoolExecutor(options.threads, thread_name_prefix="accelc-predict")
        self.requests = self.calls = 0  # requests received, predictor calls made (-> /health)
        self._lock = threading.Lock()
        self.batcher = None
        if options.micro_batch_ms:
            batched = [s.batched for s in (*predictor.inputs, *predictor.outputs)]
            if not all(batched):
                raise InputError("micro-batching needs a batch dimension on every input and output",
                                 code="E804", hint="serve without --micro-batch-ms")
            self.batcher = MicroBatcher(self, options.micro_batch_ms / 1000, min(largest, self.max_rows))
        self.metadata = json.dumps(_metadata(predictor, options, self.max_rows, self.batcher is not None)).encode()

    async def offload(self, function, *args):
        """Run in the predictor pool, off the event loop (threads persist, so each keeps its VM)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    def answer(self, body: bytes, codec=None) -> Response:
        """Decode, predict, encode: the whole request in one thread hop when not micro-batching."""
        codec = codec or self.json
        try:
            arrays, _, context = codec.decode(body)
            outputs = self.call(*arrays)
        except AccelcError as exc:
            return codec.error(exc)
        return codec.encode(outputs, context)

    def call(self, *arrays: np.ndarray) -> list[np.ndarray]:
        outputs = self.predictor.predict(*arrays)
        with self._lock:
            self.calls += 1
        self.metrics.batch(1 if self._rows_from is None else arrays[self._rows_from].shape[0])
        return outputs

    async def predict(self, request: Request) -> Response:
        return await self.run(request, self.json)

    async def run(self, request: Request, codec) -> Response:
        """Read the body and answer it with `codec` (decode, encode, error): one protocol's request."""
        self.requests += 1
        try:
            body = await _read_body(request, self.options.max_body_bytes, self.options.body_timeout_s)
        except ClientDisconnect:  # one line, not uvicorn's 40-line traceback per client that goes away
            LOG.info("client %s closed the connection before sending the whole body", _peer(request))
            return Response(status_code=400)  # never sent: there is nobody to send it to
        except AccelcError as exc:
            if exc.code == "E815":  # the rest of the body may still come: it must not be read as a request
                return codec.error(exc, headers={"connection": "close"})
            return codec.error(exc)
        if self.batcher is None:
            return await self.offload(self.answer, body, codec)
        try:
            small = len(body) <= INLINE_BYTES
            arrays, rows, context = codec.decode(body) if small else await self.offload(codec.decode, body)
            outputs = await self.batcher.submit(arrays, rows)
        except AccelcError as exc:
            return codec.error(exc)
        return codec.encode(outputs, context) if small else await self.offload(codec.encode, outputs, context)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "name": self.predictor.manifest.name,
                             "requests": self.requests, "predictor_calls": self.calls})

    async def describe(self, request: Request) -> Response:
        return Response(self.metadata, media_type="application/json")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _metadata(predictor, options: ServeOptions, max_rows: int, micro_batching: bool) -> dict:
    """What a client needs to call the model, from the manifest, and the server's limits."""
    manifest = predictor.manifest
    verification, target = manifest.verification, manifest.target
    return {"name": manifest.name, "accelc": manifest.accelc,
            "target": {"name": target.name, "device": target.device, "arch": target.arch,
                       "cpu_features": list(target.cpu_features)},
            "inputs": [spec.to_json() for spec in predictor.inputs],
            "outputs": [spec.to_json() for spec in predictor.outputs], "batch_sizes": predictor.sizes,
            "verification": {"verified": manifest.verified, "status": verification.status,
                             **({"metric": verification.metric.to_json()} if verification.metric else {})},
            "recipe_sha256": manifest.recipe.sha256, "versions": manifest.versions.to_json(),
            "serving": {**asdict(options), "max_batch_rows": max_rows, "micro_batching": micro_batching,
                        "nonfinite": "rejected" if options.reject_nonfinite else "accepted (null = NaN)"}}


ENDPOINTS = "POST /predict, GET /health, GET /metadata, KServe v2 under /v2, GET /metrics"


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Routing errors (404, 405) in the shape of the protocol asked for (v2's under /v2), counted."""
    message = {404: f"no endpoint {request.url.path}; the server has {ENDPOINTS}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    service: Service = request.app.state.service
    service.metrics.count(UNMATCHED, exc.status_code, "E813")
    body = ({"error": f"E813: {message}"} if request.url.path.startswith("/v2")
            else {"error": {"code": "E813", "message": message}})
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def create_app(predictor, options: ServeOptions | None = None) -> Starlette:
    """The ASGI app for a loaded predictor (`runtime.load`); run it with any ASGI server."""
    service = Service(predictor, options or ServeOptions())

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    endpoints = [("/predict", service.predict, "POST"), ("/health", service.health, "GET"),
                 ("/metadata", service.describe, "GET"), *v2.V2(service).endpoints()]
    routes = [Route(path, service.metrics.instrument(path, handler), methods=[method])
              for path, handler, method in endpoints]
    routes.append(Route("/metrics", service.metrics.scrape, methods=["GET"]))
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    app.state.service = service
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a coded error (port taken, unknown host) instead of uvicorn's exit."""
    sock = None
    try:
        if not 0 <= port <= 65535:  # getaddrinfo would wrap 70000 to 4464
            raise OverflowError(f"port must be 0-65535, got {port}")
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)  # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (with proto 0 it does not: 40 ms Nagle)
        sock.bind(address)
        sock.listen(1024)
    except (OSError, OverflowError) as exc:
        if sock is not None:
            sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}",
                         code="E814", hint="choose another --port or --host") from None
    return sock


def server(app, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for `app`; run it with .run(sockets=[bind(host, port)])."""
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5,
                                         access_log=log_level == "debug"))


def _import_tvm_runtime_only() -> None:
    """Import TVM as a server needs it: the 3 MB runtime library, not the 250 MB compiler, and without
    torch, which tvm_ffi imports at import time when it is installed (a workaround for a Windows symbol
    clash; here it costs ~190 MB of RSS and seconds of start-up). Later imports of torch still work."""
    if "tvm" in sys.modules or "tvm_ffi" in sys.modules:
        return
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    runtime.import_tvm()


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 8000, options: ServeOptions | None = None,
          log_level: str = "info") -> None:
    """Load the artifact (hashes and CPU checked), listen, and serve until SIGINT/SIGTERM. The
    address (with the port chosen when `port` is 0) is logged at INFO before the first request."""
    _import_tvm_runtime_only()
    predictor = runtime.load(path)
    app = create_app(predictor, options)
    sock = bind(host, port)
    address = sock.getsockname()
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL is bracketed
    _ACCELC_LOG.info(f"serving {predictor.manifest.name} from {path} on http://{shown}:{address[1]} ({ENDPOINTS})")
    try:
        server(app, log_level).run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C after uvicorn's graceful shutdown: a normal stop
        pass
    finally:
        sock.close()
