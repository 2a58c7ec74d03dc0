"""MetaSchedule tuning: budgets (trials, per kernel, seconds), a live progress line, local or RPC
measurement, and a per-kernel summary for the report and the manifest.

The database (tune_db.py) is keyed by the full target, so records never cross targets; the RPC
runner (tune_rpc.py) measures on remote devices; tune_ms.py holds the MetaSchedule glue.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import find_anchor_sblock

from accelc import logs
from accelc.errors import TuningError
from accelc.backends.tvm.tune import database as tune_db
from accelc.backends.tvm.tune import metaschedule as tune_ms
from accelc.backends.tvm.tune import rpc as tune_rpc

UNBOUNDED = 1_000_000  # MetaSchedule needs a number; a time budget stops it long before
_LOG = logging.getLogger(__name__)


def tuning_target(target, threads: int, where: str | None = None):
    """MetaSchedule needs the core count in the target; the build uses the same target so
    records match."""
    if target.kind.name != "llvm":
        raise TuningError(f"tuning for '{target.kind.name}' targets is not supported yet; set no tuning budget",
                          code="E610", location=where, field="tuning")
    spec = dict(target.export())
    spec["num-cores"] = threads
    return tvm.target.Target({k: v for k, v in spec.items() if k not in ("id", "features")})


def tunable_module(mod: tvm.IRModule, target) -> tvm.IRModule:
    """The per-batch functions legalized and fused exactly as the build will see them,
    without the one-off weight transform (not worth tuning)."""
    from accelc.backends.tvm.pipeline import fusion_passes
    kept = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv.name_hint != "transform_params"})
    with target:
        return tvm.transform.Sequential(fusion_passes(target))(kept)


def plan(prior: list[int], trials: int | None, per_task: int | None, mode: str) -> tuple[list, int]:
    """Per-kernel caps (0: skip it, None: no cap of its own) and the global cap, from the records
    each kernel already has. "fresh" (`accelc tune`) spends the whole budget again; "resume"
    (`--resume`) tops each kernel up to its share, `per_task` or trials / kernels; "missing" (every
    build) tunes only kernels without records, each up to its share, so a rebuild never pays twice
    (MetaSchedule may end a kernel's search below its share: a rebuild would retry it forever)."""
    if mode == "fresh":
        caps = [per_task] * len(prior)
        return caps, trials or (per_task * len(prior) if per_task else UNBOUNDED)
    share = per_task or (math.ceil(trials / len(prior)) if trials else None)
    if mode == "missing" or share is None:  # without a trial budget (time only) records mean done
        caps = [0 if done else share for done in prior]
    else:
        caps = [max(0, share - done) for done in prior]
    return caps, (sum(caps) if share else UNBOUNDED)


def check_runner(section, runs_here: tuple[bool, str], where=lambda *_: None) -> str:
    """Where candidates will be measured, checked before any work: the local machine must run the
    target's code, an RPC tracker must answer within its timeout and know the device key."""
    rpc = section.runner.rpc
    if rpc is None:
        if not runs_here[0]:
            raise TuningError(f"tuning measures candidates, and this machine cannot run the target's code: "
                              f"{runs_here[1]}", code="E614", location=where("tuning", "runner"),
                              field="tuning.runner",
                              hint="measure on the devices: tuning.runner: {rpc: {tracker: HOST:PORT, key: KEY}}")
        return "local"
    devices = tune_rpc.probe(rpc.tracker, rpc.key, rpc.timeout, where("tuning", "runner", "rpc", "tracker"))
    return f"rpc {rpc.tracker} key {rpc.key} ({devices} device(s), {rpc.parallel} at once)"


def _runner(section):
    rpc = section.runner.rpc
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=30)
    return tune_rpc.runner(rpc.tracker, rpc.key, rpc.parallel, rpc.timeout)


def tune(mod: tvm.IRModule, target, root: Path, section, *, mode: str = "missing",
         runs_here: tuple[bool, str] = (True, ""), where=lambda *_: None, logger: logs.Logger | None = None,
         workers: int = 2):
    """Tune the module's kernels within `section`'s budgets (recipe TuningSection); returns
    (summary, database). `mode` says what records already in the database count for (see plan)."""
    log = logger or _LOG
    tune_ms.cpu_intrinsics_only(target)
    database = tune_db.open_database(root, target, where("tuning", "database"), logger=logger)
    runner_text = check_runner(section, runs_here, where)
    found = [t for t in ms.relax_integration.extract_tasks(tunable_module(mod, target), target)
             if not t.mod.attrs.get("tirx.is_scheduled", False)]  # MetaSchedule would skip these
    # Kernels without a reduction keep the default elementwise schedule: MetaSchedule can only vary
    # their parallel/vectorize/unroll annotations, at a high price per batch of candidates.
    reduces = [find_anchor_sblock(t.dispatched[0]) is not None for t in found]
    tasks = [t for t, r in zip(found, reduces) if r] + [t for t, r in zip(found, reduces) if not r]
    names, tunable = [t.task_name for t in tasks], sum(reduces)
    prior = [tune_db.schedules(tune_db.task_records(database, t.dispatched[0])) for t in tasks[:tunable]]
    caps, total = plan(prior, section.trials, section.per_task, mode) if prior else ([], 0)
    chosen = [i for i, cap in enumerate(caps) if cap != 0]
    log.info(f"  tuning {len(chosen)} of {len(tasks)} kernel(s) ({tunable - len(chosen)} already have their records, "
             f"{len(tasks) - tunable} elementwise keep the default schedule), "
             f"{'no trial cap' if total >= UNBOUNDED else f'{total} trials'}"
             f"{f', {section.time_budget:g} s' if section.time_budget else ''}; measuring on {runner_text}")
    progress = tune_ms.Progress([names[i] for i in chosen], section.time_budget, log)
    if chosen and total > 0:
        runner = _runner(section)
        tune_ms.run([tasks[i] for i in chosen], [caps[i] for i in chosen], total, runner, database,
                    progress, tune_db.folder_for(root, target) / "logs", workers)
        tune_ms.confirm([tasks[i] for i in chosen], runner, database, log)
    return _summary(tasks, tunable, chosen, progress, database, root, target, runner_text), database


def _summary(tasks, tunable: int, chosen, progress: tune_ms.Progress, database, root, target, runner_text) -> dict:
    from tvm.s_tir.analysis import estimate_tir_flops
    rows, new, ok = [], dict(zip(chosen, progress.trials)), ("tuned", "reused")
    for i, task in enumerate(tasks):
        records = tune_db.task_records(database, task.dispatched[0])
        best = tune_db.best_seconds(records[0]) if records else None
        try:
            flops = float(estimate_tir_flops(task.dispatched[0]))
        except Exception:  # an op the estimator does not know: no GFLOP/s column for it
            flops = None
        status = "default" if best is None or best >= 1e9 else ("tuned" if new.get(i) else "reused")
        default = tune_ms.default_candidate(task.dispatched[0], task.target) if status in ok else None
        winner = None if default is None else (
            "default" if tune_ms.same_trace(records[0].trace, default.sch.trace) else "searched")
        if i >= tunable and status == "default":
            status = "elementwise"  # the default schedule by design (records from elsewhere would still apply)
        rows.append({"kernel": task.task_name, "weight": int(task.weight), "trials": tune_db.schedules(records),
                     "new_trials": new.get(i, 0), "best_us": round(best * 1e6, 3) if status in ok else None,
                     "gflops": round(flops / best / 1e9, 2) if flops and status in ok else None,
                     "status": status, "schedule": winner})
    tuned = sum(r["status"] in ok for r in rows)
    stopped = progress.stopped or ("budget" if chosen else "nothing to tune")
    return {"tasks": len(tasks), "tuned_tasks": tuned, "defaulted_tasks": len(tasks) - tuned,
            "trials": sum(progress.trials), "failed_trials": progress.failed,
            "seconds": round(time.monotonic() - progress.start, 1), "stopped_by": stopped,
            "runner": runner_text, "database": str(tune_db.folder_for(root, target)),
            **({"first_error": progress.first_error} if progress.first_error else {}), "kernels": rows}


def format_summary(summary: dict) -> str:
    """The per-kernel table for the build report."""
    lines = [f"  tuning: {summary['tuned_tasks']}/{summary['tasks']} kernels tuned, {summary['defaulted_tasks']} "
             f"on default schedules; {summary['trials']} trials in {summary['seconds']:g} s "
             f"(stopped by {summary['stopped_by']}) on {summary['runner']}",
             f"    {'kernel':<36} {'weight':>6} {'trials':>7} {'new':>5} {'best us':>10} {'GFLOP/s':>8}  status  "
             "best schedule"]
    for row in summary["kernels"]:
        best = f"{row['best_us']:.2f}" if row["best_us"] is not None else "-"
        gflops = f"{row['gflops']:.1f}" if row["gflops"] is not None else "-"
        lines.append(f"    {row['kernel'][:36]:<36} {row['weight']:>6} {row['trials']:>7} {row['new_trials']:>5} "
                     f"{best:>10} {gflops:>8}  {row['status']:<6}  {row.get('schedule') or '-'}")
    if summary.get("first_error"):
        lines.append(f"    first failed measurement: {summary['first_error']}")
    return "\n".join(lines)
