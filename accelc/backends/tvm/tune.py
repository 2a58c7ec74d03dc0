"""MetaSchedule tuning with a target-aware, reusable database.

Records live under DATABASE/<key>/ where key hashes the full target and the TVM version, so
records tuned for one target are never applied to another (TVM issue #15549).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import tvm
from tvm import relax

from ...errors import RecipeError, ToolchainError


def database_key(target) -> str:
    spec = json.dumps(tvm.target.Target(target).export(), sort_keys=True, default=str)
    return hashlib.sha256(f"{spec}|tvm-{tvm.__version__}".encode()).hexdigest()[:16]


def open_database(root: Path, target):
    """The JSON database for this target; corrupt files are refused, never overwritten."""
    from tvm.s_tir import meta_schedule as ms
    folder = Path(root) / database_key(target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "target.json").write_text(json.dumps({"target": str(target), "tvm": tvm.__version__}) + "\n")
    except OSError as exc:
        raise RecipeError(f"tuning database {folder} is not writable: {exc.strerror or exc}", code="E601",
                          field="tuning.database") from None
    try:
        return ms.database.JSONDatabase(str(folder / "workloads.json"), str(folder / "records.json"),
                                        allow_missing=True)
    except (RuntimeError, ValueError) as exc:  # the JSON reader raises plain RuntimeError
        raise RecipeError(f"tuning database {folder} is corrupt ({str(exc).splitlines()[-1][:200]}); "
                          "it was left untouched", code="E602", field="tuning.database",
                          hint="move it aside or point tuning.database elsewhere") from None


def _build_without_intrinsics(mod, target, _params):
    """MetaSchedule's default f_build imports tvm.s_tir.tensor_intrin (~30 s per fresh worker here)
    and times out; CPU targets without tensor intrinsics need none of it."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _cpu_intrinsics_only(target) -> None:
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


def tuning_target(target, threads: int):
    """MetaSchedule needs the core count in the target; the build uses the same target so
    records match."""
    spec = dict(target.export())
    spec["num-cores"] = threads
    return tvm.target.Target({k: v for k, v in spec.items() if k not in ("id", "features")})


def tunable_module(mod: tvm.IRModule, target) -> tvm.IRModule:
    """The per-batch functions legalized and fused exactly as the build will see them,
    without the one-off weight transform (not worth tuning)."""
    from .pipeline import fusion_passes
    kept = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv.name_hint != "transform_params"})
    with target:
        return tvm.transform.Sequential(fusion_passes(target))(kept)


def tune(mod: tvm.IRModule, target, root: Path, trials: int, log=print, workers: int = 2):
    """Spend `trials` measured candidates on the module's kernels; returns (summary, database)."""
    from tvm.s_tir import meta_schedule as ms
    if target.kind.name != "llvm":
        raise ToolchainError(f"tuning for '{target.kind.name}' needs the device to measure on; "
                             "use an RPC runner (not available yet) or trials: 0", code="E503")
    _cpu_intrinsics_only(target)
    database = open_database(root, target)
    tunable = tunable_module(mod, target)
    tasks = ms.relax_integration.extract_tasks(tunable, target)
    before = len(database)
    log(f"  tuning {len(tasks)} task(s) with {trials} trial(s) in {Path(root) / database_key(target)}")
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    ms.relax_integration.tune_relax(
        mod=tunable, params={}, target=target, work_dir=str(Path(root) / database_key(target) / "logs"),
        max_trials_global=trials, num_trials_per_iter=min(64, max(8, trials // max(1, len(tasks)))),
        builder=ms.builder.LocalBuilder(f_build=_build_without_intrinsics, max_workers=workers, timeout_sec=60),
        runner=ms.runner.LocalRunner(timeout_sec=30), database=database)
    tuned = sum(1 for task in tasks if database.has_workload(task.dispatched[0]))
    return {"tasks": len(tasks), "tuned_tasks": tuned, "trials": trials, "new_records": len(database) - before,
            "database": str(Path(root) / database_key(target))}, database
