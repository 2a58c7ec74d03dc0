"""The lean call path: zero-copy where possible, one copy otherwise, padding and splitting,
and one predictor shared by many threads."""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from accelc.runtime import predictor as runtime
from accelc.errors import InputError
from tests.fixtures.helpers import pair_eager, pair_inputs, shared_artifact


@pytest.fixture(scope="module")
def predictor():
    return runtime.load(shared_artifact())


def test_aligned_input_is_passed_zero_copy(predictor):
    array = runtime.aligned_empty((4, 3), np.float32)
    array[:] = 1.5
    tensor = predictor._device_tensor(0, array)
    assert np.from_dlpack(tensor).ctypes.data == array.ctypes.data  # the same buffer, no copy


def test_input_the_kernels_take_unaligned_is_passed_in_place(predictor):
    raw = np.zeros(4 * 3 + 1, np.float32)
    array = raw[1:].reshape(4, 3)  # 4-byte offset: never 64-byte aligned
    assert array.ctypes.data % runtime.ALIGN != 0 and predictor.inputs[0].unaligned
    assert np.shares_memory(np.from_dlpack(predictor._device_tensor(0, array)), array)


def test_input_needing_64_byte_alignment_is_copied_once_into_an_aligned_buffer(tmp_path):
    """An artifact whose manifest does not mark its inputs unaligned (built before accelc did)."""
    folder = tmp_path / "artifact"
    shutil.copytree(shared_artifact(), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for spec in manifest["inputs"]:
        spec.pop("unaligned")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    predictor = runtime.load(folder)
    array = np.zeros(4 * 3 + 1, np.float32)[1:].reshape(4, 3)
    view = np.from_dlpack(predictor._device_tensor(0, array))
    assert view.ctypes.data % runtime.ALIGN == 0 and not np.shares_memory(view, array)


def test_two_same_shaped_unaligned_inputs_do_not_share_staging(predictor):
    a, b = pair_inputs(4, seed=3)
    a_off = np.zeros(a.size + 1, np.float32)[1:].reshape(a.shape)
    b_off = np.zeros(b.size + 1, np.float32)[1:].reshape(b.shape)
    a_off[:], b_off[:] = a, b
    np.testing.assert_allclose(predictor(a_off, b_off), pair_eager(a, b), rtol=1e-5, atol=1e-6)


def test_non_contiguous_input_matches_eager(predictor):
    a, b = pair_inputs(8, seed=4)
    np.testing.assert_allclose(predictor(a[::2], b[::2]), pair_eager(a[::2], b[::2]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 9])
def test_any_batch_is_padded_or_split_onto_built_sizes(predictor, batch):
    a, b = pair_inputs(batch, seed=batch)
    got = predictor(a, b)
    assert got.shape[0] == batch
    np.testing.assert_allclose(got, pair_eager(a, b), rtol=1e-5, atol=1e-6)


def test_outputs_of_successive_calls_are_independent(predictor):
    a1, b1 = pair_inputs(4, seed=1)
    a2, b2 = pair_inputs(4, seed=2)
    first = predictor(a1, b1)
    kept = first.copy()
    predictor(a2, b2)
    np.testing.assert_array_equal(first, kept)  # a later call never overwrites an earlier result


def test_eight_threads_share_one_predictor(predictor):
    inputs = [pair_inputs(1 + i % 4, seed=100 + i) for i in range(32)]
    expected = [pair_eager(a, b) for a, b in inputs]

    def worker(offset: int) -> bool:
        for step in range(50):
            index = (offset + step) % len(inputs)
            got = predictor(*inputs[index])
            if not np.array_equal(got, predictor(*inputs[index])) or \
                    not np.allclose(got, expected[index], rtol=1e-5, atol=1e-6):
                return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(worker, range(8)))


def test_a_call_that_fits_a_built_size_skips_the_general_checks(predictor, monkeypatch):
    def general(*_):
        raise AssertionError("the general path ran")
    monkeypatch.setattr(predictor, "_prepare", general)
    predictor(*pair_inputs(4, seed=5))  # make this thread's functions
    for batch in predictor.sizes:
        a, b = pair_inputs(batch, seed=6)
        np.testing.assert_allclose(predictor(a, b), pair_eager(a, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["dtype", "width", "batches", "scalar", "list", "unbuilt size"])
def test_a_call_that_does_not_fit_takes_the_general_path(predictor, monkeypatch, case):
    """The lean path only ever declines: inputs it does not vouch for get the general checks (and
    their coded errors), and sizes that were not built are padded as before."""
    a, b = pair_inputs(4, seed=7)
    predictor(a, b)  # make this thread's functions
    args = {"dtype": (a.astype(np.float64), b), "width": (a[:, :2], b), "batches": (a, b[:3]),
            "scalar": (np.float32(1.0), b), "list": (a.tolist(), b), "unbuilt size": (a[:3], b[:3])}[case]
    seen = []
    general = predictor._prepare
    monkeypatch.setattr(predictor, "_prepare", lambda *call: seen.append(1) or general(*call))
    try:
        got = predictor(*args)
    except InputError as exc:
        assert exc.code in ("E802", "E803")
    else:
        np.testing.assert_allclose(got, pair_eager(*(np.asarray(x, np.float32) for x in args)), rtol=1e-5, atol=1e-6)
    assert seen


def test_an_unaligned_input_is_never_refused_by_dlpack_first(predictor, monkeypatch):
    """A refused DLPack import raises through the FFI (~850 us): alignment is checked before."""
    refused, real = [], predictor._from_dlpack

    def spy(array, **options):
        try:
            return real(array, **options)
        except RuntimeError:
            refused.append(options)
            raise
    monkeypatch.setattr(predictor, "_from_dlpack", spy)
    a, b = pair_inputs(4, seed=8)
    a_off = np.zeros(a.size + 1, np.float32)[1:].reshape(a.shape)
    a_off[:] = a
    np.testing.assert_allclose(predictor(a_off, b), pair_eager(a, b), rtol=1e-5, atol=1e-6)
    assert not refused
