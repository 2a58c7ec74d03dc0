"""`accelc serve`'s KServe v2 endpoints and /metrics over a real socket (uvicorn on 127.0.0.1): a stock
protocol client (tritonclient.http) gets the predictor's answers and the protocol's errors; the
Prometheus text at /metrics, parsed with prometheus_client's own parser, counts exactly what was sent."""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
triton = pytest.importorskip("tritonclient.http")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import accelc  # noqa: E402
from tests.fixtures.helpers import pair_inputs  # noqa: E402
from tests.fixtures.servers import LIMITS, half_request, live  # noqa: E402

INFER = "/v2/models/pair/infer"


@pytest.fixture(scope="module")
def client(url):
    stock = triton.InferenceServerClient(url.removeprefix("http://"))
    yield stock
    stock.close()


@pytest.fixture(scope="module")
def http(url):
    with httpx.Client(base_url=url, timeout=30) as raw:
        yield raw


def tensors(a: np.ndarray, b: np.ndarray, datatype: str = "FP32", binary: bool = False) -> list:
    inputs = [triton.InferInput("a", list(a.shape), datatype), triton.InferInput("b", list(b.shape), datatype)]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs


def body(a, b, **extra) -> dict:
    """A raw v2 request: flat row-major data, as the protocol sends it."""
    return {"inputs": [{"name": n, "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
                       for n, x in (("a", a), ("b", b))], **extra}


def protocol_error(response: httpx.Response, status: int, code: str) -> str:
    """The protocol's error shape, {"error": "E8xx: message"}, with the status; returns the message."""
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()
    assert list(error) == ["error"] and error["error"].startswith(f"{code}: "), error
    return error["error"]


def refused(call, status: str, code: str) -> str:
    """tritonclient raises the server's error; returns its message."""
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == status and info.value.message().startswith(f"{code}: "), info.value
    return info.value.message()


# ---- health and metadata ------------------------------------------------------------------------

def test_server_and_model_are_live_and_ready(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("pair") and client.is_model_ready("pair", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("pair", "2")
    meta = client.get_server_metadata()
    assert meta["name"] == "accelc" and meta["version"] == accelc.__version__ and meta["extensions"] == []


def test_model_metadata_names_datatypes_and_shapes(client, predictor):
    meta = client.get_model_metadata("pair")
    assert meta == client.get_model_metadata("pair", "1")
    assert meta["name"] == "pair" and meta["versions"] == ["1"] and meta["platform"] == "accelc"
    assert meta["inputs"] == [{"name": "a", "datatype": "FP32", "shape": [-1, 3]},
                              {"name": "b", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": spec.name, "datatype": "FP32",
                                "shape": [-1 if d == "batch" else d for d in spec.shape]}
                               for spec in predictor.outputs]
    assert meta["outputs"][0]["name"] == "output0" and meta["outputs"][0]["shape"][0] == -1


def test_unknown_model_is_404(client, http):
    assert "'pear'" in refused(lambda: client.get_model_metadata("pear"), "404", "E813")
    assert "version '2'" in refused(lambda: client.get_model_metadata("pair", "2"), "404", "E813")
    a, b = pair_inputs(1)
    assert "did you mean 'pair'" in refused(lambda: client.infer("pear", tensors(a, b)), "404", "E813")
    protocol_error(http.post("/v2/models/pear/infer", json=body(a, b)), 404, "E813")
    assert "/v2/nope" in protocol_error(http.get("/v2/nope"), 404, "E813")  # v2 paths: v2's error shape


# ---- inference ----------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 3, 4, 7])  # built sizes, padded, and split above the largest
def test_infer_gives_the_runtime_answer_with_named_outputs(client, predictor, batch):
    a, b = pair_inputs(batch, seed=batch)
    expected = predictor.predict(a, b)[0]
    wanted = [triton.InferRequestedOutput("output0", binary_data=False)]
    result = client.infer("pair", tensors(a, b), outputs=wanted, request_id=f"req-{batch}")
    response = result.get_response()
    assert response["id"] == f"req-{batch}" and response["model_name"] == "pair"
    assert [(o["name"], o["datatype"], o["shape"]) for o in response["outputs"]] == [
        ("output0", "FP32", list(expected.shape))]
    np.testing.assert_array_equal(result.as_numpy("output0"), expected)
    # tritonclient's default (no outputs named) asks for binary outputs: answered in JSON, read alike
    np.testing.assert_array_equal(client.infer("pair", tensors(a, b)).as_numpy("output0"), expected)


def test_nested_data_names_in_any_order_and_nan(http, predictor):
    a, b = pair_inputs(2, seed=5)
    a[1, 0] = np.nan
    expected = predictor.predict(a, b)[0]
    request = body(a, b, id="nested")
    request["inputs"] = request["inputs"][::-1]  # by name, not position
    request["inputs"][0]["data"] = b.tolist()  # nested lists, as the spec allows
    got = http.post(INFER, content=json.dumps(request).encode())  # NaN literal; null works as well
    assert got.status_code == 200, got.text
    answer = got.json()
    assert answer["id"] == "nested" and "NaN" not in got.text
    output = answer["outputs"][0]
    data = np.array([math.nan if v is None else v for v in output["data"]], np.float32).reshape(output["shape"])
    np.testing.assert_array_equal(data, expected)
    assert np.isnan(expected).any() and not np.isnan(expected[0]).any()  # NaN in, null out, NaN back


# ---- the protocol's errors ----------------------------------------------------------------------

def test_wrong_datatype_is_400_naming_it(client, http):
    a, b = pair_inputs(2)
    message = refused(lambda: client.infer("pair", tensors(a.astype(np.int64), b.astype(np.int64), "INT64")),
                      "400", "E803")
    assert "'a'" in message and "FP32" in message and "INT64" in message
    request = body(a, b)
    request["inputs"][1]["datatype"] = "FP23"
    message = protocol_error(http.post(INFER, json=request), 400, "E803")
    assert "unknown datatype 'FP23'" in message and "FP32" in message


def test_wrong_shape_is_400_naming_it(client, http):
    a, b = np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32)
    message = refused(lambda: client.infer("pair", tensors(a, b)), "400", "E802")
    assert "'a'" in message and "shape" in message and "[2, 4]" in message
    request = body(*pair_inputs(2))
    request["inputs"][0]["shape"] = [3, 3]  # 9 elements declared, 6 sent
    assert "holds 9 element(s)" in protocol_error(http.post(INFER, json=request), 400, "E802")


BAD = [  # (change to a good 1-row request, status, code, words in the message)
    (lambda r: r.update(inputs=r["inputs"][:1]), 400, "E801", "missing input"),
    (lambda r: r["inputs"].append(dict(r["inputs"][0])), 400, "E801", "given twice"),
    (lambda r: r["inputs"][0].update(name="c"), 400, "E801", "unknown input 'c'"),
    (lambda r: r.update(outputs=[{"name": "out"}]), 400, "E801", "unknown output 'out'"),
    (lambda r: r["inputs"][0].update(data=["x", "y", "z"]), 400, "E803", "strings"),
    (lambda r: r["inputs"][0].update(data=[[1.0], [2.0, 3.0]]), 400, "E802", "rectangular"),
    (lambda r: r["inputs"][0].update(shape=[1, -3]), 400, "E802", "non-negative"),
    (lambda r: r["inputs"][0].pop("datatype"), 400, "E811", '"datatype"'),
    (lambda r: r["inputs"][0].update(parameters={"binary_data_size": 12}), 400, "E811", "binary"),
    (lambda r: r.update(id=7), 400, "E811", '"id"'),
    (lambda r: r.update(extra=1), 400, "E811", "the body must be"),
    (lambda r: [t.update(shape=[17, 3], data=[0.5] * 51) for t in r["inputs"]], 413, "E807", "17 rows"),
]


@pytest.mark.parametrize("change,status,code,words", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_the_protocols_error(http, change, status, code, words):
    request = body(*pair_inputs(1))
    change(request)
    assert words in protocol_error(http.post(INFER, json=request), status, code)


def test_bad_bodies_and_binary_data(client, http):
    assert "not valid JSON" in protocol_error(http.post(INFER, content=b"{"), 400, "E810")
    a, b = pair_inputs(1)
    assert "binary" in refused(lambda: client.infer("pair", tensors(a, b, binary=True)), "400", "E811")
    assert client.infer("pair", tensors(a, b)).as_numpy("output0").shape == (1, 3)  # still serving


# ---- micro-batching: v2 and /predict requests share the batcher ----------------------------------

def test_v2_and_json_requests_are_merged_into_one_call(predictor):
    """A 10 s window never expires here: the batch is flushed at 4 rows, the largest built size."""
    with live(predictor, micro_batch_ms=10_000) as base:
        pairs = [pair_inputs(1, seed=30 + i) for i in range(4)]

        def send(i):
            a, b = pairs[i]
            with httpx.Client(base_url=base, timeout=60) as raw:
                if i % 2:
                    got = raw.post("/predict", json={"inputs": {"a": a.tolist(), "b": b.tolist()}}).json()
                    return np.array(got["outputs"]["output0"], np.float32)
                output = raw.post(INFER, json=body(a, b)).json()["outputs"][0]
                return np.array(output["data"], np.float32).reshape(output["shape"])

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(send, range(4)))
        for (a, b), got in zip(pairs, answers):
            np.testing.assert_allclose(got, predictor.predict(a, b)[0], rtol=1e-6, atol=1e-7)
        health = httpx.get(f"{base}/health", timeout=30).json()
        assert (health["requests"], health["predictor_calls"]) == (4, 1)
        rows = scrape(base)
        assert rows[("accelc_batch_rows_count", ())] == 1 and rows[("accelc_batch_rows_sum", ())] == 4


# ---- metrics ------------------------------------------------------------------------------------

def scrape(base: str) -> dict:
    """{(sample name, sorted label pairs): value} from GET /metrics, parsed by prometheus_client."""
    response = httpx.get(f"{base}/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_exactly_what_was_sent(predictor, url, http):
    """A second app in this process (the module's server has already counted requests): its own
    registry starts at zero."""
    with live(predictor, **LIMITS) as base, httpx.Client(base_url=base, timeout=30) as raw:
        before = scrape(base)
        assert not [k for k in before if k[0] == "accelc_requests_total"]
        assert value(before, "accelc_requests_in_flight") == 0
        rows = [1, 2, 3]
        for n in rows:
            assert raw.post(INFER, json=body(*pair_inputs(n))).status_code == 200
        for n in (4, 1):
            a, b = pair_inputs(n)
            assert raw.post("/predict", json={"inputs": [a.tolist(), b.tolist()]}).status_code == 200
        request = body(*pair_inputs(1))
        request["inputs"][0]["datatype"] = "INT64"
        protocol_error(raw.post(INFER, json=request), 400, "E803")
        protocol_error(raw.post("/v2/models/pear/infer", json=body(*pair_inputs(1))), 404, "E813")
        assert raw.post("/predict", json={"inputs": [[[1.0]], [[2.0]]]}).status_code == 422  # E802
        assert raw.get("/nope").status_code == 404
        assert raw.get("/v2/health/ready").status_code == 200
        after = scrape(base)

    infer, predict = "/v2/models/{name}/infer", "/predict"
    counts = {labels: n for (name, labels), n in after.items() if name == "accelc_requests_total"}
    assert counts == {
        (("code", ""), ("endpoint", infer), ("status", "2xx")): 3,
        (("code", "E803"), ("endpoint", infer), ("status", "4xx")): 1,
        (("code", "E813"), ("endpoint", infer), ("status", "4xx")): 1,
        (("code", ""), ("endpoint", predict), ("status", "2xx")): 2,
        (("code", "E802"), ("endpoint", predict), ("status", "4xx")): 1,
        (("code", "E813"), ("endpoint", "unmatched"), ("status", "4xx")): 1,
        (("code", ""), ("endpoint", "/v2/health/ready"), ("status", "2xx")): 1,
    }, counts  # /metrics does not count itself
    for endpoint, sent in ((infer, 5), (predict, 3), ("/v2/health/ready", 1)):
        assert value(after, "accelc_request_duration_seconds_count", endpoint=endpoint) == sent
        assert value(after, "accelc_request_duration_seconds_bucket", endpoint=endpoint, le="+Inf") == sent
        assert value(after, "accelc_request_duration_seconds_sum", endpoint=endpoint) > 0
    calls = [*rows, 4, 1]  # one predictor call per good request (no micro-batching)
    assert value(after, "accelc_batch_rows_count") == len(calls)
    assert value(after, "accelc_batch_rows_sum") == sum(calls)
    for le in (1, 2, 4, 8, 16):
        assert value(after, "accelc_batch_rows_bucket", le=f"{float(le)}") == sum(n <= le for n in calls)
    assert value(after, "accelc_requests_in_flight") == 0
    info = next(labels for (name, labels), n in after.items() if name == "accelc_model_info" and n == 1)
    assert dict(info) == {"name": "pair", "target": "x86", "device": "cpu", "built_by_accelc": accelc.__version__,
                          "accelc_version": accelc.__version__}


def test_in_flight_counts_a_request_until_it_is_answered(predictor):
    with live(predictor, body_timeout_s=30) as base:
        conn = half_request(base, b'{"inputs":')  # declares 1000 bytes, sends 10: the server waits
        try:
            deadline = time.monotonic() + 10
            while value(scrape(base), "accelc_requests_in_flight") != 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert value(scrape(base), "accelc_requests_in_flight") == 1
        finally:
            conn.close()  # the client goes away mid-body: answered (to nobody) and counted
        deadline = time.monotonic() + 10
        while value(scrape(base), "accelc_requests_in_flight") != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        samples = scrape(base)
        assert value(samples, "accelc_requests_in_flight") == 0
        assert value(samples, "accelc_requests_total", endpoint="/predict", status="4xx", code="") == 1
