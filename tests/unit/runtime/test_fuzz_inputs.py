"""Hostile runtime input, fuzzed: arrays of any dtype, shape and value (NaN, infinities) given to the
predictor, and any body given to the HTTP service, get an answer or one coded 4xx-class error;
never another exception. NaN and infinities are refused when the predictor or server is told to."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from accelc.runtime import predictor as runtime
from accelc.errors import InputError
from tests.fixtures.helpers import pair_eager, pair_inputs, shared_artifact

pytest.importorskip("starlette")
from accelc.runtime.server import STATUS, ServeOptions, Service  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex64]


@pytest.fixture(scope="module")
def predictor():
    return runtime.load(shared_artifact())


@pytest.fixture(scope="module")
def strict():
    return runtime.load(shared_artifact(), reject_nonfinite=True)


arrays = st.sampled_from(DTYPES).flatmap(lambda dtype: hnp.arrays(
    dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    elements=hnp.from_dtype(np.dtype(dtype), allow_nan=True, allow_infinity=True)
    if np.dtype(dtype).kind in "fc" else None))
almost = st.integers(0, 6).flatmap(lambda n: st.tuples(  # shape-right float32 pairs with hostile values
    *[hnp.arrays(np.float32, (n, 3), elements=st.floats(width=32)) for _ in range(2)]))


def outcome(call) -> str:
    try:
        outputs = call()
    except InputError as exc:
        assert exc.code in ("E801", "E802", "E803", "E804", "E805", "E806", "E807") and exc.problems[0].message
        return exc.code
    assert all(isinstance(o, np.ndarray) for o in outputs)
    return "ok"


@FUZZ
@given(st.lists(arrays, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "c"]), arrays, max_size=2))
def test_fuzzed_arrays_predict_or_fail_with_a_coded_input_error(predictor, args, kwargs):
    outcome(lambda: predictor.predict(*args, **kwargs))


@FUZZ
@given(almost)
def test_hostile_values_are_refused_only_when_non_finite_is_rejected(predictor, strict, pair):
    a, b = pair
    finite = np.isfinite(a).all() and np.isfinite(b).all()
    got = outcome(lambda: strict.predict(a, b))
    assert got == ("E802" if len(a) == 0 else "ok" if finite else "E806")
    assert outcome(lambda: predictor.predict(a, b)) == ("E802" if len(a) == 0 else "ok")  # default: accepted


def test_reject_nonfinite_names_the_first_bad_value(strict):
    a, b = pair_inputs(2)
    b[1, 2] = -np.inf
    with pytest.raises(InputError) as info:
        strict(a, b)
    assert info.value.code == "E806" and "input 'b'" in str(info.value) and "flat index 5" in str(info.value)
    np.testing.assert_allclose(strict(*pair_inputs(2)), pair_eager(*pair_inputs(2)), rtol=1e-5, atol=1e-6)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=40)
bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"inputs": json_values}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"inputs": st.fixed_dictionaries({"a": json_values, "b": json_values})}).map(
        lambda v: json.dumps(v).encode()),
    almost.map(lambda p: json.dumps({"inputs": [x.tolist() for x in p]}).encode()))


@pytest.fixture(scope="module")
def service(predictor):
    service = Service(predictor, ServeOptions(max_batch_rows=4, threads=1, reject_nonfinite=True))
    yield service
    service.close()


@FUZZ
@given(bodies)
def test_fuzzed_http_bodies_get_an_answer_or_a_coded_4xx(service, body):
    response = service.answer(body)
    payload = json.loads(response.body)
    if response.status_code == 200:
        assert set(payload) == {"outputs"}
        assert all(v is None or math.isfinite(v) for v in np.ravel(np.array(payload["outputs"]["output0"],
                                                                              dtype=object)))
    else:
        code = payload["error"]["code"]
        assert 400 <= response.status_code < 500 and response.status_code == STATUS.get(code, 422), payload
