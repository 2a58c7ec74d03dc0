"""The tuning budget follows each kernel's share of the model's time (calls x default time): the
kernels holding the time are searched first and get the trials; kernels too small for the budget keep
their default schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from accelc import compile as compile_mod
from accelc.backends.tvm.tune import metaschedule as tune_ms
from accelc.backends.tvm.tune import shares as tune_shares
from accelc.runtime import predictor as runtime
from tests.fixtures.helpers import Recording, make_repo, write_recipe
from tests.fixtures.models import tiny_mlp
from tests.fixtures.tuning import SKEWED, SPLIT


def test_shares_are_calls_times_default_time():
    assert tune_shares.shares([2, 1, 1], [1e-3, 4e-3, 2e-3]) == pytest.approx([2 / 8, 4 / 8, 2 / 8])
    # a kernel whose default did not run counts as an average one
    assert tune_shares.shares([1, 1, 1], [1.0, 3.0, None]) == pytest.approx([1 / 6, 3 / 6, 2 / 6])


def test_small_kernels_drop_out_and_their_portion_goes_to_the_rest():
    share = [0.6, 0.3, 0.05, 0.03, 0.02]
    # 100 trials: 0.05 / 0.03 / 0.02 of them are under MIN_TRIALS (16); 0.3 -> 33 once they are out
    keep = tune_shares.searched(share, 100, None)
    assert keep == [True, True, False, False, False]
    caps = tune_shares.trial_caps(share, keep, [None] * 5, 100)
    assert caps == [round(100 * 0.6 / 0.9), round(100 * 0.3 / 0.9), 0, 0, 0] == [67, 33, 0, 0, 0]
    # 600 s: 30 s buys a search (MIN_SECONDS) -> 0.05 of 600 s is exactly 30 s and stays
    assert tune_shares.searched(share, None, 600) == [True, True, True, False, False]
    # a budget too small for any search still searches the largest kernel
    assert tune_shares.searched([0.2, 0.5, 0.3], 4, 1.0) == [False, True, False]


def test_trial_caps_respect_a_kernels_own_cap_and_the_minimum():
    assert tune_shares.trial_caps([0.9, 0.1], [True, True], [None, None], 64) == [58, 16]
    assert tune_shares.trial_caps([0.9, 0.1], [True, True], [20, None], 64) == [20, 16]
    assert tune_shares.trial_caps([0.9, 0.1], [True, False], [8, 8], None) == [8, 0]  # per_task only


def test_batches_keep_a_kernels_cap_and_time_slice():
    assert tune_ms.batch_size(None, None) == 64
    assert tune_ms.batch_size(16, None) == 8
    assert tune_ms.batch_size(None, 40.0) == 10  # about a second per candidate: two batches in the slice
    assert tune_ms.batch_size(2, 1000.0) == 4
    assert tune_ms.batch_size(None, 400.0, per_candidate=5.0) == 20  # a busy machine: smaller batches


def test_the_cost_of_a_candidate_is_measured_as_the_search_goes():
    class Run:  # a measured candidate, as the runner reports it
        error_msg, run_secs = None, [1e-3]

    progress = tune_ms.Progress(["a"], None, Recording().logger)
    assert progress.seconds_per_candidate() == 1.0  # before any batch
    assert progress.may_start_batch()
    progress.batch_start -= 12.0  # the batch took 12 s
    progress.record(0, [Run()] * 4, 0)
    assert progress.seconds_per_candidate() == pytest.approx(3.0, rel=0.01)


def test_progress_gives_a_kernel_its_fraction_of_the_time_left():
    progress = tune_ms.Progress(["a", "b"], 100.0, Recording().logger)
    assert progress.begin_task(0.25) == pytest.approx(25.0, abs=0.5)
    assert progress.may_start_batch()  # a kernel's first batch always runs
    progress.until = progress.start  # its slice is over
    assert not progress.may_start_batch() and not progress.out_of_time()
    progress.deadline = progress.start  # the whole budget is over
    assert progress.out_of_time() and progress.stopped == "time_budget"


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("skewed"))
    log = Recording()
    built = compile_mod.build(write_recipe(repo, SKEWED), output=repo / "build" / "skewed", cache=False,
                              logger=log.logger)
    return built, log.lines


def test_the_trials_go_to_the_kernel_that_holds_the_time(skewed):
    built, lines = skewed
    rows = {row.kernel: row for row in built.manifest.tuning.kernels}
    large, small = sorted(rows.values(), key=lambda row: -row.weight * (row.default_us or 0))
    # the 64x512x512 GEMM costs more than the 64x512x2 one (256x the FLOPs): measured, not assumed
    assert large.kernel.startswith("fused_matmul_add_relu") and large.default_us > 2 * small.default_us
    assert large.share > 0.75  # from the measurement before the search (default_us: its fastest since)
    assert large.share + small.share == pytest.approx(1.0, abs=1e-3)
    assert large.status == "tuned" and large.new_trials == 17  # its default, then all 16 trials
    assert small.status == "default" and small.trials == 0 and small.best_us is None
    assert any("searching 1 kernel(s)" in line and "1 too small for the budget" in line for line in lines)
    x = np.random.default_rng(0).standard_normal((64, 512), dtype=np.float32)
    want = tiny_mlp(features=512, hidden=512, out=2)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(runtime.load(built.output)(x), want, rtol=1e-4, atol=1e-4)


def test_a_kernel_the_time_never_reached_is_searched_by_the_next_build(tmp_path, monkeypatch):
    """Its default was measured (for its share) but not recorded: records mean a kernel is done."""
    monkeypatch.setattr(tune_shares, "MIN_SECONDS", 0.0)  # 0.01 s buys both kernels a search
    repo = make_repo(tmp_path / "repo")
    recipe = write_recipe(repo, SPLIT)
    first = compile_mod.build(recipe, output=repo / "build" / "first", cache=False).manifest.tuning
    assert first.stopped_by == "time_budget"
    reached, left = sorted(first.kernels, key=lambda row: -row.share)
    assert (reached.status, reached.new_trials) == ("tuned", 3)  # its default and one batch of 2
    assert (left.status, left.trials, left.best_us) == ("default", 0, None) and left.default_us > 0
    second = compile_mod.build(recipe, output=repo / "build" / "second", cache=False).manifest.tuning
    rows = {row.kernel: row for row in second.kernels}
    assert rows[reached.kernel].status == "reused" and rows[reached.kernel].new_trials == 0
    assert rows[left.kernel].status == "tuned" and rows[left.kernel].new_trials == 3


def test_a_kernel_no_rule_schedules_has_the_plain_loop_nest_as_its_default():
    """Such a kernel (BERT's attention-mask reduction) runs its loop nest as written in an untuned
    build: that is the default it is measured by, and that the search has to beat."""
    import tvm
    from tvm import te

    from accelc.backends.tvm.schedules import choose
    a = te.placeholder((4, 128), "int64", name="a")
    k = te.reduce_axis((0, 128), name="k")
    b = te.compute((4,), lambda i: te.max(tvm.tirx.Cast("float32", a[i, k] == 0), axis=k), name="b")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 1})
    assert choose(mod["main"], target) is None
    candidate = tune_ms.default_candidate(mod, target)
    assert len(candidate.sch.trace.insts) == 0
    tvm.ir.assert_structural_equal(candidate.sch.mod["main"], mod["main"])
