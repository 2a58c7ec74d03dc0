"""Tuning: budgets stop the search, records round-trip through the database and are applied by the
build, records for one target never reach another, bad databases are refused and kept."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import tvm

from accelc import compile as compile_mod
from accelc.config import recipe as recipe_mod
from accelc.runtime import predictor as runtime
from accelc.config import targets
from accelc.backends.tvm import pipeline
from accelc.backends.tvm.tune import driver as tune
from accelc.backends.tvm.tune import database as tune_db
from accelc.backends.tvm.tune import metaschedule as tune_ms
from accelc.errors import TuningError
from tests.fixtures.helpers import Recording, assert_cli_user_error, at, cli, make_repo, scratch_dir, write_recipe
from tests.fixtures.models import tiny_mlp
from tests.fixtures.tuning import BASE, TIMED, TOPPED

SKYLAKE = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake"}



@pytest.fixture(scope="module")
def tuned():
    """`accelc tune` with a time budget, then a build that tunes the kernel it left without records."""
    repo = make_repo(scratch_dir() / "tune-repo")
    log = Recording()
    summary = compile_mod.tune_recipe(write_recipe(repo, TIMED, "timed.yaml"), logger=log.logger)
    built = compile_mod.build(write_recipe(repo, TOPPED, "topped.yaml"), output=repo / "build" / "topped",
                              cache=False, logger=log.logger)
    return repo, summary, log.lines, built


def target_of(repo, name="x86"):
    return tune.tuning_target(targets.resolve(name, repo).tvm_target(), 1)


def tunable_of(repo, target):
    loaded = recipe_mod.load(repo / "timed.yaml")
    spec = targets.resolve("x86", repo)
    lowered = compile_mod._lower(loaded, spec, lambda *_: None, None)[-1]
    return tune.tunable_module(lowered.mod, target)


def scheduled_funcs(mod) -> int:
    return sum(1 for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
               and f.attrs is not None and "tirx.is_scheduled" in f.attrs)


def test_time_budget_stops_after_the_first_batch_and_keeps_it(tuned):
    _, summary, lines, _ = tuned
    assert summary["stopped_by"] == "time_budget"
    assert summary["tasks"] == 2 and summary["tuned_tasks"] == 1 and summary["defaulted_tasks"] == 1
    assert summary["trials"] == 5  # one batch: the default schedule and 4 candidates, not 96
    tuned_row, default_row = sorted(summary["kernels"], key=lambda row: row["status"], reverse=True)
    assert tuned_row["status"] == "tuned" and tuned_row["best_us"] > 0 and tuned_row["trials"] == 5
    assert default_row["status"] == "default" and default_row["best_us"] is None and default_row["trials"] == 0
    assert tuned_row["schedule"] in ("default", "searched") and default_row["schedule"] is None
    assert any("kernels done, 5 trials" in line for line in lines)  # the live progress line
    assert any("1/2 kernels tuned, 1 on default schedules" in line for line in lines)  # the summary table


def test_a_build_tunes_only_what_has_no_records_and_applies_them(tuned):
    repo, _, _, built = tuned
    summary = built.manifest.tuning
    assert summary.tuned_tasks == 2 and summary.defaulted_tasks == 0 and summary.trials == 2
    assert sorted(row.status for row in summary.kernels) == ["reused", "tuned"]
    assert built.report["status"] == "passed"  # the tuned artifact matches eager PyTorch
    x = np.random.default_rng(0).standard_normal((4, 8), dtype=np.float32)
    want = tiny_mlp(features=8, hidden=16)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(runtime.load(built.output)(x), want, rtol=1e-5, atol=1e-5)


def test_inspect_shows_tuned_and_defaulted_kernels(tuned, capsys):
    code, out, _ = cli(["inspect", tuned[3].output], capsys)
    assert code == 0 and "2/2 kernels tuned, 0 on default schedules (2 new trials)" in out


def test_records_round_trip_and_are_applied(tuned):
    repo, summary, _, built = tuned
    target = target_of(repo)
    reopened = tune_db.open_database(repo / ".accelc" / "tuning", target)  # what a fresh process sees
    measured = tune_db.schedules(reopened.get_all_tuning_records())  # confirmation measures some twice
    assert measured == summary["trials"] + built.manifest.tuning.trials
    with target, reopened:
        applied = tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(tunable_of(repo, target))
    assert scheduled_funcs(applied) == 2


def test_the_default_schedule_as_a_record_replays_to_the_default_build(tuned):
    """The candidate measured first in every search is exactly what the build does without records."""
    repo = tuned[0]
    target = target_of(repo)
    tunable = tunable_of(repo, target)
    database = tvm.s_tir.meta_schedule.database.MemoryDatabase()
    for task in tvm.s_tir.meta_schedule.relax_integration.extract_tasks(tunable, target):
        candidate = tune_ms.default_candidate(task.dispatched[0], target)
        database.commit_tuning_record(tvm.s_tir.meta_schedule.database.TuningRecord(
            candidate.sch.trace, database.commit_workload(task.dispatched[0]), [1e-6], target, candidate.args_info))
    with target, database:
        replayed = tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(tunable)
    rule = next(p for p in pipeline.cpu_pipeline(target) if p.info.name == "ApplyDefaultSchedule")
    with target:
        direct = rule(tunable)
    kernels = [(gv.name_hint, f) for gv, f in replayed.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == 2
    for name, func in kernels:
        tvm.ir.assert_structural_equal(func.body, direct[name].body)


def test_confirmation_measures_the_default_and_the_best_side_by_side(tuned):
    """The search kept another schedule because the default was measured while the machine was busy
    (planted: 10 s against 1 s). Confirmation measures both again, alternately, and their fresh
    times decide: the planted ordering is gone, and the winner is the faster of the two."""
    repo = tuned[0]
    target = target_of(repo)
    ms = tvm.s_tir.meta_schedule
    database, tasks, traces = ms.database.MemoryDatabase(), [], []
    for task in ms.relax_integration.extract_tasks(tunable_of(repo, target), target):
        mod = task.dispatched[0]
        workload = database.commit_workload(mod)
        default = tune_ms.default_candidate(mod, target)
        other = tvm.s_tir.Schedule(mod)  # the plain loop nest, innermost loop unrolled
        other.unroll(other.get_loops(other.get_child_blocks(other.get_sblock("root"))[0])[-1])
        for trace, secs in ((default.sch.trace, 10.0), (other.trace, 1.0)):
            database.commit_tuning_record(ms.database.TuningRecord(trace, workload, [secs], target, default.args_info))
        assert tune_ms.same_trace(database.get_top_k(workload, 1)[0].trace, other.trace)
        tasks.append(task)
        traces.append((default.sch.trace, other.trace))
    kept = tune_ms.confirm(tasks, ms.runner.LocalRunner(timeout_sec=30), database, Recording().logger)
    defaults_won = 0
    for task, (default, other) in zip(tasks, traces):
        records = database.get_top_k(database.commit_workload(task.dispatched[0]), 4)
        fresh = {name: min(float(r.run_secs[0].value) for r in records if tune_ms.same_trace(r.trace, trace))
                 for name, trace in (("default", default), ("other", other))}
        assert max(fresh.values()) < 1.0  # both measured again, for real
        assert float(records[0].run_secs[0].value) == min(fresh.values())
        defaults_won += fresh["default"] <= fresh["other"]
        assert tune_ms.same_trace(records[0].trace, default) == (fresh["default"] <= fresh["other"])
    assert kept == defaults_won


def test_records_for_one_target_never_reach_another(tuned):
    repo = tuned[0]
    haswell, skylake = target_of(repo), tune.tuning_target(tvm.target.Target(SKYLAKE), 1)
    assert tune_db.database_key(skylake) != tune_db.database_key(haswell)
    tunable = tunable_of(repo, skylake)
    # TVM's own JSON database ignores the target (TVM #15549): it would apply haswell records here.
    folder = tune_db.folder_for(repo / ".accelc" / "tuning", haswell)
    raw = tvm.s_tir.meta_schedule.database.JSONDatabase(str(folder / "workloads.json"), str(folder / "records.json"))
    with skylake, raw:
        assert scheduled_funcs(tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(tunable)) == 2
    ours = tune_db.open_database(repo / ".accelc" / "tuning", skylake)
    assert len(ours) == 0
    with skylake, ours:
        assert scheduled_funcs(tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(tunable)) == 0


def test_records_measured_against_other_default_schedules_are_not_applied(tuned, monkeypatch, tmp_path):
    """A record was kept because it beat the default schedule of its day; new default rules start over."""
    repo = tuned[0]
    target, root = target_of(repo), tmp_path / "tuning"
    shutil.copytree(repo / ".accelc" / "tuning", root)
    assert len(tune_db.open_database(root, target)) > 0
    old_key = tune_db.database_key(target)
    monkeypatch.setattr(tune_db, "defaults_digest", lambda: "0123456789abcdef")
    assert tune_db.database_key(target) != old_key
    fresh = tune_db.open_database(root, target)
    assert len(fresh) == 0
    with target, fresh:
        assert scheduled_funcs(tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(
            tunable_of(repo, target))) == 0


def test_a_renamed_target_folder_is_refused(tuned, tmp_path):
    repo = tuned[0]
    haswell, skylake = target_of(repo), tune.tuning_target(tvm.target.Target(SKYLAKE), 1)
    shutil.copytree(tune_db.folder_for(repo / ".accelc" / "tuning", haswell), tmp_path / tune_db.database_key(skylake))
    with pytest.raises(TuningError) as info:
        tune_db.open_database(tmp_path, skylake)
    assert info.value.code == "E620"


def test_merge_adds_each_record_once(tuned, tmp_path, capsys):
    repo = tuned[0]
    target, source, partial, out = target_of(repo), repo / ".accelc" / "tuning", tmp_path / "partial", tmp_path / "out"
    shutil.copytree(source, partial)
    records = tune_db.folder_for(partial, target) / "records.json"
    records.write_text(records.read_text().splitlines()[0] + "\n")  # a database holding one of the records
    assert cli(["tune", "--merge", partial, "-o", out], capsys)[0] == 0
    assert len(tune_db.open_database(out, target)) == 1
    assert cli(["tune", "--merge", source, partial, "-o", out], capsys)[0] == 0
    merged, original = tune_db.open_database(out, target), tune_db.open_database(source, target)
    assert len(merged) == len(original) > 1  # the rest added, nothing twice
    best = lambda db: sorted(r.run_secs[0].value for r in db.get_all_tuning_records())  # noqa: E731
    assert best(merged) == best(original)


def test_merge_refuses_what_is_not_a_database(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = assert_cli_user_error(["tune", "--merge", tmp_path / "empty", "-o", tmp_path / "out"], capsys, "E615")
    assert str(tmp_path / "empty") in err
    assert_cli_user_error(["tune", "--merge", tmp_path / "empty"], capsys, "E617")


def test_tune_resume_with_the_budget_spent_tunes_nothing(tuned, capsys):
    repo = tuned[0]
    code, _, err = cli(["tune", repo / "topped.yaml", "--resume"], capsys)
    assert code == 0 and "tuning 0 of 2 kernel(s)" in err and "(stopped by nothing to tune)" in err


def test_corrupt_database_is_refused_and_kept(tmp_path):
    target = tune.tuning_target(tvm.target.Target(SKYLAKE), 1)
    folder = tmp_path / tune_db.database_key(target)
    folder.mkdir()
    (folder / "records.json").write_text("{not json\n")
    (folder / "workloads.json").write_text("garbage\n")
    with pytest.raises(TuningError) as info:
        tune_db.open_database(tmp_path, target, "recipe.yaml:9:3")
    assert info.value.code == "E619" and "recipe.yaml:9:3" in info.value.format()
    assert (folder / "records.json").read_text() == "{not json\n"
    assert (folder / "workloads.json").read_text() == "garbage\n"


def test_unwritable_database_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TuningError) as info:
        tune_db.open_database(blocker / "db", tvm.target.Target(SKYLAKE))
    assert info.value.code == "E618"


def test_unwritable_database_in_a_recipe_is_reported_at_its_line(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo")
    (repo / "blocker").write_text("x")
    text = BASE + "tuning: {trials: 4, threads: 1, database: blocker/db}\n"
    path = write_recipe(repo, text)
    err = assert_cli_user_error(["tune", path], capsys, "E618")
    assert at(path, text, "blocker/db") in err and "tuning.database" in err


@pytest.mark.parametrize("tuning, needle", [
    ("{time_budget: 0}", "time_budget"),
    ("{time_budget: -5}", "time_budget"),
    ("{per_task: 0}", "per_task"),
    ("{trials: -1}", "trials"),
    ("{trials: 0, time_budget: 60}", "trials"),
    ("{runner: remote}", "runner"),
    ("{runner: {rpc: {tracker: 'nohost', key: k}}}", "tracker"),
    ("{runner: {rpc: {tracker: 'h:70000', key: k}}}", "tracker"),
])
def test_bad_budgets_and_runners_are_located_recipe_errors(tmp_path, capsys, tuning, needle):
    repo = make_repo(tmp_path / "repo")
    text = BASE + f"tuning: {tuning}\n"
    path = write_recipe(repo, text)
    err = assert_cli_user_error(["validate", path], capsys, "E102")
    line = text.count("\n", 0, text.index("tuning:")) + 1
    assert f"{path}:{line}:" in err and needle in err


def test_local_tuning_for_a_target_this_machine_cannot_run_points_to_rpc(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo")
    text = BASE.replace("target: x86", "target: arm64") + "tuning: {trials: 8}\n"
    code, out, err = cli(["tune", write_recipe(repo, text)], capsys)
    assert code == 2 and "error[E614]" in err and "rpc" in err
    assert "[1/4]" in err and "[2/4]" not in err  # refused before any work


def test_tune_without_a_budget_is_an_error(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo")
    assert_cli_user_error(["tune", write_recipe(repo, BASE)], capsys, "E616")


def test_plan_spends_tops_up_or_fills_in():
    assert tune.plan([0, 0], 64, None, "fresh") == ([None, None], 64)
    assert tune.plan([5, 0], None, 8, "fresh") == ([8, 8], 16)
    assert tune.plan([40, 24], 64, None, "resume") == ([0, 8], 8)  # each kernel's share is 32
    assert tune.plan([5, 0], None, 8, "resume") == ([3, 8], 11)
    assert tune.plan([5, 0], None, 8, "missing") == ([0, 8], 8)  # a build: only kernels without records
    assert tune.plan([3, 0], None, None, "resume") == ([0, None], tune.UNBOUNDED)  # time budget only


def test_tuning_a_gpu_target_is_refused():
    with pytest.raises(TuningError) as info:
        tune.tuning_target(tvm.target.Target({"kind": "cuda", "arch": "sm_80"}), 1)
    assert info.value.code == "E610"


def test_database_key_ignores_nothing_of_the_target():
    base = tune.tuning_target(tvm.target.Target(SKYLAKE), 1)
    assert tune_db.database_key(base) == tune_db.database_key(tune.tuning_target(tvm.target.Target(SKYLAKE), 1))
    assert tune_db.database_key(base) != tune_db.database_key(tune.tuning_target(tvm.target.Target(SKYLAKE), 2))
