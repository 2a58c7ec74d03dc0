"""MetaSchedule glue: the search run with accelc's budgets, progress line and the workarounds
TVM 0.27 needs on a CPU host (see tune/driver.py)."""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from accelc import logs


def build_without_intrinsics(mod, target, _params):
    """MetaSchedule's default f_build imports tvm.s_tir.tensor_intrin (~30 s per fresh worker here)
    and times out; CPU targets without tensor intrinsics need none of it."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def cpu_intrinsics_only(target) -> None:
    """TuneContext imports all of tvm.s_tir.tensor_intrin: ~30-55 s here, 21 s of it CUDA
    intrinsics a CPU target never uses. Register the package with only the CPU families."""
    import importlib
    import importlib.util
    import sys
    import types
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    package = types.ModuleType(name)
    package.__path__ = importlib.util.find_spec(name).submodule_search_locations
    sys.modules[name] = package
    family = "arm_cpu" if "aarch64" in str(target.attrs.get("mtriple", "")) else "x86"
    setattr(package, family, importlib.import_module(f"{name}.{family}"))


@contextmanager
def _importable_in_workers():
    """Builder workers unpickle f_build by module name: make accelc importable in them even when it
    runs from a checkout that is not installed."""
    here, old = str(Path(__file__).resolve().parents[4]), os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, old) if p)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


class Progress:
    """What the search measured so far, and the time budget; one log line per measured batch."""

    def __init__(self, names: list[str], seconds: float | None, log: logs.Logger):
        self.names, self.log, self.start = names, log, time.monotonic()
        self.deadline = self.start + seconds if seconds else None
        self.trials, self.best = [0] * len(names), [None] * len(names)
        self.failed, self.first_error, self.stopped, self.batches = 0, None, None, 0

    def may_start_batch(self) -> bool:
        """No batch starts after the deadline, except the first: a budget always measures something."""
        if self.deadline is not None and time.monotonic() >= self.deadline and self.batches:
            self.stopped = "time_budget"
        self.batches += self.stopped is None
        return self.stopped is None

    def record(self, task_id: int, runs, done: int) -> None:
        self.trials[task_id] += len(runs)
        for run in runs:
            if run.error_msg is not None or not run.run_secs:
                self.failed += 1
                self.first_error = self.first_error or str(run.error_msg).strip().splitlines()[-1][:200]
                continue
            secs = sum(float(s) for s in run.run_secs) / len(run.run_secs)
            self.best[task_id] = secs if self.best[task_id] is None else min(self.best[task_id], secs)
        best = self.best[task_id]
        shown = f"best {best * 1e6:.2f} us" if best is not None else "no valid candidate yet"
        failed = f", {self.failed} failed" if self.failed else ""
        self.log.info(f"  tuning: {done}/{len(self.names)} kernels done, {sum(self.trials)} trials{failed}, "
                      f"{time.monotonic() - self.start:.0f} s | {self.names[task_id]}: {shown} after "
                      f"{self.trials[task_id]}", extra=logs.TICK)


@derived_object
class _Monitor(ms.measure_callback.PyMeasureCallback):
    """Feeds Progress after every measured batch (it only reads: see _Budgeted)."""

    def __init__(self, progress: Progress):
        super().__init__()
        self.progress = progress

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        done = sum(bool(task.is_terminated) for task in task_scheduler.tasks_)
        self.progress.record(task_id, runner_results, done)


def default_candidate(mod, target):
    """The schedule the build gives this kernel without records (the pipeline's default rules), as
    a measure candidate. Measured with the first batch it lands in the database like any candidate:
    the build then never applies a tuned schedule slower than the default, and the search can start
    from it."""
    from accelc.backends.tvm.schedules import choose
    chosen = choose(mod["main"], target)
    if chosen is None:
        return None
    return ms.search_strategy.MeasureCandidate(chosen[1], ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


@derived_object
class _Budgeted(ms.search_strategy.PySearchStrategy):
    """A search strategy that measures the default schedule first, then ends a kernel's search at its
    own trial cap or when the time runs out, the way an exhausted search ends (no more candidates).
    Terminating tasks from a measure callback instead trips the scheduler's own termination (a fatal
    check in TVM 0.27)."""

    def __init__(self, inner, cap: int | None, progress: Progress, default=None):
        super().__init__()
        self.inner, self.cap, self.progress, self.default = inner, cap, progress, default
        self.extra = 0  # leading candidates of the batch in flight that the inner strategy did not make

    def _initialize_with_tune_context(self, context) -> None:
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        trials = min(max_trials, self.cap) if self.cap is not None else max_trials
        self.inner.pre_tuning(trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        if not self.progress.may_start_batch():
            return None
        candidates = self.inner.generate_measure_candidates()
        extra, self.default = ([self.default] if self.default is not None else []), None
        self.extra = len(extra)
        return extra + list(candidates) if candidates is not None or extra else None

    def notify_runner_results(self, measure_candidates, results) -> None:
        if len(results) > self.extra:
            self.inner.notify_runner_results(measure_candidates[self.extra:], results[self.extra:])
        self.extra = 0

    def clone(self):
        return _Budgeted(self.inner.clone(), self.cap, self.progress, self.default)


@derived_object
class _InProcessBuilder(ms.builder.PyBuilder):
    """Builds candidates in this process. LocalBuilder starts fresh worker processes for every batch
    (plus one to check f_build): ~5 s each here, which small batches never earn back; a large batch
    gains more from building in parallel."""

    def build(self, build_inputs):
        from tvm.s_tir.meta_schedule.builder.local_builder import default_export
        results = []
        for item in build_inputs:
            try:
                module = build_without_intrinsics(item.mod, item.target, item.params)
                results.append(ms.builder.BuilderResult(default_export(module), None))
            except Exception as exc:  # a candidate TVM cannot compile is a failed trial, as in LocalBuilder
                results.append(ms.builder.BuilderResult(None, f"{type(exc).__name__}: {exc}"))
        return results


def _builder(batch: int, workers: int):
    if batch <= 16:
        return _InProcessBuilder()
    return ms.builder.LocalBuilder(f_build=build_without_intrinsics, max_workers=workers, timeout_sec=60)


def _search(total: int):
    """(cost model, search strategy). MetaSchedule's XGBoost model predicts at random until it has
    100 measurements, yet retrains after every batch (~7 s each here): below 100 trials use the
    random model outright, with a population that random scores can make use of."""
    if total < 100:
        return "random", ms.search_strategy.EvolutionarySearch(population_size=64)
    return "xgb", ms.search_strategy.EvolutionarySearch()


def run(tasks: list, caps: list, total: int, runner, database, progress: Progress, logs: Path,
        workers: int = 2) -> None:
    """Search `tasks` (ExtractedTask) with per-task `caps` (None: none of its own) and `total`."""
    from tvm.s_tir.meta_schedule.utils import fork_seed
    cost_model, strategy = _search(total)
    contexts = [ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator="post-order-apply",
                               search_strategy=_Budgeted(strategy, cap, progress, default_candidate(
                                   task.dispatched[0], task.target)), task_name=task.task_name,
                               logger=logger, rand_state=seed).clone()
                for task, cap, logger, seed in zip(tasks, caps, task_loggers(logs, [t.task_name for t in tasks]),
                                                   fork_seed(None, n=len(tasks)))]
    per_task = max(caps) if caps and None not in caps else total
    share = min([c for c in caps if c is not None] or [total // len(tasks)])
    if progress.deadline is not None:  # about a second per candidate here: a kernel's share of the time
        share = min(share, int((progress.deadline - progress.start) / len(tasks)))
    batch = min(64, max(4, share // 2))  # two batches per share at least: budgets and progress stay responsive
    with _importable_in_workers():
        ms.tune_tasks(tasks=contexts, task_weights=[float(t.weight) for t in tasks], work_dir=str(logs),
                      max_trials_global=total, max_trials_per_task=min(per_task, total), num_trials_per_iter=batch,
                      builder=_builder(batch, workers), runner=runner, database=database, cost_model=cost_model,
                      measure_callbacks=[*ms.MeasureCallback.create("default"), _Monitor(progress)])


def task_loggers(logs: Path, names: list[str]) -> list[logging.Logger]:
    """One logger per task writing to its own file under `logs`, and nothing else. MetaSchedule's
    get_loggers_from_work_dir runs logging.config.dictConfig over the process's loggers and formats
    the names of handlers already attached: an unnamed one (pytest 9.2's capture handler, or a
    user's own) crashes the second tuning run in a process, and its console handler prints every
    task's progress. Ours are children of "accelc.tune", never propagate, and touch no one else's."""
    logs.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    loggers = []
    for index, name in enumerate(names):
        logger = logging.getLogger(f"accelc.tune.task_{index:03d}_{name[:100]}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        path = str(logs / f"task_{index:03d}_{name[:100]}.log")
        for old in list(logger.handlers):  # a previous run in this process: reopen on this run's folder
            logger.removeHandler(old)
            old.close()
        handler = logging.FileHandler(path, mode="a", delay=True)  # opened at the first record
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        loggers.append(logger)
    return loggers


CONFIRM_ROUNDS = 3  # each kernel's default and best schedule re-measured this often, alternately


def _device_type(target) -> str:
    return "cpu" if target.kind.name == "llvm" else target.kind.name


def confirm(tasks: list, runner, database, log: logs.Logger) -> int:
    """Re-measure each kernel's default schedule and its best record side by side, and record the
    fastest time of each. A busy machine only ever makes a measurement slower, so the search's
    winner can be a candidate measured in a quiet moment against a default measured in a busy one
    (seen here: tuned builds slower than untuned ones); measured alternately, the two see the same
    machine. Returns how many kernels keep their default schedule."""
    kernels = [(task, found) for task in tasks if (found := _default_and_best(task, database))]
    inputs = [(task, candidate) for task, candidates in kernels for candidate in candidates]
    built = _InProcessBuilder().build([ms.builder.BuilderInput(c.sch.mod, task.target) for task, c in inputs])
    usable = [item for item, b in zip(inputs, built) if b.error_msg is None]
    fastest = _fastest(runner, [ms.runner.RunnerInput(b.artifact_path, _device_type(task.target), c.args_info)
                                for (task, c), b in zip(inputs, built) if b.error_msg is None])
    for (task, candidate), secs in zip(usable, fastest):
        if secs is not None:
            mod = task.dispatched[0]
            database.commit_tuning_record(ms.database.TuningRecord(
                candidate.sch.trace, database.commit_workload(mod), [secs], task.target, candidate.args_info))
    kept = sum(same_trace(database.get_top_k(database.commit_workload(task.dispatched[0]), 1)[0].trace,
                           candidates[0].sch.trace) for task, candidates in kernels)
    failed = len(inputs) - sum(secs is not None for secs in fastest)
    failures = f" ({failed} candidate(s) failed to build or run)" if failed else ""
    log.info(f"  tuning: {len(kernels)} kernel(s) confirmed by {CONFIRM_ROUNDS} alternate measurements of their "
             f"default and best schedules; {kept} keep the default{failures}")
    return kept


def _default_and_best(task, database) -> list:
    """[default, best record] as measure candidates ([default] when it is the best; [] without records)."""
    from tvm.s_tir import Schedule
    mod = task.dispatched[0]
    default, records = default_candidate(mod, task.target), database.get_top_k(database.commit_workload(mod), 1)
    if default is None or not records:  # nothing measured (budget spent first): the default stands anyway
        return []
    if same_trace(records[0].trace, default.sch.trace):
        return [default]
    best = Schedule(mod)
    records[0].trace.apply_to_schedule(best, remove_postproc=False)
    return [default, ms.search_strategy.MeasureCandidate(best, records[0].args_info)]


def _fastest(runner, runs: list) -> list:
    """Each run's fastest time over CONFIRM_ROUNDS rounds of all runs in turn (None: it never ran)."""
    fastest = [None] * len(runs)
    for _ in range(CONFIRM_ROUNDS):
        for i, future in enumerate(runner.run(runs)):
            result = future.result()
            if result.error_msg is None and result.run_secs:
                secs = min(float(s) for s in result.run_secs)
                fastest[i] = secs if fastest[i] is None else min(fastest[i], secs)
    return fastest


def same_trace(first, second) -> bool:
    return tvm_ffi.structural_equal(first.as_json(remove_postproc=True), second.as_json(remove_postproc=True))
