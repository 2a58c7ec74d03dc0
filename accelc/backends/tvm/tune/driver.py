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
from accelc.backends.tvm.tune import shares as tune_shares

UNBOUNDED = tune_ms.UNBOUNDED
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
    tunable = sum(reduces)
    prior = [tune_db.schedules(tune_db.task_records(database, t.dispatched[0])) for t in tasks[:tunable]]
    caps, total = plan(prior, section.trials, section.per_task, mode) if prior else ([], 0)
    chosen = [i for i, cap in enumerate(caps) if cap != 0]
    log.info(f"  tuning {len(chosen)} of {len(tasks)} kernel(s) ({tunable - len(chosen)} already have their records, "
             f"{len(tasks) - tunable} elementwise keep the default schedule), "
             f"{'no trial cap' if total >= UNBOUNDED else f'{total} trials'}"
             f"{f', {section.time_budget:g} s' if section.time_budget else ''}; measuring on {runner_text}")
    progress, shares, order = tune_ms.Progress([], section.time_budget, log), {}, []
    if chosen and total > 0:
        runner = _runner(section)
        weighted = bool(section.trials) and mode != "resume"  # the trial budget follows the shares too
        own = [section.per_task if weighted else caps[i] for i in chosen]
        shares, order, kept_caps, defaults = _by_share([tasks[i] for i in chosen], chosen, own,
                                                       total if weighted else None, runner, progress, log)
        tune_ms.run([tasks[i] for i in order], kept_caps, [shares[i][0] for i in order], defaults, runner,
                    database, progress, tune_db.folder_for(root, target) / "logs", workers)
        tune_ms.confirm([tasks[i] for i in order], runner, database, log)
    return _summary(tasks, tunable, order, shares, progress, database, root, target, runner_text), database


def _by_share(picked: list, chosen: list[int], caps: list, total: int | None, runner,
              progress: tune_ms.Progress, log) -> tuple[dict, list[int], list, list]:
    """Measure each kernel's default schedule, then pick the kernels worth a search by their share of
    the model's time (tune/shares.py). Returns ({task index: (share, default seconds)}, the searched
    task indices, largest share first, their trial caps and measured defaults)."""
    measured = tune_ms.survey(picked, runner)
    # a first estimate of what a candidate costs on this machine now (the search's own replaces it)
    progress.searched_seconds, progress.searched = time.monotonic() - progress.start, len(picked)
    share = tune_shares.shares([float(t.weight) for t in picked], [m and m[1] for m in measured])
    keep = tune_shares.searched(share, total, progress.left())
    capped = tune_shares.trial_caps(share, keep, caps, total)
    ranked = sorted((i for i in range(len(picked)) if keep[i]), key=lambda i: -share[i])
    progress.names = [picked[i].task_name for i in ranked]
    progress.trials, progress.best = [0] * len(ranked), [None] * len(ranked)
    held = sum(share[i] for i in ranked)
    log.info(f"  tuning: measured {len(picked)} default schedule(s) in {time.monotonic() - progress.start:.0f} s; "
             f"searching {len(ranked)} kernel(s) that hold {held:.0%} of their time, largest first; "
             f"{len(picked) - len(ranked)} too small for the budget keep the default")
    surveyed = {chosen[i]: (s, m and m[1]) for i, (s, m) in enumerate(zip(share, measured))}
    return surveyed, [chosen[i] for i in ranked], [capped[i] for i in ranked], [measured[i] for i in ranked]


def _summary(tasks, tunable: int, order, shares: dict, progress: tune_ms.Progress, database, root, target,
             runner_text) -> dict:
    rows, new, ok = [], dict(zip(order, progress.trials)), ("tuned", "reused")
    for i, task in enumerate(tasks):
        records = tune_db.task_records(database, task.dispatched[0])
        best = tune_db.best_seconds(records[0]) if records else None
        status = "default" if best is None or best >= 1e9 else ("tuned" if new.get(i) else "reused")
        default = tune_ms.default_candidate(task.dispatched[0], task.target) if status in ok else None
        winner = None if default is None else (
            "default" if tune_ms.same_trace(records[0].trace, default.sch.trace) else "searched")
        default_us = min((tune_db.best_seconds(r) for r in records if default is not None and
                          tune_ms.same_trace(r.trace, default.sch.trace)), default=shares.get(i, (0, None))[1])
        if i >= tunable and status == "default":
            status = "elementwise"  # the default schedule by design (records from elsewhere would still apply)
        flops = _flops(task) if status in ok else None
        rows.append({"kernel": task.task_name, "weight": int(task.weight), "trials": tune_db.schedules(records),
                     "new_trials": new.get(i, 0), "best_us": round(best * 1e6, 3) if status in ok else None,
                     "gflops": round(flops / best / 1e9, 2) if flops and status in ok else None,
                     "status": status, "schedule": winner,
                     "default_us": round(default_us * 1e6, 3) if default_us else None,
                     "share": round(shares[i][0], 4) if i in shares else None})
    tuned = sum(r["status"] in ok for r in rows)
    stopped = progress.stopped or ("budget" if shares else "nothing to tune")
    return {"tasks": len(tasks), "tuned_tasks": tuned, "defaulted_tasks": len(tasks) - tuned,
            "trials": sum(progress.trials), "failed_trials": progress.failed,
            "seconds": round(time.monotonic() - progress.start, 1), "stopped_by": stopped,
            "runner": runner_text, "database": str(tune_db.folder_for(root, target)),
            **({"first_error": progress.first_error} if progress.first_error else {}), "kernels": rows}


def _flops(task) -> float | None:
    from tvm.s_tir.analysis import estimate_tir_flops
    try:
        return float(estimate_tir_flops(task.dispatched[0]))
    except Exception:  # an op the estimator does not know: no GFLOP/s column for it
        return None


def format_summary(summary: dict) -> str:
    """The per-kernel table for the build report."""
    lines = [f"  tuning: {summary['tuned_tasks']}/{summary['tasks']} kernels tuned, {summary['defaulted_tasks']} "
             f"on default schedules; {summary['trials']} trials in {summary['seconds']:g} s "
             f"(stopped by {summary['stopped_by']}) on {summary['runner']}",
             f"    {'kernel':<36} {'weight':>6} {'share':>6} {'trials':>7} {'new':>5} {'default us':>10} "
             f"{'best us':>10} {'speedup':>7} {'GFLOP/s':>8}  status  best schedule"]
    for row in sorted(summary["kernels"], key=lambda row: -(row.get("share") or 0)):  # largest share first
        best, default = (f"{row[k]:.2f}" if row.get(k) is not None else "-" for k in ("best_us", "default_us"))
        speedup = f"{row['default_us'] / row['best_us']:.2f}x" if row.get("default_us") and row["best_us"] else "-"
        share = f"{row['share']:.1%}" if row.get("share") is not None else "-"
        gflops = f"{row['gflops']:.1f}" if row["gflops"] is not None else "-"
        lines.append(f"    {row['kernel'][:36]:<36} {row['weight']:>6} {share:>6} {row['trials']:>7} "
                     f"{row['new_trials']:>5} {default:>10} {best:>10} {speedup:>7} {gflops:>8}  "
                     f"{row['status']:<6}  {row.get('schedule') or '-'}")
    if summary.get("first_error"):
        lines.append(f"    first failed measurement: {summary['first_error']}")
    return "\n".join(lines)
