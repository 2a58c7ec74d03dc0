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

UNBOUNDED = 1_000_000  # MetaSchedule needs a number; a time budget stops it long before


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
    """What the search measured so far, the time budget and the slice of it of the kernel being
    searched; one log line per measured batch."""

    def __init__(self, names: list[str], seconds: float | None, log: logs.Logger):
        self.names, self.log, self.start = names, log, time.monotonic()
        self.deadline = self.start + seconds if seconds else None
        self.trials, self.best = [0] * len(names), [None] * len(names)
        self.failed, self.first_error, self.stopped, self.batches = 0, None, None, 0
        self.until, self.task_batches, self.done = None, 0, 0
        self.batch_start, self.searched_seconds, self.searched = None, 0.0, 0  # what a candidate costs here

    def left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def begin_task(self, fraction: float) -> float | None:
        """The next kernel's search gets `fraction` of the time left (None: no time budget)."""
        left = self.left()
        self.until = None if left is None else time.monotonic() + left * fraction
        self.task_batches = 0
        return None if left is None else left * fraction

    def out_of_time(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline and self.batches:
            self.stopped = "time_budget"
        return self.stopped is not None

    def may_start_batch(self) -> bool:
        """No batch starts after the deadline, except the first: a budget always measures something;
        a kernel's search ends at the end of its slice, after its first batch."""
        if self.out_of_time():
            return False
        if self.until is not None and time.monotonic() >= self.until and self.task_batches:
            return False
        self.batches, self.task_batches = self.batches + 1, self.task_batches + 1
        self.batch_start = time.monotonic()
        return True

    def seconds_per_candidate(self) -> float:
        """Searching, building and measuring one candidate, as seen so far (a second before any)."""
        return self.searched_seconds / self.searched if self.searched else 1.0

    def record(self, task_id: int, runs, done: int) -> None:
        self.trials[task_id] += len(runs)
        if self.batch_start is not None:
            self.searched_seconds += time.monotonic() - self.batch_start
            self.searched, self.batch_start = self.searched + len(runs), None
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

    def __init__(self, progress: Progress, slot: int):
        super().__init__()
        self.progress, self.slot = progress, slot  # one kernel per search: its place in Progress

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        self.progress.record(self.slot, runner_results, self.progress.done)


def default_candidate(mod, target):
    """The schedule the build gives this kernel without records (the pipeline's default rules, or
    none where no rule applies), as a measure candidate. Measured before a kernel's search (survey)
    it lands in the database like any candidate: the build then never applies a tuned schedule
    slower than the default."""
    from tvm.s_tir import Schedule

    from accelc.backends.tvm.schedules import choose
    chosen = choose(mod["main"], target)
    schedule = chosen[1] if chosen is not None else Schedule(mod)  # no rule: the build runs the plain loop nest
    return ms.search_strategy.MeasureCandidate(schedule, ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


@derived_object
class _Budgeted(ms.search_strategy.PySearchStrategy):
    """A search strategy that ends a kernel's search at its own trial cap or when its time runs out,
    the way an exhausted search ends (no more candidates). Terminating tasks from a measure callback
    instead trips the scheduler's own termination (a fatal check in TVM 0.27)."""

    def __init__(self, inner, cap: int | None, progress: Progress):
        super().__init__()
        self.inner, self.cap, self.progress = inner, cap, progress

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
        return self.inner.generate_measure_candidates()

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self):
        return _Budgeted(self.inner.clone(), self.cap, self.progress)


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


def _search(trials: int):
    """(cost model, search strategy). MetaSchedule's XGBoost model predicts at random until it has
    100 measurements, yet retrains after every batch (~7 s each here): below 100 trials use the
    random model outright, with a population that random scores can make use of."""
    if trials < 100:
        return "random", ms.search_strategy.EvolutionarySearch(population_size=64)
    return "xgb", ms.search_strategy.EvolutionarySearch()


def batch_size(cap: int | None, seconds: float | None, per_candidate: float = 1.0) -> int:
    """Candidates per batch: two batches per kernel at least, so its cap and time slice are kept (a
    batch, once started, is measured to its end; `per_candidate`: seconds each costs here)."""
    per = min(cap if cap is not None else UNBOUNDED,
              int(seconds / 2 / per_candidate) if seconds is not None else UNBOUNDED)
    return min(64, max(4, per // 2))


def run(tasks: list, caps: list, share: list[float], defaults: list, runner, database, progress: Progress,
        logs: Path, workers: int = 2) -> None:
    """Search `tasks` (ExtractedTask, in Progress's order: largest share first) one after another,
    each up to its trial cap (None: none of its own) and its `share` of the time left. A kernel's
    measured default (survey) becomes its first record as its search starts: the build keeps it
    unless the search beats it, and a kernel the time never reached has no records (a rebuild
    searches it)."""
    from tvm.s_tir.meta_schedule.utils import fork_seed
    loggers, seeds = task_loggers(logs, [t.task_name for t in tasks]), fork_seed(None, n=len(tasks))
    for slot, (task, cap) in enumerate(zip(tasks, caps)):
        if progress.out_of_time():
            break
        seconds = progress.begin_task(share[slot] / sum(share[slot:]))
        if defaults[slot] is not None:
            commit(task, *defaults[slot], database)
            progress.trials[slot] += 1
        trials = cap if cap is not None else UNBOUNDED
        batch = batch_size(cap, seconds, progress.seconds_per_candidate())
        cost_model, strategy = _search(trials)
        context = ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator="post-order-apply",
                                 search_strategy=_Budgeted(strategy, cap, progress), task_name=task.task_name,
                                 logger=loggers[slot], rand_state=seeds[slot]).clone()
        with _importable_in_workers():
            ms.tune_tasks(tasks=[context], task_weights=[1.0], work_dir=str(logs), max_trials_global=trials,
                          max_trials_per_task=trials, num_trials_per_iter=batch, builder=_builder(batch, workers),
                          runner=runner, database=database, cost_model=cost_model, task_scheduler="round-robin",
                          measure_callbacks=[*ms.MeasureCallback.create("default"), _Monitor(progress, slot)])
        progress.done += 1


def survey(tasks: list, runner) -> list:
    """Each task's default schedule measured once: [(candidate, seconds)], None where a task has no
    default or it failed. Its times give each kernel's share of the model's time."""
    candidates = [default_candidate(task.dispatched[0], task.target) for task in tasks]
    inputs = [(task, c) for task, c in zip(tasks, candidates) if c is not None]
    built = _InProcessBuilder().build([ms.builder.BuilderInput(c.sch.mod, task.target) for task, c in inputs])
    runs = [ms.runner.RunnerInput(b.artifact_path, _device_type(task.target), c.args_info)
            for (task, c), b in zip(inputs, built) if b.error_msg is None]
    times = iter(_fastest(runner, runs, rounds=1))
    measured = {id(c): next(times) for (_, c), b in zip(inputs, built) if b.error_msg is None}
    return [(c, measured[id(c)]) if c is not None and measured.get(id(c)) is not None else None
            for c in candidates]


def commit(task, candidate, seconds: float, database) -> None:
    """A measured schedule of `task` as a record, like one of the search's."""
    mod = task.dispatched[0]
    database.commit_tuning_record(ms.database.TuningRecord(
        candidate.sch.trace, database.commit_workload(mod), [seconds], task.target, candidate.args_info))


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
            commit(task, candidate, secs, database)
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


def _fastest(runner, runs: list, rounds: int = CONFIRM_ROUNDS) -> list:
    """Each run's fastest time over `rounds` rounds of all runs in turn (None: it never ran)."""
    fastest = [None] * len(runs)
    if not runs:
        return fastest
    for _ in range(rounds):
        for i, future in enumerate(runner.run(runs)):
            result = future.result()
            if result.error_msg is None and result.run_secs:
                secs = min(float(s) for s in result.run_secs)
                fastest[i] = secs if fastest[i] is None else min(fastest[i], secs)
    return fastest


def same_trace(first, second) -> bool:
    return tvm_ffi.structural_equal(first.as_json(remove_postproc=True), second.as_json(remove_postproc=True))
