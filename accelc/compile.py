"""The build: the only place that knows the order of the stages."""
from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from accelc import __version__
from accelc.artifact import store as artifact
from accelc.capture import export as capture
from accelc.verify import gate_data as data
from accelc.capture import index_bounds
from accelc.verify import metrics
from accelc.config import recipe as recipe_mod
from accelc.config import targets
from accelc.verify import compare as verify
from accelc.artifact import cache as build_cache
from accelc.errors import TuningError, VerificationError


@dataclass
class BuildResult:
    output: Path
    manifest: dict
    report: dict
    timings: dict = field(default_factory=dict)


class Progress:
    """Numbered stage lines with timings: long steps announce themselves."""

    def __init__(self, log: Callable[[str], None], total: int):
        self.log, self.total, self.step, self.timings = log, total, 0, {}
        self._name, self._start = None, 0.0

    def __call__(self, name: str) -> None:
        self.done()
        self.step += 1
        self._name, self._start = name, time.perf_counter()
        self.log(f"[{self.step}/{self.total}] {name} ...")

    def done(self) -> None:
        if self._name:
            self.timings[self._name] = round(time.perf_counter() - self._start, 3)
            self._name = None


def build(recipe_path, target: str | None = None, output: str | Path | None = None,
          log: Callable[[str], None] = print, use_cache: bool = False) -> BuildResult:
    """Recipe -> verified artifact directory. Raises a coded AccelcError for user mistakes.
    With `use_cache` (the CLI's default), inputs built and verified before give the cached artifact
    without any work (cache.py)."""
    stage = Progress(log, 6)
    loaded, spec = _load(recipe_path, target, stage)
    recipe = loaded.recipe
    spec.check_toolchain()
    out = Path(output) if output else loaded.resolve(recipe.output.format(name=recipe.name, target=spec.name),
                                                          "output")
    keys = [build_cache.key(loaded, spec)] if use_cache else []
    cached = build_cache.fetch(keys, out, loaded, log) if keys else None
    if cached is not None:
        stage.done()
        log(verify.format_report(cached["verification"]))
        log(f"artifact: {out} (verified, from the build cache)")
        return BuildResult(out, cached, cached["verification"], stage.timings)
    if recipe.tuning.enabled:
        _check_tuning(loaded, spec)
    validation = data.validation_data(loaded) if recipe.verify.metric else None  # bad data fails before work
    artifact.preflight(out)  # a foreign --output or a bad signing key fails now, not after compiling

    from accelc.backends.tvm.lower import relax as lower  # the compiler side: imported only when building

    captured, graph, pass_reports, programs, lowered = _lower(loaded, spec, stage, log, "and compiling ")
    tvm_target, tuning, database = spec.tvm_target(), {"trials": 0}, None
    if recipe.tuning.enabled:  # only kernels without records are tuned: a rebuild never pays twice
        tvm_target, tuning, database = _tune(loaded, spec, lowered, log, mode="missing")
        keys = list(dict.fromkeys([*keys, build_cache.key(loaded, spec)])) if keys else keys  # + new records
    executable = lower.compile_module(lowered, tvm_target, database, spec.cuda_archs)
    stage("writing the artifact")
    with artifact.staging(out) as tmp:
        device_code = lower.export_library(executable, tmp / artifact.LIBRARY, spec)  # CUDA: what is embedded
        lower.save_params(lowered.params, tmp / artifact.PARAMS)
        manifest = {**_manifest(loaded, spec, captured, programs, lowered, pass_reports), "tuning": tuning,
                    **({"device_code": device_code} if device_code else {}),
                    **({"cache": {"keys": keys}} if keys else {})}
        if device_code:
            log(f"device code: {device_code['format']} with machine code for {', '.join(device_code['sass'])} "
                f"(+ PTX {', '.join(device_code['ptx'])}), nvcc {device_code['cuda']}; no CUDA source embedded")
        artifact.write_manifest(tmp, {**manifest, "verification": {"status": "pending"}})
        stage("verifying the artifact")
        report = _verify(loaded, spec, captured, graph if pass_reports else None, tmp, validation,
                         lowered.input_ranges)
        manifest = artifact.write_manifest(tmp, {**manifest, "verification": report,
                                                 "verified": report["status"] == "passed"})
        log(verify.format_report(report))
        if report.get("runner"):
            log(f"  (ran under {report['runner']})")
        if report["status"] == "failed":
            raise VerificationError(f"{_failure(report)}; nothing was written to {out}", code="E600")
    stage.done()
    if keys and manifest["verified"]:  # an unverified build (no emulator yet) is not worth keeping
        build_cache.store(keys, out, loaded, log)
    log(f"artifact: {out} ({'verified' if manifest['verified'] else 'NOT verified'})")
    return BuildResult(out, manifest, report, stage.timings)


def _load(recipe_path, target: str | None, stage):
    """The recipe and its target (--target wins over the recipe's), checked against each other."""
    stage("loading recipe and target")
    loaded = recipe_mod.load(recipe_path)
    spec = targets.resolve(target or loaded.recipe.target, loaded.root,
                           None if target else loaded.where("target"))
    targets.check_compatible(spec, loaded.recipe, loaded.where)
    return loaded, spec


def _lower(loaded, spec, stage, log, also: str = ""):
    """Capture, passes and Relax: what a build and `accelc tune` share, so both see the same kernels."""
    from accelc.backends.tvm.lower import relax as lower
    from accelc.passes import PassContext, run_passes
    recipe = loaded.recipe
    stage("capturing the model with torch.export")
    captured = capture.capture(loaded)
    stage(f"running {len(recipe.passes)} pass(es)")
    graph, pass_reports = run_passes(captured.graph, list(recipe.passes),
                                     PassContext(captured.example_inputs, loaded, log))
    stage(f"lowering to Relax {also}for {spec.name}")
    from accelc.backends.tvm.lower import repairs
    repaired = repairs.repair_graph(graph)  # before re-export: faults of torch.export and TVM worked around
    # inputs that index tables get their range (the runtime checks it); other indices are clamped
    bounds = index_bounds.bound_indices(graph, recipe.model.inputs, loaded.where)
    if bounds.rewritten:
        repaired.append({"repair": "index_bounds", "nodes": bounds.rewritten})
    try:
        programs = lower.export_programs(graph, recipe.model.inputs, recipe.model.batch)
    except Exception as exc:  # the captured graph exported once; failing now means a pass broke it
        exc.add_note(f"re-exporting the rewritten graph failed after passes: "
                     f"{', '.join(r['kind'] for r in pass_reports) or 'none'}")
        raise
    lowered = lower.to_relax(programs, spec.tvm_target())
    lowered.repairs[:0] = repaired
    lowered.input_ranges = bounds.ranges
    for applied in lowered.repairs:
        log(f"  repair {applied['repair']}: {len(applied['nodes'])} node(s) ({', '.join(applied['nodes'][:4])}"
            f"{', ...' if len(applied['nodes']) > 4 else ''})")
    return captured, graph, pass_reports, programs, lowered


def _check_tuning(loaded, spec) -> None:
    """Checked before any work: an unwritable database or an unreachable RPC farm fails now."""
    from accelc.backends.tvm.tune import driver as tune
    from accelc.backends.tvm.tune import database as tune_db
    section = loaded.recipe.tuning
    tune.tuning_target(spec.tvm_target(), section.threads, loaded.where("tuning"))  # CPU targets only
    tune_db.check_root(loaded.resolve(section.database, "tuning", "database"), loaded.where("tuning", "database"))
    tune.check_runner(section, spec.runs_here(), loaded.where)


def _tune(loaded, spec, lowered, log, mode: str):
    """(tuning target, summary, database): the build compiles for the target the records are for."""
    from accelc.backends.tvm.tune import driver as tune
    section = loaded.recipe.tuning
    target = tune.tuning_target(spec.tvm_target(), section.threads, loaded.where("tuning"))
    summary, database = tune.tune(lowered.mod, target, loaded.resolve(section.database, "tuning", "database"),
                                  section, mode=mode, runs_here=spec.runs_here(), where=loaded.where, log=log)
    log(tune.format_summary(summary))
    return target, summary, database


def tune_recipe(recipe_path, target: str | None = None, resume: bool = False,
                log: Callable[[str], None] = print) -> dict:
    """`accelc tune`: the kernels a build of the recipe would compile, tuned into the database;
    no artifact. `resume` tops kernels up to their budget instead of spending it all again."""
    stage = Progress(log, 4)
    loaded, spec = _load(recipe_path, target, stage)
    if not loaded.recipe.tuning.enabled:
        raise TuningError("the recipe sets no tuning budget", code="E616", location=loaded.where("tuning"),
                          field="tuning", hint="set tuning.trials, tuning.per_task or tuning.time_budget")
    _check_tuning(loaded, spec)
    lowered = _lower(loaded, spec, stage, log, "and tuning ")[-1]
    summary = _tune(loaded, spec, lowered, log, "resume" if resume else "fresh")[1]
    stage.done()
    return summary


def _failure(report: dict) -> str:
    metric = report.get("metric")
    if metric and not metric["passed"]:
        return (f"metric {metric['name']} got worse by {metric['drop']:.6g} (original {metric['original']:.6f}, "
                f"compiled {metric['compiled']:.6f}); verify.metric.max_drop is {metric['max_drop']:g}")
    return "the compiled module does not match the original model"


def _verify(loaded, spec, captured: capture.Captured, rewritten, folder: Path, validation=None,
            ranges: dict | None = None) -> dict:
    """Two tiers: the artifact vs the rewritten graph within the tolerance (proves the compilation),
    and vs the original model by the task metric (judges the passes). Without passes both are the
    original model."""
    ok, why = spec.runs_here()
    if not ok:
        return _verify_emulated(loaded, spec, captured, rewritten, folder, validation, why, ranges)
    from accelc.runtime import predictor as runtime
    return _compare(loaded, captured, rewritten, runtime.load(folder), validation, ranges)


def _verify_emulated(loaded, spec, captured: capture.Captured, rewritten, folder: Path, validation,
                     why: str, ranges: dict | None = None) -> dict:
    """Off-host CPU targets run under a user-mode emulator when its root is set up (emulate.py)."""
    if not spec.emulator:
        later = "; verify it on a GPU host (accelc verify, benchmarks/gpu_check.sh)" if spec.device == "cuda" else ""
        return verify.skipped(f"target '{spec.name}' cannot run on this machine: {why}{later}")
    from accelc import emulate
    reason = emulate.unavailable(spec)
    if reason is None:
        try:
            with emulate.EmulatedPredictor(folder, spec) as predictor:
                return {**_compare(loaded, captured, rewritten, predictor, validation, ranges),
                        "runner": predictor.description}
        except emulate.EmulatorUnavailable as exc:  # a broken root skips verification, never the build
            reason = f"{exc}; rebuild the root with `{emulate.SETUP_COMMAND} --force`"
    return verify.skipped(f"target '{spec.name}' cannot run on this machine ({why}) and cannot be emulated: "
                          f"{reason}")


def _compare(loaded, captured: capture.Captured, rewritten, predictor, validation,
             ranges: dict | None = None) -> dict:
    """The artifact (native or emulated predictor) vs the rewritten graph on the samples (ids drawn
    from `ranges`, the manifest's), and vs the original eager model by the metric."""
    run_compiled = lambda arrays: predictor.predict(*arrays)  # noqa: E731
    specs, sizes = loaded.recipe.model.inputs, loaded.recipe.model.batch
    run_reference = capture.eager_runner(captured.model, specs, sizes)
    run_rewritten = capture.eager_runner(rewritten, specs, sizes) if rewritten is not None else run_reference
    report = verify.verify(run_compiled, run_rewritten, sample_sets(loaded, ranges),
                           loaded.recipe.verify.tolerance.atol,
                           loaded.recipe.verify.tolerance.rtol, captured.output_names)
    report["reference"] = "rewritten graph (after passes)" if rewritten is not None else "original model"
    gate = loaded.recipe.verify.metric
    if gate and validation is not None:  # the task metric: original eager model vs the artifact
        report["metric"] = metrics.evaluate(gate.name, gate.max_drop, run_compiled, run_reference, *validation,
                                            max(loaded.recipe.model.batch))
        if not report["metric"]["passed"]:
            report["status"] = "failed"
    return report


def sample_sets(loaded, ranges: dict | None = None) -> list[tuple[int, list]]:
    """(batch, [inputs, ...]) per built batch size: the recipe's sample source, or seeded random
    (with `ranges`, the manifest's [low, high) per input name: ids that index the whole table)."""
    recipe = loaded.recipe
    source = None
    if recipe.data.samples:
        source = capture.import_entrypoint(recipe.data.samples, loaded.root, loaded.where("data", "samples"),
                                           field="data.samples")
    sizes = list(recipe.model.batch)
    if sizes[0] + 1 not in sizes:
        sizes.append(sizes[0] + 1)  # a size that was not built: exercises the runtime's padding
    sets = []
    for batch in sizes:
        samples = []
        for i in range(recipe.verify.samples):
            seed = recipe.verify.seed + 1000 * batch + i
            arrays = source(batch, seed) if source else capture.random_inputs(recipe.model.inputs, batch, seed,
                                                                              ranges)
            samples.append(tuple(np.asarray(a) for a in (arrays if isinstance(arrays, (tuple, list)) else [arrays])))
        sets.append((batch, samples))
    return sets


def _manifest(loaded, spec, captured: capture.Captured, programs, lowered, pass_reports) -> dict:
    import torch
    import tvm

    from accelc.backends.tvm.lower import relax as lower
    recipe = loaded.recipe
    reference = capture.run_eager(captured.model, [t.numpy() for t in captured.example_inputs])
    batch = captured.example_inputs[0].shape[0] if captured.example_inputs else 1
    return {
        "accelc": __version__,
        "name": recipe.name,
        "recipe": {"path": str(loaded.path), "sha256": hashlib.sha256(loaded.text.encode()).hexdigest(),
                   "text": loaded.text},
        "target": {"name": spec.name, "tvm": spec.tvm, "host": spec.host, "device": spec.device, "arch": spec.arch,
                   "cpu_features": spec.cpu_features, "cuda_archs": spec.cuda_archs},
        "batch": recipe.model.batch,
        "inputs": [{"name": s.name, "shape": s.shape, "dtype": s.dtype,
                    **({"columns": s.columns} if s.columns else {}), **({"units": s.units} if s.units else {}),
                    **({"range": list(lowered.input_ranges[s.name])} if s.name in lowered.input_ranges else {}),
                    **({"unaligned": True} if i in lowered.unaligned_inputs else {})}  # no 64-byte copy needed
                   for i, s in enumerate(recipe.model.inputs)],
        "outputs": [{"name": n, "shape": ["batch" if i == 0 and r.ndim and r.shape[0] == batch else d
                                          for i, d in enumerate(r.shape)], "dtype": str(r.dtype)}
                    for n, r in zip(captured.output_names, reference)],
        "functions": {str(b): lower.function_name(b) for b in programs},
        "params": list(lowered.params),
        "param_bytes": int(sum(p.nbytes for p in lowered.params.values())),
        "passes": pass_reports,
        "repairs": lowered.repairs,
        "versions": {"accelc": __version__, "torch": torch.__version__, "tvm": tvm.__version__,
                     "llvm": _llvm_version(), "python": platform.python_version(), "numpy": np.__version__},
    }


def _llvm_version() -> str | None:
    try:
        import tvm
        return str(tvm.target.codegen.llvm_version_major())
    except Exception:  # TVM built without LLVM
        return None
