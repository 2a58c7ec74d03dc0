"""runtime: the predictor matches eager PyTorch, refuses inputs that do not fit the artifact's
signature with coded errors, and works in a process where torch cannot be imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from accelc.runtime import predictor as runtime
from accelc.errors import InputError
from tests.fixtures.helpers import ROOT, make_repo, pair_eager, pair_inputs, shared_artifact, write_recipe


@pytest.fixture(scope="module")
def predictor():
    return runtime.load(shared_artifact())


def input_error(call) -> InputError:
    with pytest.raises(InputError) as info:
        call()
    return info.value


@pytest.mark.parametrize("batch", [1, 3, 4, 9])  # built sizes, padded, and split above the largest
def test_outputs_match_eager_torch(predictor, batch):
    a, b = pair_inputs(batch, seed=batch)
    np.testing.assert_allclose(predictor(a, b), pair_eager(a, b), rtol=1e-5, atol=1e-6)


def test_named_inputs(predictor):
    a, b = pair_inputs(2, seed=11)
    expected = pair_eager(a, b)
    np.testing.assert_allclose(predictor(a=a, b=b), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictor(b=b, a=a), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictor(a, b=b), expected, rtol=1e-5, atol=1e-6)
    assert isinstance(predictor.predict(a, b), list) and len(predictor.predict(a, b)) == 1


TWO_OUTPUTS_RECIPE = """\
version: 1
name: two_outputs
model:
  entrypoint: tests.fixtures.models:two_outputs
  inputs:
    - {name: x, shape: [batch, 4], dtype: float32}
  batch: [2]
target: x86
verify: {samples: 1}
"""


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory):
    from accelc.compile import build
    repo = make_repo(tmp_path_factory.mktemp("two-outputs"))
    return runtime.load(build(write_recipe(repo, TWO_OUTPUTS_RECIPE), output=repo / "out").output)


@pytest.mark.parametrize("batch", [2, 3])  # a built size, and one split above it
def test_calling_a_multi_output_model_returns_its_tuple_and_predict_a_list(two_outputs, batch):
    """predictor(x) has the shape of model(x): a tuple of arrays; predict(x) is always a list."""
    import torch

    from tests.fixtures.models import two_outputs as eager_model
    x = np.random.default_rng(batch).standard_normal((batch, 4), dtype=np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in eager_model()(torch.from_numpy(x))]
    called, listed = two_outputs(x), two_outputs.predict(x)
    assert type(called) is tuple and type(listed) is list and len(called) == len(listed) == 2
    assert [o.name for o in two_outputs.outputs] == ["output0", "output1"]
    for got_called, got_listed, want in zip(called, listed, expected):
        assert got_called.shape == want.shape == (batch, *want.shape[1:])
        np.testing.assert_allclose(got_called, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got_listed, got_called)


def test_calling_a_single_output_model_returns_the_array(predictor):
    a, b = pair_inputs(2, seed=3)
    called, listed = predictor(a, b), predictor.predict(a, b)
    assert type(called) is np.ndarray and type(listed) is list and len(listed) == 1
    np.testing.assert_array_equal(listed[0], called)


def test_wrong_number_of_inputs(predictor):
    a, b = pair_inputs(2)
    assert input_error(lambda: predictor(a)).code == "E801"
    assert input_error(lambda: predictor(a, b, a)).code == "E801"


def test_unknown_missing_and_doubled_names(predictor):
    a, b = pair_inputs(2)
    exc = input_error(lambda: predictor(a=a, c=b))
    assert exc.code == "E801" and "unknown input(s) ['c']" in exc.problems[0].message
    exc = input_error(lambda: predictor(a=a))
    assert exc.code == "E801" and "missing input(s) ['b']" in exc.problems[0].message
    exc = input_error(lambda: predictor(a, a=a, b=b))
    assert exc.code == "E801" and "both by position and by name" in exc.problems[0].message


def test_wrong_dtype(predictor):
    a, b = pair_inputs(2)
    exc = input_error(lambda: predictor(a.astype(np.float64), b))
    assert exc.code == "E803" and "must be float32, got float64" in exc.problems[0].message
    assert exc.problems[0].hint == "convert with .astype(np.float32)"
    assert input_error(lambda: predictor(a, [["x"] * 3] * 2)).code == "E803"


@pytest.mark.parametrize("shape", [(2, 4), (2,), (2, 3, 1), (3, 2)])
def test_wrong_shape(predictor, shape):
    a, _ = pair_inputs(2)
    exc = input_error(lambda: predictor(a, np.zeros(shape, np.float32)))
    assert exc.code == "E802" and "input 'b'" in exc.problems[0].message


def test_empty_batch(predictor):
    a, b = pair_inputs(2)
    exc = input_error(lambda: predictor(a[:0], b[:0]))
    assert exc.code == "E802" and "empty batch" in exc.problems[0].message


def test_batch_sizes_must_agree(predictor):
    a, _ = pair_inputs(2)
    _, b = pair_inputs(3)
    assert input_error(lambda: predictor(a, b)).code == "E802"


def test_exact_batching_refuses_sizes_that_were_not_built():
    strict = runtime.load(shared_artifact(), batching="exact")
    a, b = pair_inputs(4)
    np.testing.assert_allclose(strict(a, b), pair_eager(a, b), rtol=1e-5, atol=1e-6)
    for batch in (2, 5):  # between built sizes, and above the largest
        exc = input_error(lambda: strict(*pair_inputs(batch)))
        assert exc.code == "E802" and "was not built" in exc.problems[0].message
    assert input_error(lambda: runtime.load(shared_artifact(), batching="sometimes")).code == "E804"


TORCH_FREE = textwrap.dedent("""\
    import json, sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import numpy as np
    import accelc.runtime.predictor
    predictor = accelc.runtime.predictor.load(sys.argv[1])
    data = np.load(sys.argv[2])
    np.save(sys.argv[3], predictor(a=data["a"], b=data["b"]))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "accelc") and sys.modules[m] is not None)
    libraries = sorted({line.split()[-1].rsplit("/", 1)[-1] for line in open("/proc/self/maps") if "libtvm" in line})
    print(json.dumps({"modules": loaded, "libraries": libraries}))
    """)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
def test_runs_without_torch_on_the_runtime_library(tmp_path):
    a, b = pair_inputs(4, seed=5)
    np.savez(tmp_path / "inputs.npz", a=a, b=b)
    np.save(tmp_path / "expected.npy", pair_eager(a, b))  # eager outputs, computed here with torch
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", TORCH_FREE, str(shared_artifact()), str(tmp_path / "inputs.npz"),
                           str(tmp_path / "out.npy")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    modules = report["modules"]
    assert "libtvm_runtime.so" in report["libraries"] and "libtvm.so" not in report["libraries"]
    assert "accelc.runtime.predictor" in modules and not [m for m in modules if m.startswith("torch")]
    assert not {"accelc.capture.export", "accelc.compile", "accelc.passes", "accelc.backends"} & set(modules)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), np.load(tmp_path / "expected.npy"),
                               rtol=1e-5, atol=1e-6)
