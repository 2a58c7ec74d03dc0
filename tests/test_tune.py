"""Tuning: database keyed by target, records applied in the build, bad databases refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

from accelc.backends.tvm import lower, tune
from accelc.capture import _drop_guards
from accelc.errors import RecipeError
from accelc.recipe import InputSpec

HASWELL = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
SKYLAKE = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake"}


def tiny_lowered(target):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).eval()
    spec = InputSpec(name="x", shape=["batch", 8])
    graph = torch.export.export(model, (torch.randn(2, 8),)).module()
    _drop_guards(graph)
    programs = lower.export_programs(graph, [spec], [4])
    return model, lower.to_relax(programs, target)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("db")
    target = tune.tuning_target(tvm.target.Target(HASWELL), 1)
    model, lowered = tiny_lowered(target)
    summary, database = tune.tune(lowered.mod, target, root, trials=4, log=lambda *_: None, workers=1)
    return root, target, model, lowered, summary, database


def scheduled_funcs(mod) -> int:
    return sum(1 for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
               and f.attrs is not None and "tirx.is_scheduled" in f.attrs)


def test_records_round_trip_and_apply(tuned):
    root, target, model, lowered, summary, _ = tuned
    assert summary["tasks"] >= 1 and summary["new_records"] >= 1
    reopened = tune.open_database(root, target)  # a fresh process would see the same records
    tunable = tune.tunable_module(lowered.mod, target)
    with target, reopened:
        applied = tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(tunable)
    assert scheduled_funcs(applied) >= 1
    executable = lower.compile_module(lowered, target, reopened)
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    params = vm["transform_params"]([tvm.runtime.tensor(p) for p in lowered.params.values()])
    x = np.random.default_rng(1).standard_normal((4, 8), dtype=np.float32)
    got = vm["main_b4"](tvm.runtime.tensor(x), *params).numpy()  # one output: returned unwrapped
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_records_for_one_target_never_reach_another(tuned):
    root, target, _, lowered, _, _ = tuned
    other = tune.tuning_target(tvm.target.Target(SKYLAKE), 1)
    assert tune.database_key(other) != tune.database_key(target)
    database = tune.open_database(root, other)
    assert len(database) == 0
    with other, database:
        applied = tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(
            tune.tunable_module(lowered.mod, other))
    assert scheduled_funcs(applied) == 0


def test_corrupt_database_is_refused_and_kept(tmp_path):
    target = tune.tuning_target(tvm.target.Target(HASWELL), 1)
    folder = tmp_path / tune.database_key(target)
    folder.mkdir()
    (folder / "records.json").write_text("{not json\n")
    (folder / "workloads.json").write_text("garbage\n")
    with pytest.raises(RecipeError) as info:
        tune.open_database(tmp_path, target)
    assert info.value.code == "E602"
    assert (folder / "records.json").read_text() == "{not json\n"


def test_unwritable_database_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RecipeError) as info:
        tune.open_database(blocker / "db", tvm.target.Target(HASWELL))
    assert info.value.code == "E601"
