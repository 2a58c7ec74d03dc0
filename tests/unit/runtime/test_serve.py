"""`accelc serve` over a real socket: uvicorn on 127.0.0.1 with an ephemeral port, real HTTP requests
(httpx), answers checked against eager PyTorch; every bad request is a coded 4xx, never a 500."""
from __future__ import annotations

import json
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from accelc.runtime import server as serve
from accelc.errors import InputError  # noqa: E402
from accelc.runtime.server import ServeOptions, bind  # noqa: E402
from tests.fixtures.helpers import ROOT, assert_cli_user_error, pair_eager, pair_inputs, shared_artifact  # noqa: E402
from tests.fixtures.servers import half_request, live  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=30) as http:
        yield http


def post(client, body) -> httpx.Response:
    return client.post("/predict", content=body if isinstance(body, bytes) else json.dumps(body).encode())


def outputs(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()
    assert list(data) == ["outputs"] and list(data["outputs"]) == ["output0"]
    return np.array([[math.nan if v is None else v for v in row] for row in data["outputs"]["output0"]], np.float32)


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error["message"]


# ---- good requests ------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 2, 4, 7])  # built sizes, padded, and split above the largest
def test_predictions_match_eager_by_name_and_by_position(client, batch):
    a, b = pair_inputs(batch, seed=batch)
    expected = pair_eager(a, b)
    by_name = outputs(post(client, {"inputs": {"b": b.tolist(), "a": a.tolist()}}))
    by_position = outputs(post(client, {"inputs": [a.tolist(), b.tolist()]}))
    np.testing.assert_allclose(by_name, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(by_position, by_name)


def test_integers_are_accepted_for_float_inputs(client):
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), -np.arange(6, dtype=np.float32).reshape(2, 3)
    got = outputs(post(client, b'{"inputs": {"a": [[0, 1, 2], [3, 4, 5]], "b": [[0, -1, -2], [-3, -4, -5]]}}'))
    np.testing.assert_allclose(got, pair_eager(a, b), rtol=RTOL, atol=ATOL)


def test_nan_is_accepted_by_default_and_comes_back_as_null(client):
    """edu_churn takes NaN (= missing) by design: null and the NaN literal are NaN; NaN outputs are null."""
    a, b = pair_inputs(2, seed=3)
    a[0, 1] = b[1, 2] = np.nan
    body = json.dumps({"inputs": {"a": a.tolist(), "b": b.tolist()}}).encode()  # writes the NaN literal
    assert b"NaN" in body
    expected = pair_eager(a, b)
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    np.testing.assert_allclose(outputs(post(client, body)), expected, rtol=RTOL, atol=ATOL)
    as_null = body.replace(b"NaN", b"null")
    np.testing.assert_allclose(outputs(post(client, as_null)), expected, rtol=RTOL, atol=ATOL)
    assert "NaN" not in post(client, as_null).text  # strict JSON out


def test_health_and_metadata(client, predictor):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["name"] == "pair"
    meta = client.get("/metadata").json()
    manifest = json.loads((predictor.path / "manifest.json").read_text())  # as written: metadata repeats it
    assert meta["name"] == "pair" and meta["target"] == {k: manifest["target"][k] for k in ("name", "device", "arch",
                                                                                          "cpu_features")}
    assert meta["inputs"] == manifest["inputs"] and meta["outputs"] == manifest["outputs"]
    assert meta["batch_sizes"] == [1, 4]
    assert meta["verification"] == {"verified": True, "status": "passed"}
    assert meta["versions"] == manifest["versions"] and meta["recipe_sha256"] == manifest["recipe"]["sha256"]
    assert meta["serving"]["max_batch_rows"] == 16 and meta["serving"]["micro_batching"] is False


def test_concurrent_requests_from_8_threads(url):
    requests = [[pair_inputs(1 + (t + i) % 5, seed=100 * t + i) for i in range(10)] for t in range(8)]
    expected = [[pair_eager(a, b) for a, b in thread] for thread in requests]  # eager is not thread-safe (seeding)

    def worker(thread: list) -> list[np.ndarray]:
        with httpx.Client(base_url=url, timeout=30) as http:
            return [outputs(post(http, {"inputs": {"a": a.tolist(), "b": b.tolist()}})) for a, b in thread]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(worker, requests))
    for got_thread, expected_thread in zip(answers, expected):
        for got, want in zip(got_thread, expected_thread):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# ---- bad requests -------------------------------------------------------------------------------

ROW = [0.5, 1.5, 2.5]
BAD = [  # (body, status, code)
    (b"not json", 400, "E810"),
    (b"", 400, "E810"),
    (b"\xff\xfe\x00garbage", 400, "E810"),
    (b"[" * 30_000, 400, "E810"),  # nested too deeply for the parser
    (b"[1, 2]", 400, "E811"),
    ({"input": {"a": [ROW], "b": [ROW]}}, 400, "E811"),
    ({"inputs": {"a": [ROW], "b": [ROW]}, "extra": 1}, 400, "E811"),
    ({"inputs": "a,b"}, 400, "E811"),
    ({"inputs": {"a": [ROW]}}, 422, "E801"),
    ({"inputs": {"a": [ROW], "b": [ROW], "c": [ROW]}}, 422, "E801"),
    ({"inputs": [[ROW]]}, 422, "E801"),
    ({"inputs": {"a": [["x", "y", "z"]], "b": [ROW]}}, 422, "E803"),
    ({"inputs": {"a": [[True, False, True]], "b": [ROW]}}, 422, "E803"),
    ({"inputs": {"a": [[1.0, {"v": 2}, 3.0]], "b": [ROW]}}, 422, "E803"),
    ({"inputs": {"a": [[1.0, "2", None]], "b": [ROW]}}, 422, "E803"),
    (b'{"inputs": {"a": [[1, 2, 1' + b"0" * 400 + b']], "b": [[1, 2, 3]]}}', 422, "E803"),  # beyond float64
    ({"inputs": {"a": [ROW, [1.0, 2.0]], "b": [ROW, ROW]}}, 422, "E802"),  # ragged
    ({"inputs": {"a": [ROW, 1.0], "b": [ROW, ROW]}}, 422, "E802"),
    ({"inputs": {"a": [[1.0, 2.0]], "b": [[1.0, 2.0]]}}, 422, "E802"),
    ({"inputs": {"a": ROW, "b": ROW}}, 422, "E802"),
    ({"inputs": {"a": 1.0, "b": 2.0}}, 422, "E802"),
    ({"inputs": {"a": [], "b": []}}, 422, "E802"),
    ({"inputs": {"a": [ROW], "b": [ROW, ROW]}}, 422, "E802"),
    ({"inputs": {"a": [ROW] * 17, "b": [ROW] * 17}}, 413, "E807"),  # over --max-batch-rows
]


@pytest.mark.parametrize("body,status,code", BAD, ids=[f"{i}-{c}" for i, (_, _, c) in enumerate(BAD)])
def test_bad_requests_get_a_coded_4xx(client, body, status, code):
    assert_error(post(client, body), status, code)


def test_the_server_is_healthy_after_bad_requests(client):
    for body, _, _ in BAD:
        post(client, body)
    a, b = pair_inputs(1)
    np.testing.assert_allclose(outputs(post(client, {"inputs": [a.tolist(), b.tolist()]})), pair_eager(a, b),
                               rtol=RTOL, atol=ATOL)


def test_bodies_over_the_limit_get_413_declared_or_streamed(client):
    big = b'{"inputs": {"a": [' + b"1.0," * 20_000 + b'1.0]}}'  # > 64 KiB
    assert "bytes" in assert_error(post(client, big), 413, "E812")

    def chunks():  # no Content-Length: the limit applies to the bytes received
        for start in range(0, len(big), 4096):
            yield big[start:start + 4096]

    response = client.post("/predict", content=chunks())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_error(response, 413, "E812")


def test_unknown_paths_and_methods_are_json_errors(client):
    assert "POST /predict" in assert_error(client.get("/nope"), 404, "E813")
    assert_error(client.get("/predict"), 405, "E813")
    assert_error(client.post("/health"), 405, "E813")


@pytest.mark.parametrize("value", ["null", "NaN", "Infinity", "-Infinity", "1e39"])  # 1e39: inf in float32
def test_reject_nonfinite(predictor, value):
    with live(predictor, reject_nonfinite=True) as base, httpx.Client(base_url=base, timeout=30) as http:
        body = f'{{"inputs": {{"a": [[0.5, {value}, 1.0]], "b": [[1, 2, 3]]}}}}'.encode()
        assert "flat index 1" in assert_error(post(http, body), 422, "E806")
        assert outputs(post(http, body.replace(value.encode(), b"2.0"))).shape == (1, 3)
        assert http.get("/metadata").json()["serving"]["nonfinite"] == "rejected"


def test_bad_options_and_ports_are_coded_errors(predictor):
    for options in ({"micro_batch_ms": -1}, {"micro_batch_ms": math.nan}, {"threads": 0}, {"max_body_bytes": 0},
                    {"body_timeout_s": 0}, {"body_timeout_s": math.nan}, {"body_timeout_s": math.inf}):
        with pytest.raises(InputError) as info:
            ServeOptions(**options)
        assert info.value.code == "E804"
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(InputError) as info:
            bind("127.0.0.1", taken.getsockname()[1])
        assert info.value.code == "E814"
    finally:
        taken.close()


def test_cli_errors(capsys, tmp_path):
    shared_artifact()  # imports the full TVM first: `serve` would otherwise pick the runtime-only library
    assert_cli_user_error(["serve", tmp_path / "missing"], capsys, "E700")
    assert_cli_user_error(["serve", shared_artifact(), "--micro-batch-ms", "-5"], capsys, "E804")
    assert_cli_user_error(["serve", shared_artifact(), "--port", "70000"], capsys, "E814")
    assert_cli_user_error(["serve", shared_artifact(), "--body-timeout", "-1"], capsys, "E804")


# ---- clients that stall or go away mid-body -----------------------------------------------------

@contextmanager
def server_log():
    """The lines the server logs meanwhile (uvicorn's loggers and the root), tracebacks included."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.extend(self.format(record).splitlines())

    handler, loggers = Collect(), [logging.getLogger("uvicorn"), logging.getLogger()]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield lines
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def read_until_closed(conn: socket.socket) -> bytes:
    received = b""
    while chunk := conn.recv(4096):
        received += chunk
    return received


def assert_still_serving(base: str) -> None:
    a, b = pair_inputs(2, seed=4)
    with httpx.Client(base_url=base, timeout=30) as http:
        np.testing.assert_allclose(outputs(post(http, {"inputs": [a.tolist(), b.tolist()]})), pair_eager(a, b),
                                   rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("clock", ["asyncio.timeout", "wait_for"])  # Python 3.11+, and 3.10's way
def test_a_stalled_body_gets_408_and_the_connection_is_closed(predictor, clock, monkeypatch):
    if clock == "wait_for":
        monkeypatch.setattr(serve, "ASYNCIO_TIMEOUT", False)
    elif not serve.ASYNCIO_TIMEOUT:
        pytest.skip("Python 3.10 has no asyncio.timeout")
    with live(predictor, body_timeout_s=0.5) as base:
        conn = half_request(base, b'{"inputs":')
        start = time.monotonic()
        with conn:
            answer = read_until_closed(conn)  # returns once the server closes the connection
        took = time.monotonic() - start
        assert 0.4 <= took < 5, took
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
        error = json.loads(body)["error"]
        assert error["code"] == "E815" and "10 received of 1000" in error["message"], error
        assert_still_serving(base)


def test_a_client_gone_mid_body_is_one_log_line(predictor):
    with live(predictor, log_level="info") as base, server_log() as lines:
        half_request(base, b'{"inputs": [' + b"1.0, " * 100).close()
        deadline = time.monotonic() + 10
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert_still_serving(base)  # (the access log is off at info: this request logs nothing)
        time.sleep(0.2)  # whatever else the disconnect logs has arrived
        assert len(lines) == 1 and "closed the connection before sending the whole body" in lines[0], lines


# ---- micro-batching -----------------------------------------------------------------------------

def concurrently(url: str, requests: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Send every request at once, one thread and connection each; the answers in order."""
    def one(pair):
        with httpx.Client(base_url=url, timeout=60) as http:
            return outputs(post(http, {"inputs": {"a": pair[0].tolist(), "b": pair[1].tolist()}}))

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def counters(url: str) -> tuple[int, int]:
    health = httpx.get(f"{url}/health", timeout=30).json()
    return health["requests"], health["predictor_calls"]


@pytest.mark.parametrize("rows", [[1, 1, 1, 1], [1, 3], [2, 2]])
def test_micro_batching_merges_requests_into_one_call(predictor, rows):
    """A 10 s window never expires here: the batch is flushed when it holds 4 rows (the largest built
    size), so the requests are merged whatever the machine's speed."""
    with live(predictor, micro_batch_ms=10_000) as base:
        requests = [pair_inputs(n, seed=10 + i) for i, n in enumerate(rows)]
        answers = concurrently(base, requests)
        for (a, b), got in zip(requests, answers):
            np.testing.assert_allclose(got, pair_eager(a, b), rtol=RTOL, atol=ATOL)
        assert counters(base) == (len(rows), 1)


def test_micro_batching_under_concurrent_load_gives_the_same_answers(predictor):
    with live(predictor, micro_batch_ms=20, max_batch_rows=8) as base:
        requests = [pair_inputs(1 + i % 3 if i % 7 else 6, seed=200 + i) for i in range(24)]  # 6 rows: alone
        answers = concurrently(base, requests)
        for (a, b), got in zip(requests, answers):
            np.testing.assert_allclose(got, pair_eager(a, b), rtol=RTOL, atol=ATOL)
        received, calls = counters(base)
        assert received == 24 and 1 <= calls <= 24
        assert httpx.get(f"{base}/metadata", timeout=30).json()["serving"]["micro_batching"] is True


class RangeChecked:
    """The shared artifact, with a value check the HTTP decoder does not know about (as an integer
    input's range is checked by the predictor only): a = 999 is refused with E805."""

    def __init__(self, inner):
        self.inner = inner
        self.inputs, self.outputs, self.sizes, self.manifest = inner.inputs, inner.outputs, inner.sizes, inner.manifest

    def predict(self, a, b):
        if (a == 999).any():
            raise InputError("input 'a': 999 is out of range", code="E805")
        return self.inner.predict(a, b)


def test_one_bad_request_does_not_spoil_a_micro_batch(predictor):
    with live(RangeChecked(predictor), micro_batch_ms=10_000) as base:
        good = [pair_inputs(1, seed=s) for s in (1, 2, 3)]
        bad_a = np.full((1, 3), 999, np.float32)

        def send(body):
            with httpx.Client(base_url=base, timeout=60) as http:
                return post(http, body)

        bodies = [{"inputs": {"a": a.tolist(), "b": b.tolist()}} for a, b in good]
        bodies.insert(1, {"inputs": {"a": bad_a.tolist(), "b": bad_a.tolist()}})
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(send, bodies))
        assert_error(responses.pop(1), 422, "E805")
        for (a, b), response in zip(good, responses):
            np.testing.assert_allclose(outputs(response), pair_eager(a, b), rtol=RTOL, atol=ATOL)
        assert counters(base) == (4, 3)  # the merged call failed; the three good ones ran alone


# ---- runtime-only: the CLI server in a process where torch cannot be imported -------------------

TORCH_FREE_SERVER = textwrap.dedent("""\
    import json, signal, sys
    if sys.argv[2] == "blocked":
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
    signal.signal(signal.SIGTERM, lambda *_: None)  # uvicorn stops gracefully, then re-raises: ignore that
    from accelc.cli.main import main
    code = main(["serve", sys.argv[1], "--port", "0", "--micro-batch-ms", "1"])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "accelc") and sys.modules[m] is not None)
    libraries = sorted({line.split()[-1].rsplit("/", 1)[-1] for line in open("/proc/self/maps") if "libtvm" in line})
    print(json.dumps({"code": code, "modules": loaded, "libraries": libraries}), flush=True)
    """)


def wait_for_line(process: subprocess.Popen, needle: str, timeout: float) -> str:
    """The first stderr line (where the CLI logs) containing `needle`, read with a deadline (never
    blocks forever). Read from the descriptor: a buffered readline could hold the line unseen by select."""
    deadline, fd, seen = time.monotonic() + timeout, process.stderr.fileno(), b""
    while time.monotonic() < deadline and process.poll() is None:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            seen += os.read(fd, 1 << 16)
            for line in seen.decode(errors="replace").splitlines():
                if needle in line:
                    return line
    raise AssertionError(f"no line with {needle!r} within {timeout} s (exit code {process.poll()})")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
@pytest.mark.parametrize("torch_state", ["blocked", "installed"])
def test_cli_server_runs_without_torch_on_the_runtime_library(torch_state):
    """blocked: torch cannot be imported at all. installed: it can, but the server (and tvm_ffi, which
    imports torch when it finds it) leaves it alone, and picks the runtime-only TVM library unasked."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TVM_USE_RUNTIME_LIB", None)
    if torch_state == "blocked":
        env["TVM_USE_RUNTIME_LIB"] = "1"
    process = subprocess.Popen([sys.executable, "-c", TORCH_FREE_SERVER, str(shared_artifact()), torch_state],
                               env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = wait_for_line(process, "serving pair", timeout=120)
        base = line.split(" on ")[1].split()[0]
        assert base.startswith("http://127.0.0.1:")
        a, b = pair_inputs(3, seed=9)
        with httpx.Client(base_url=base, timeout=30) as http:
            np.testing.assert_allclose(outputs(post(http, {"inputs": {"a": a.tolist(), "b": b.tolist()}})),
                                       pair_eager(a, b), rtol=RTOL, atol=ATOL)
            assert_error(post(http, b"{"), 400, "E810")
            assert http.get("/metadata").json()["name"] == "pair"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["code"] == 0 and "Traceback" not in err
    modules = report["modules"]
    assert "accelc.runtime.server" in modules and not [m for m in modules if m.startswith("torch")]
    assert not {"accelc.capture.export", "accelc.compile", "accelc.passes", "accelc.backends"} & set(modules)
    assert "libtvm_runtime.so" in report["libraries"] and "libtvm.so" not in report["libraries"]


@pytest.mark.parametrize("missing", ["starlette", "uvicorn", "prometheus_client"])
def test_without_the_serve_extra_the_cli_gives_one_coded_error(missing):
    """The runtime alone does not need the server libraries; `accelc serve` without them is E510."""
    code = (f"import sys; sys.modules[{missing!r}] = None; from accelc.cli.main import main; "
            f"sys.exit(main(['serve', {str(shared_artifact())!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error[E510]" in done.stderr and missing in done.stderr, done.stderr
    assert "pip install 'accelc[serve]'" in done.stderr and "Traceback" not in done.stderr
