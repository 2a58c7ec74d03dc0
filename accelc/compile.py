"""The build: the only place that knows the order of the stages."""
from __future__ import annotations

import hashlib
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accelc import __version__, logs
from accelc.artifact import store as artifact
from accelc.artifact.manifest import (BATCH, PENDING, BuildCache, DeviceCode, Dim, Manifest, PassReport,
                                      RecipeSource, Repair, TargetInfo, TensorSpec, Tuning, Verification, Versions,
                                      bucket_key)
from accelc.capture import export as capture
from accelc.verify import gate_data as data
from accelc.capture import index_bounds
from accelc.verify import metrics
from accelc.config import resolve
from accelc.config.recipe import Recipe
from accelc.config.targets import Target
from accelc.verify import compare as verify
from accelc.verify import samples as samples_mod
from accelc.verify.sqnr import floors as sqnr_floors
from accelc.artifact import cache as build_cache
from accelc.errors import TuningError, VerificationError

_LOG = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """What `accelc.build` made: the artifact directory, its manifest, the verification report and
    seconds per stage."""

    output: Path
    manifest: Manifest
    report: dict
    timings: dict = field(default_factory=dict)


class Progress:
    """Numbered stage lines with timings: long steps announce themselves."""

    def __init__(self, log: logs.Logger, total: int):
        self.log, self.total, self.step, self.timings = log, total, 0, {}
        self._name, self._start = None, 0.0

    def __call__(self, name: str) -> None:
        self.done()
        self.step += 1
        self._name, self._start = name, time.perf_counter()
        self.log.info(f"[{self.step}/{self.total}] {name} ...")

    def done(self) -> None:
        if self._name:
            self.timings[self._name] = round(time.perf_counter() - self._start, 3)
            self._name = None


def build(recipe: str | Path | Recipe, target: str | Target | None = None, *, output: str | Path | None = None,
          cache: bool = False, logger: logs.Logger | None = None) -> BuildResult:
    """Recipe (a YAML file or a Recipe object) -> verified artifact directory.

    `target` (a name, an alias or a Target) wins over the recipe's; `output` over its `output:`.
    With `cache` (the CLI's default), inputs built and verified before give the cached artifact
    without any work (artifact/cache.py). Progress goes to `logger` (default: accelc's module
    loggers) as logging records; nothing is printed. Raises a coded AccelcError for user mistakes,
    VerificationError when the artifact does not match the model (nothing is written then)."""
    log = logger or _LOG
    stage = Progress(log, 6)
    loaded, spec = _load(recipe, target, stage)
    recipe = loaded.recipe
    spec.check_toolchain()
    out = Path(output) if output else loaded.resolve(recipe.output.format(name=recipe.name, target=spec.name),
                                                          "output")
    keys = [build_cache.key(loaded, spec)] if cache else []
    cached = build_cache.fetch(keys, out, loaded, logger=logger) if keys else None
    if cached is not None:
        stage.done()
        report = cached.verification.to_json()
        log.info(verify.format_report(report))
        log.info(f"artifact: {out} (verified, from the build cache)")
        return BuildResult(out, cached, report, stage.timings)
    if recipe.tuning.enabled:
        _check_tuning(loaded, spec)
    validation = data.validation_data(loaded) if recipe.verify.metric else None  # bad data fails before work
    artifact.preflight(out)  # a foreign --output or a bad signing key fails now, not after compiling

    from accelc.backends.tvm.lower import relax as lower  # the compiler side: imported only when building

    captured, graph, pass_reports, programs, lowered = _lower(loaded, spec, stage, logger, "and compiling ")
    samples_mod.check_ranges(loaded, lowered.input_ranges)  # integer inputs sampled from a known range
    tvm_target, tuning, database = spec.tvm_target(), {"trials": 0}, None
    if recipe.tuning.enabled:  # only kernels without records are tuned: a rebuild never pays twice
        tvm_target, tuning, database = _tune(loaded, spec, lowered, logger, mode="missing")
        keys = list(dict.fromkeys([*keys, build_cache.key(loaded, spec)])) if keys else keys  # + new records
    executable = lower.compile_module(lowered, tvm_target, database, spec.cuda_archs)
    stage("writing the artifact")
    with artifact.staging(out) as tmp:
        device_code = lower.export_library(executable, tmp / artifact.LIBRARY, spec)  # CUDA: what is embedded
        lower.save_params(lowered.params, tmp / artifact.PARAMS)
        manifest = _manifest(loaded, spec, captured, programs, lowered, pass_reports, tuning, device_code, keys)
        if device_code:
            log.info(f"device code: {device_code['format']} with machine code for {', '.join(device_code['sass'])} "
                     f"(+ PTX {', '.join(device_code['ptx'])}), nvcc {device_code['cuda']}; no CUDA source embedded")
        artifact.write_manifest(tmp, manifest)  # verification pending: the runtime loads it to verify
        stage("verifying the artifact")
        report = _verify(loaded, spec, captured, graph if pass_reports else None, tmp, validation,
                         lowered.input_ranges)
        manifest = artifact.write_manifest(tmp, manifest.with_verification(Verification.parse(report)))
        log.info(verify.format_report(report))
        if report.get("runner"):
            log.info(f"  (ran under {report['runner']})")
        if report["status"] == "failed":
            raise VerificationError(f"{_failure(report)}; nothing was written to {out}", code="E600")
    stage.done()
    if keys and manifest.verified:  # an unverified build (no emulator yet) is not worth keeping
        build_cache.store(keys, out, loaded, logger=logger)
    if manifest.verified:
        log.info(f"artifact: {out} (verified)")
    else:  # written, but nobody has checked it yet: the user has to, elsewhere
        log.warning(f"artifact: {out} (NOT verified)")
    return BuildResult(out, manifest, report, stage.timings)


def _load(recipe: resolve.RecipeLike, target: str | Target | None, stage):
    """The recipe and its target (an explicit one wins over the recipe's), checked against each other."""
    stage("loading recipe and target")
    return resolve.recipe_and_target(recipe, target)


def _lower(loaded, spec, stage, logger: logs.Logger | None, also: str = ""):
    """Capture, passes and Relax: what a build and `accelc tune` share, so both see the same kernels."""
    from accelc.backends.tvm.lower import relax as lower
    from accelc.passes import PassContext, run_passes
    recipe = loaded.recipe
    stage("capturing the model with torch.export")
    captured = capture.capture(loaded)
    stage(f"running {len(recipe.passes)} pass(es)")
    graph, pass_reports = run_passes(captured.graph, list(recipe.passes),
                                     PassContext(captured.example_inputs, loaded, logger, target=spec))
    stage(f"lowering to Relax {also}for {spec.name}")
    from accelc.backends.tvm.lower import repairs
    repaired = repairs.repair_graph(graph)  # before re-export: faults of torch.export and TVM worked around
    # inputs that index tables get their range (the runtime checks it); other indices are clamped
    bounds = index_bounds.bound_indices(graph, recipe.model.inputs, loaded.where)
    if bounds.rewritten:
        repaired.append({"repair": "index_bounds", "nodes": bounds.rewritten})
    try:
        programs = lower.export_programs(graph, recipe.model.inputs, recipe.model.batch, recipe.model.dims)
    except Exception as exc:  # the captured graph exported once; failing now means a pass broke it
        exc.add_note(f"re-exporting the rewritten graph failed after passes: "
                     f"{', '.join(r['kind'] for r in pass_reports) or 'none'}")
        raise
    lowered = lower.to_relax(programs, spec.tvm_target())
    lowered.repairs[:0] = repaired
    lowered.input_ranges = bounds.ranges
    for applied in lowered.repairs:  # a detail: the manifest lists them too
        (logger or _LOG).debug(f"  repair {applied['repair']}: {len(applied['nodes'])} node(s) "
                               f"({', '.join(applied['nodes'][:4])}{', ...' if len(applied['nodes']) > 4 else ''})")
    return captured, graph, pass_reports, programs, lowered


def _check_tuning(loaded, spec) -> None:
    """Checked before any work: an unwritable database or an unreachable RPC farm fails now."""
    from accelc.backends.tvm.tune import driver as tune
    from accelc.backends.tvm.tune import database as tune_db
    section = loaded.recipe.tuning
    tune.tuning_target(spec.tvm_target(), section.threads, loaded.where("tuning"))  # CPU targets only
    tune_db.check_root(loaded.resolve(section.database, "tuning", "database"), loaded.where("tuning", "database"))
    tune.check_runner(section, spec.runs_here(), loaded.where)


def _tune(loaded, spec, lowered, logger: logs.Logger | None, mode: str):
    """(tuning target, summary, database): the build compiles for the target the records are for."""
    from accelc.backends.tvm.tune import driver as tune
    section = loaded.recipe.tuning
    target = tune.tuning_target(spec.tvm_target(), section.threads, loaded.where("tuning"))
    summary, database = tune.tune(lowered.mod, target, loaded.resolve(section.database, "tuning", "database"),
                                  section, mode=mode, runs_here=spec.runs_here(), where=loaded.where, logger=logger)
    (logger or _LOG).info(tune.format_summary(summary))
    return target, summary, database


def tune_recipe(recipe: str | Path | Recipe, target: str | Target | None = None, *, resume: bool = False,
                logger: logs.Logger | None = None) -> dict:
    """`accelc tune` (`accelc.tune`): the kernels a build of the recipe would compile, tuned into the
    recipe's tuning database; no artifact. `resume` tops kernels up to their budget instead of
    spending it all again. Returns the tuning summary; progress goes to `logger` as in `build`."""
    stage = Progress(logger or _LOG, 4)
    loaded, spec = _load(recipe, target, stage)
    if not loaded.recipe.tuning.enabled:
        raise TuningError("the recipe sets no tuning budget", code="E616", location=loaded.where("tuning"),
                          field="tuning", hint="set tuning.trials, tuning.per_task or tuning.time_budget")
    _check_tuning(loaded, spec)
    lowered = _lower(loaded, spec, stage, logger, "and tuning ")[-1]
    summary = _tune(loaded, spec, lowered, logger, "resume" if resume else "fresh")[1]
    stage.done()
    return summary


def _failure(report: dict) -> str:
    """The E600 message: each failing output with its reference, batch and numbers, and the metric."""
    failed = verify.failures(report)
    metric = report.get("metric")
    if metric and not metric["passed"]:
        failed.append(f"metric {metric['name']} got worse by {metric['drop']:.6g} (original "
                      f"{metric['original']:.6f}, compiled {metric['compiled']:.6f}); verify.metric.max_drop is "
                      f"{metric['max_drop']:g}")
    shown = "; ".join(failed[:3]) + (f"; and {len(failed) - 3} more" if len(failed) > 3 else "")
    return shown or f"the compiled module does not match the {report.get('reference', 'original model')}"


def _verify(loaded, spec, captured: capture.Captured, rewritten, folder: Path, validation=None,
            ranges: dict | None = None) -> dict:
    """Two tiers: the artifact vs the rewritten graph within the tolerance (proves the compilation),
    and vs the original model by the task metric (judges the passes). Without passes both are the
    original model."""
    ok, why = spec.runs_here()
    if not ok:
        return _verify_emulated(loaded, spec, captured, rewritten, folder, validation, why, ranges)
    from accelc.runtime import predictor as runtime
    return verify_predictor(loaded, captured, rewritten, runtime.load(folder), validation, ranges)


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
                return {**verify_predictor(loaded, captured, rewritten, predictor, validation, ranges,
                                           artifact.load_manifest(folder)),
                        "runner": predictor.description}
        except emulate.EmulatorUnavailable as exc:  # a broken root skips verification, never the build
            reason = f"{exc}; rebuild the root with `{emulate.SETUP_COMMAND} --force`"
    return verify.skipped(f"target '{spec.name}' cannot run on this machine ({why}) and cannot be emulated: "
                          f"{reason}")


def verify_predictor(loaded, captured: capture.Captured, rewritten, predictor, validation=None,
                     ranges: dict | None = None, manifest: Manifest | None = None) -> dict:
    """The artifact (native or emulated predictor) vs the rewritten graph on the samples (ids drawn
    from `ranges`, the manifest's), and vs the original eager model by SQNR and the metric; the
    build's check, and `accelc verify`'s again."""
    run_compiled = lambda arrays: predictor.predict(*arrays)  # noqa: E731
    specs, sizes = loaded.recipe.model.inputs, loaded.recipe.model.batch
    run_reference = capture.eager_runner(captured.model, specs, sizes)
    run_rewritten = capture.eager_runner(rewritten, specs, sizes) if rewritten is not None else run_reference
    sets, compared = sample_sets(loaded, ranges), (run_compiled, run_rewritten, run_reference)
    if loaded.recipe.model.dims:  # padding must be invisible, then only the real positions are compared
        compared = bucketed(manifest or predictor.manifest, loaded, sets, run_reference, *compared)
    tolerance = loaded.recipe.verify.tolerance
    report = verify.verify(*compared[:2], sets, tolerance.atol, tolerance.rtol, captured.output_names,
                           sqnr_floors(loaded.recipe), compared[2] if rewritten is not None else None)
    report["reference"] = "rewritten graph (after passes)" if rewritten is not None else "original model"
    gate = loaded.recipe.verify.metric
    if gate and validation is not None:  # the task metric: original eager model vs the artifact
        report["metric"] = metrics.evaluate(gate.name, gate.max_drop, run_compiled, run_reference, *validation,
                                            max(loaded.recipe.model.batch))
        if not report["metric"]["passed"]:
            report["status"] = "failed"
    return report


def bucketed(manifest: Manifest, loaded, sets: list, run_eager, *runs):
    """`runs` compared at the real positions of a named dimension, once the eager model is shown to
    ignore the padding (verify/buckets.py; E602 otherwise)."""
    from accelc.runtime.buckets import Buckets
    from accelc.verify import buckets
    cuts, batched = Buckets.of(manifest), [o.batched for o in manifest.outputs]
    tolerance = loaded.recipe.verify.tolerance
    buckets.check_padding(run_eager, sets, cuts, batched, tolerance.atol, tolerance.rtol,
                          [o.name for o in manifest.outputs])
    return [buckets.at_real_positions(run, cuts, batched) for run in runs]


def sample_sets(loaded, ranges: dict | None = None) -> list[tuple]:
    """(batch, [inputs, ...]) per built batch size: the recipe's sample source, or seeded random
    (with `ranges`, the manifest's [low, high) per input name: ids that index the whole table);
    with a named dimension and no source, (batch, [inputs, ...], {"bucket": ...}) per bucket too."""
    recipe = loaded.recipe
    source = samples_mod.source(loaded)  # data.samples with its args, or None
    if source is None and recipe.model.dims:
        from accelc.verify import buckets
        return buckets.sample_sets(recipe, capture.random_inputs, ranges)
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
            samples.append(arrays)
        sets.append((batch, samples))
    return sets


def _manifest(loaded, spec, captured: capture.Captured, programs, lowered, pass_reports: list[dict], tuning: dict,
              device_code: dict | None, keys: list[str]) -> Manifest:
    """The artifact's manifest, its verification pending."""
    import torch
    import tvm

    from accelc.artifact.manifest import KernelOrigin
    from accelc.backends.tvm.lower import relax as lower
    recipe, ranges = loaded.recipe, lowered.input_ranges
    reference = capture.run_eager(captured.model, [t.numpy() for t in captured.example_inputs])
    batch = next((t.shape[s.shape.index("batch")] for s, t in zip(recipe.model.inputs, captured.example_inputs)
                  if "batch" in s.shape), None)  # the first input may have none (EmbeddingBag's ids)
    inputs = tuple(TensorSpec(s.name, tuple(s.shape), s.dtype, tuple(ranges[s.name]) if s.name in ranges else None,
                              tuple(s.columns) if s.columns else None, tuple(s.units) if s.units else None,
                              unaligned=i in lowered.unaligned_inputs)  # unaligned: no 64-byte copy needed
                   for i, s in enumerate(recipe.model.inputs))
    named = captured.output_dims or [{} for _ in reference]  # axes that follow a named dimension (seq)
    outputs = tuple(TensorSpec(n, tuple(BATCH if i == 0 and r.ndim and r.shape[0] == batch else axes.get(i, d)
                                        for i, d in enumerate(r.shape)), str(r.dtype))
                    for n, r, axes in zip(captured.output_names, reference, named))
    return Manifest(
        accelc=__version__, name=recipe.name,
        recipe=RecipeSource(str(loaded.path), hashlib.sha256(loaded.text.encode()).hexdigest(), loaded.text),
        target=TargetInfo(spec.name, spec.tvm, spec.host, spec.device, spec.arch, tuple(spec.cpu_features),
                          tuple(spec.cuda_archs)),
        batch=tuple(recipe.model.batch), inputs=inputs, outputs=outputs,
        functions={bucket_key(b, sizes): lower.function_name(b, *sizes) for b, sizes in map(_key, programs)},
        params=tuple(lowered.params),
        param_bytes=int(sum(p.nbytes for p in lowered.params.values())),
        passes=tuple(PassReport.parse(r, f"passes[{i}]") for i, r in enumerate(pass_reports)),
        repairs=tuple(Repair.parse(r, f"repairs[{i}]") for i, r in enumerate(lowered.repairs)),
        versions=Versions(__version__, str(torch.__version__), tvm.__version__, _llvm_version(),
                          platform.python_version(), np.__version__),
        tuning=Tuning.parse(tuning, "tuning"), verification=PENDING, verified=False,
        device_code=DeviceCode.parse(device_code, "device_code") if device_code else None,
        cache=BuildCache(tuple(keys)) if keys else None,
        dims=tuple(Dim(n, tuple(d.sizes), dict(d.pad), d.mask) for n, d in recipe.model.dims.items()) or None,
        kernels=tuple(KernelOrigin.parse(k, f"kernels[{i}]") for i, k in enumerate(lowered.kernels)) or None)


def _key(program_key) -> tuple:
    """(batch, sizes) of an export_programs key: a batch size (or None), or (batch, size)."""
    return (program_key[0], program_key[1:]) if isinstance(program_key, tuple) else (program_key, ())


def _llvm_version() -> str | None:
    try:
        import tvm
        return str(tvm.target.codegen.llvm_version_major())
    except Exception:  # TVM built without LLVM
        return None
