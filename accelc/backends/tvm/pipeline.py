"""Per-target Relax pass lists as plain functions concatenated into a pipeline
(after TVM's relax/backend/*/pipeline.py)."""
from __future__ import annotations

import tvm
from tvm import relax


def prepare_passes(target) -> list:
    """Target-independent clean-up before lowering."""
    from accelc.backends.tvm.layout_sink import SinkLayoutTransforms
    return [
        relax.transform.DecomposeOpsForInference(),  # batch_norm etc. into elementwise ops
        SinkLayoutTransforms,  # NHWC convolutions in NCHW models: the transposes between them cancel
        relax.transform.LiftTransformParams(shared_transform=True),  # weight transposes run once at load
        relax.transform.FoldConstant(),
    ]


def _backend_passes(backend, target, database) -> list:
    """A TVM backend's own lists, with tuning records applied after fusion and before
    any default schedule (DLight on GPUs), so tuned kernels win over defaults."""
    legalize = backend.legalize_passes(target)
    fused = [p for p in legalize if p.info.name != "ApplyDefaultSchedule"]
    schedules = [p for p in legalize if p.info.name == "ApplyDefaultSchedule"]
    apply_db = [relax.transform.MetaScheduleApplyDatabase(enable_warning=False)] if database else []
    return (backend.library_dispatch_passes(target) + fused + apply_db + schedules
            + backend.dataflow_lower_passes(target) + backend.finalize_passes(target))


def cpu_pipeline(target, database=None, unaligned=None) -> list:
    from tvm.relax.backend.cpu_generic import pipeline as backend
    from tvm.s_tir import dlight

    from accelc.backends.tvm import intrin
    from accelc.backends.tvm.kernels import isa
    from accelc.backends.tvm.schedules import RULES
    from accelc.backends.tvm.schedules.rule import Tagged
    intrin.register_for(isa.of(target))  # before tuning records that tensorize are replayed
    passes = _backend_passes(backend, target, database)
    # Kernels without a tuning record get a default schedule instead of naive loops.
    defaults = dlight.ApplyDefaultSchedule(*(Tagged(pattern, rule) for pattern, rule in RULES))
    at = next(i for i, p in enumerate(passes) if p.info.name == "RewriteDataflowReshape")
    # Inputs are looked at once reshapes have become views (a view of an input passed to a kernel
    # keeps the input aligned), before calls turn into VM instructions.
    return passes[:at] + [defaults, passes[at], *([unaligned] if unaligned is not None else [])] + passes[at + 1:]


def cuda_pipeline(target, database=None, _unaligned=None) -> list:  # inputs are copied to the GPU anyway
    from tvm.relax.backend.cuda import pipeline as backend
    return _backend_passes(backend, target, database)


def fusion_passes(target) -> list:
    """Legalize + fuse as the target's build pipeline does (what tuning tasks are extracted from)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.relax.backend.cuda import pipeline as cuda
    backend = cuda if target.kind.name == "cuda" else cpu
    return [p for p in backend.legalize_passes(target) if p.info.name != "ApplyDefaultSchedule"]


PIPELINES = {"llvm": cpu_pipeline, "cuda": cuda_pipeline}


def build_pipeline(target, database=None, unaligned=None) -> tvm.transform.Pass:
    """The whole Relax pipeline for a target kind, optionally applying tuning records; on CPU targets
    an input_alignment.UnalignedInputs pass, when given, relaxes the inputs' alignment."""
    passes = PIPELINES[target.kind.name](target, database, unaligned)
    return tvm.transform.Sequential(passes, name=f"accelc_{target.kind.name}")
