"""Issue #17: no compiled gather reads outside its table, and the predictor takes read-only arrays.

Token ids without a declared range get the table's range in the manifest and are refused (E805)
before native code runs, in the lean and in the checked path, over HTTP too; indices computed
inside a model are clamped in the graph. References: eager PyTorch (and a clamped model for the
ids PyTorch refuses). Read-only, memory-mapped and strided inputs give a writable copy's answer.
The runtime imports tvm without pulling in torch.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from accelc import compile as compile_mod
from accelc.artifact.manifest import Repair
from accelc.capture import index_bounds
from accelc.config import recipe
from accelc.runtime import predictor as runtime
from accelc.errors import InputError, ModelError
from tests.fixtures.gather_models import computed_index, embed_linear, embed_recipe
from tests.fixtures.helpers import ROOT, make_repo, pair_eager, pair_inputs, shared_artifact, write_recipe
from tests.fixtures.servers import live

RTOL, ATOL = 1e-5, 1e-6
BAD_IDS = [100, 10**6, -1, -10**9, 10**12]

EMBED = embed_recipe(2)

COMPUTED = textwrap.dedent("""\
    version: 1
    name: computed
    model:
      entrypoint: tests.fixtures.gather_models:computed_index
      inputs:
        - {name: ids, shape: [batch, 6], dtype: int64}
        - {name: rows, shape: [batch, 3], dtype: int64}
      batch: [1, 4]
    data:  # ids reach the table only after `+ 90`: no range to sample them from (E310 without samples)
      samples: {fn: "tests.fixtures.gather_models:int_samples", args: {ids: [6, 0, 10], rows: [3, -50, 50]}}
    target: x86
    verify: {samples: 2}
    """)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("gather-bounds"))


@pytest.fixture(scope="module")
def embed(repo):
    built = compile_mod.build(write_recipe(repo, EMBED, "embed.yaml"), output=repo / "embed")
    assert built.report["status"] == "passed", built.report
    return built


@pytest.fixture(scope="module")
def computed(repo):
    built = compile_mod.build(write_recipe(repo, COMPUTED, "computed.yaml"), output=repo / "computed")
    assert built.report["status"] == "passed", built.report
    return built


def eager(model, *arrays) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)).numpy()


def valid_ids(batch: int, seed: int = 0) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(0, 100, (batch, 6))
    ids[0, 0], ids[-1, -1] = 99, 0  # both ends of the table
    return ids


# ---- item 1: ids that index a table -------------------------------------------------------------

def test_the_manifest_records_the_table_range_of_an_undeclared_input(embed):
    spec = embed.manifest.inputs[0]
    assert spec.name == "ids" and spec.range == (0, 100)
    assert "index_bounds" not in {r.repair for r in embed.manifest.repairs}  # checked by the runtime instead


@pytest.mark.parametrize("batch", [4, 3, 9])  # built (lean path), padded, split
def test_valid_ids_match_eager(embed, batch):
    predictor = runtime.load(embed.output)
    ids = valid_ids(batch, seed=batch)
    np.testing.assert_allclose(predictor(ids), eager(embed_linear(), ids), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(predictor.predict(ids=ids)[0], eager(embed_linear(), ids), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batch", [4, 3])  # built: the lean path checks; padded: the checked path
@pytest.mark.parametrize("bad", BAD_IDS)
def test_out_of_range_ids_are_refused_before_native_code(embed, batch, bad, monkeypatch):
    predictor = runtime.load(embed.output)
    predictor(valid_ids(batch))  # this thread's VM exists: the lean path is live
    runs = []
    monkeypatch.setattr(predictor, "_run", lambda *args: runs.append(args))
    ids = valid_ids(batch)
    ids[1, 2] = bad
    for call in (lambda: predictor(ids), lambda: predictor.predict(ids), lambda: predictor(ids=ids)):
        with pytest.raises(InputError) as caught:
            call()
        assert caught.value.code == "E805" and str(bad) in str(caught.value) and "[0, 100)" in str(caught.value)
    assert runs == []  # refused before any kernel ran


def test_ranged_inputs_keep_the_lean_path(embed, monkeypatch):
    predictor = runtime.load(embed.output)
    assert predictor.inputs[0].range == (0, 100)  # a declared range used to turn the lean path off
    ids = valid_ids(4)
    expected = predictor(ids)
    monkeypatch.setattr(predictor, "_checked_call", lambda *args: pytest.fail("took the checked path"))
    np.testing.assert_array_equal(predictor(ids), expected)


DANGEROUS = textwrap.dedent("""\
    import sys
    import numpy as np
    import accelc.runtime.predictor
    from accelc.errors import InputError
    predictor = accelc.runtime.predictor.load(sys.argv[1])
    for batch in (4, 3, 1):
        for bad in (10**6, -10**9, 10**12):
            ids = np.zeros((batch, 6), np.int64)
            ids[-1, -1] = bad
            try:
                predictor(ids)
            except InputError as exc:
                print(exc.code)
    """)


def test_ids_that_used_to_segfault_leave_the_process_alive(embed):
    done = subprocess.run([sys.executable, "-c", DANGEROUS, str(embed.output)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["E805"] * 9


def test_a_computed_index_is_clamped_in_the_compiled_graph(computed):
    inputs = {spec.name: spec for spec in computed.manifest.inputs}
    assert inputs["ids"].range is None  # it reaches the table only after `+ 90`: nothing to check at the door
    assert Repair("index_bounds", ("embedding:add", "index:rows")) in computed.manifest.repairs
    predictor = runtime.load(computed.output)
    rng = np.random.default_rng(1)
    rows = rng.integers(-50, 50, (4, 3))
    ids = rng.integers(0, 10, (4, 6))
    np.testing.assert_allclose(predictor(ids, rows), eager(computed_index(), ids, rows), rtol=RTOL, atol=ATOL)
    ids[0] = [10, 20, 10**6, -10**6, -95, 9]  # ids + 90 outside [0, 100): PyTorch raises
    ids[1, 0] = np.iinfo(np.int64).max - 50  # + 90 overflows: LLVM clamps as if it did not (to row 99)
    reference = ids.copy()
    reference[1, 0] = 10**6
    for batch in (4, 3):
        got = predictor(ids[:batch], rows[:batch])
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, eager(computed_index(clamp=True), reference[:batch], rows[:batch]),
                                   rtol=RTOL, atol=ATOL)


def test_rows_count_from_the_end_as_in_torch_and_no_further(computed):
    """x[rows]: torch takes -1 as the last row (TVM's take read before the table), raises below -50."""
    assert {spec.name: spec.range for spec in computed.manifest.inputs}["rows"] == (-50, 50)
    predictor = runtime.load(computed.output)
    ids = np.zeros((4, 6), np.int64)
    rows = np.array([[-1, -50, 49]] * 4)
    np.testing.assert_allclose(predictor(ids, rows), eager(computed_index(), ids, rows), rtol=RTOL, atol=ATOL)
    for bad in (50, -51):
        rows[2, 1] = bad
        with pytest.raises(InputError) as caught:
            predictor(ids, rows)
        assert caught.value.code == "E805"


def test_the_server_answers_out_of_range_ids_with_422(embed):
    pytest.importorskip("starlette")
    httpx = pytest.importorskip("httpx")
    predictor = runtime.load(embed.output)
    with live(predictor, threads=1) as url, httpx.Client(base_url=url, timeout=30) as client:
        for bad in (100, 10**6, -1):
            ids = valid_ids(2)
            ids[0, 3] = bad
            response = client.post("/predict", content=json.dumps({"inputs": {"ids": ids.tolist()}}).encode())
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "E805"
        ids = valid_ids(2)
        response = client.post("/predict", content=json.dumps({"inputs": [ids.tolist()]}).encode())
        assert response.status_code == 200, response.text  # the server still serves
        np.testing.assert_allclose(np.array(response.json()["outputs"]["output0"], np.float32),
                                   eager(embed_linear(), ids), rtol=RTOL, atol=ATOL)


# ---- the graph analysis alone (no TVM) ----------------------------------------------------------

class Tables(torch.nn.Module):
    """Each way an index reaches a table: through shape-only ops and casts, computed, constant.
    clamp=True: the reference for computed indices out of range, clamped as the graph is."""

    def __init__(self, clamp: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(100, 4)
        self.small = torch.nn.Embedding(30, 4)
        self.register_buffer("positions", torch.arange(8).view(1, 8))
        self.clamp = clamp

    def fit(self, index: torch.Tensor, table: torch.nn.Embedding) -> torch.Tensor:
        return index.clamp(0, table.num_embeddings - 1) if self.clamp else index

    def forward(self, ids, codes, x):
        direct = self.emb(ids.view(-1, 2, 3)[:, 0].int()).sum((1, 2))  # view, select, int32 cast
        narrow = self.small(codes.to(torch.int8).long()).sum((1, 2))  # int8 keeps ids exact up to 127
        shifted = self.emb(self.fit(ids[:, :2] + 90, self.emb)).sum((1, 2))  # computed
        from_float = self.small(self.fit(x.long(), self.small)).sum((1, 2))  # a float input cast: no range
        constant = self.small(self.positions[:, :4]).sum()  # a buffer: known in bounds
        onehot = torch.nn.functional.one_hot(codes[:, 0], 7).sum(1)
        return direct + narrow + shifted + from_float + constant + onehot


def specs(**ranges) -> list[recipe.InputSpec]:
    return [recipe.InputSpec(name="ids", shape=["batch", 6], dtype="int64", range=ranges.get("ids")),
            recipe.InputSpec(name="codes", shape=["batch", 2], dtype="int64", range=ranges.get("codes")),
            recipe.InputSpec(name="x", shape=["batch", 3], dtype="float32", range=ranges.get("x"))]


def exported(model: torch.nn.Module, *example: torch.Tensor) -> torch.fx.GraphModule:
    """The graph as capture makes it: batch dims dynamic, torch.export's input guards dropped."""
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(model.eval(), example, dynamic_shapes=tuple({0: batch} for _ in example),
                                  strict=False)
    gm = program.module()
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def graph() -> torch.fx.GraphModule:
    return exported(Tables(), torch.randint(0, 7, (2, 6)), torch.randint(0, 7, (2, 2)), torch.rand(2, 3) * 7)


def where(*path) -> str:
    return "recipe.yaml:" + ".".join(map(str, path))


def rewritten_tables(gm: torch.fx.GraphModule, bounds) -> list[str]:
    """The tables whose index the graph now clamps or wraps."""
    ops = {node.name: node for node in gm.graph.nodes}
    return sorted(ops[name.split(":")[0]].args[0].target for name in bounds.rewritten)


def test_ranges_follow_shape_only_ops_and_casts_to_every_table():
    gm = graph()
    bounds = index_bounds.bound_indices(gm, specs(x=(0.0, 7.0)), where)
    assert bounds.ranges == {"ids": (0, 100), "codes": (0, 7), "x": (0.0, 7.0)}  # codes: one_hot's 7 < 30
    assert rewritten_tables(gm, bounds) == ["emb.weight", "small.weight"]  # ids + 90; the float cast


def test_a_declared_range_may_narrow_the_table_range_but_not_widen_it():
    assert index_bounds.bound_indices(graph(), specs(ids=(5, 50)), where).ranges["ids"] == (5, 50)
    for wide in ((0, 101), (-1, 50), (200, 300)):
        with pytest.raises(ModelError) as caught:
            index_bounds.bound_indices(graph(), specs(ids=wide), where)
        assert caught.value.code == "E308" and "[0, 100)" in str(caught.value)
        assert caught.value.problems[0].location == "recipe.yaml:model.inputs.0.range"


def test_a_narrowing_cast_bounds_the_range():
    class Narrow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(1000, 4)

        def forward(self, ids):
            return self.emb(ids.to(torch.int8).long())  # ids >= 128 would wrap to negative rows

    gm = exported(Narrow(), torch.randint(0, 7, (2, 3)))
    spec = recipe.InputSpec(name="ids", shape=["batch", 3], dtype="int64")
    assert index_bounds.bound_indices(gm, [spec], where).ranges == {"ids": (0, 128)}


def test_clamped_graph_matches_torch_in_range_and_the_clamped_model_outside():
    gm, model, clamped = graph(), Tables(), Tables(clamp=True)
    index_bounds.bound_indices(gm, specs(), where)
    ids, codes, x = torch.randint(0, 10, (3, 6)), torch.randint(0, 7, (3, 2)), torch.rand(3, 3) * 29
    with torch.no_grad():
        torch.testing.assert_close(gm(ids, codes, x), model(ids, codes, x))
        ids[0, :2] = torch.tensor([50, 99])  # valid ids, but + 90 is past the table
        x[1, 0], x[1, 1], x[2, 1] = 1e9, -5.0, float("nan")  # NaN casts to INT64_MIN
        torch.testing.assert_close(gm(ids, codes, x), clamped(ids, codes, x))


def test_an_index_into_a_batch_sized_tensor_is_wrapped_by_the_size_at_run_time():
    """The table's size is the batch (symbolic at capture): the bound is read when the graph runs."""
    class Last(torch.nn.Module):
        def forward(self, hidden, lengths):
            return hidden[torch.arange(hidden.shape[0]), lengths - 1]

    gm = exported(Last(), torch.randn(2, 5), torch.tensor([5, 1]))
    bounds = index_bounds.bound_indices(gm, [recipe.InputSpec(name="hidden", shape=["batch", 5]),
                                             recipe.InputSpec(name="lengths", shape=["batch"], dtype="int64")],
                                        where)
    assert len(bounds.rewritten) == 2 and "lengths" not in bounds.ranges  # both indices are computed
    hidden, lengths = torch.randn(3, 5), torch.tensor([5, 1, 0])  # 0 - 1: the last column, as torch
    torch.testing.assert_close(gm(hidden, lengths), Last()(hidden, lengths))
    static = torch.export.export(gm, (hidden, lengths), strict=False)  # as lower.py re-exports per size
    assert any(n.target is torch.ops.aten.remainder.Scalar for n in static.graph.nodes)


# ---- item 4: read-only, memory-mapped and strided inputs ----------------------------------------

@pytest.fixture(scope="module")
def pair():
    return runtime.load(shared_artifact())


def read_only(array: np.ndarray, tmp_path, name: str) -> np.ndarray:
    out = array.copy()
    out.setflags(write=False)
    return out


def memory_mapped(array: np.ndarray, tmp_path, name: str) -> np.ndarray:
    np.save(tmp_path / f"{name}.npy", array)
    return np.load(tmp_path / f"{name}.npy", mmap_mode="r")


def strided(array: np.ndarray, tmp_path, name: str) -> np.ndarray:
    wide = np.zeros((array.shape[0], array.shape[1] * 2), array.dtype)
    wide[:, ::2] = array
    return wide[:, ::2]


def transposed(array: np.ndarray, tmp_path, name: str) -> np.ndarray:
    return np.ascontiguousarray(array.T).T


def offset(array: np.ndarray, tmp_path, name: str) -> np.ndarray:
    return np.concatenate([array[:1], array])[1:]  # contiguous, one row in: rarely 64-byte aligned


def read_only_view(array: np.ndarray, tmp_path, name: str) -> np.ndarray:
    return read_only(np.concatenate([array[:1], array]), tmp_path, name)[1:]


KINDS = [read_only, memory_mapped, strided, transposed, offset, read_only_view]


def calls(predictor, a, b) -> list[np.ndarray]:
    return [predictor.predict(a, b)[0], predictor.predict(a=a, b=b)[0], predictor(a, b), predictor(a, b=b)]


@pytest.mark.parametrize("batch", [4, 3])  # built (lean path), padded
@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
def test_special_arrays_give_a_writable_copys_answer(pair, kind, batch, tmp_path):
    a, b = pair_inputs(batch, seed=10 + batch)
    expected = pair(a.copy(), b.copy())
    special_a, special_b = kind(a, tmp_path, "a"), kind(b, tmp_path, "b")
    np.testing.assert_array_equal(special_a, a)
    for got in calls(pair, special_a, special_b):
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_allclose(got, pair_eager(a, b), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batch", [4, 3])
def test_read_only_ids_are_range_checked_and_answered(embed, batch, tmp_path):
    predictor = runtime.load(embed.output)
    ids = valid_ids(batch)
    for special in (read_only(ids, tmp_path, "ids"), memory_mapped(ids, tmp_path, "ids")):
        np.testing.assert_allclose(predictor(special), eager(embed_linear(), ids), rtol=RTOL, atol=ATOL)
    ids[0, 0] = 100
    with pytest.raises(InputError) as caught:
        predictor(read_only(ids, tmp_path, "bad"))
    assert caught.value.code == "E805"


# ---- item 11: the runtime imports tvm without torch ---------------------------------------------

WITHOUT_TORCH = textwrap.dedent("""\
    import json, sys
    import numpy as np
    import accelc.runtime.predictor
    predictor = accelc.runtime.predictor.load(sys.argv[1])
    out = predictor(np.zeros((4, 3), np.float32), np.ones((4, 3), np.float32))
    before = "torch" in sys.modules
    import torch  # still importable afterwards
    print(json.dumps({"torch_before": before, "torch_after": torch.__name__, "out": out.tolist()}))
    """)


def test_loading_an_artifact_does_not_import_torch(pair):
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(shared_artifact())], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch_before"] is False and report["torch_after"] == "torch"
    a, b = np.zeros((4, 3), np.float32), np.ones((4, 3), np.float32)
    np.testing.assert_allclose(np.array(report["out"], np.float32), pair_eager(a, b), rtol=RTOL, atol=ATOL)
