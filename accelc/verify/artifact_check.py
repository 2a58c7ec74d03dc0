"""`accelc verify ARTIFACT`: rebuild the original model (and the passes' graph) from the recipe
stored in the manifest and verify the artifact again by the build's contract (e.g. on the
production host)."""
from __future__ import annotations

from pathlib import Path

from accelc.artifact import store as artifact
from accelc.artifact.manifest import Manifest
from accelc.capture import export as capture
from accelc.config import recipe as recipe_mod
from accelc.verify import compare as verify
from accelc.config import yamlio
from accelc.errors import ArtifactError


def stored_recipe(folder: Path, manifest: Manifest, samples: int | None = None) -> recipe_mod.LoadedRecipe:
    """The recipe an artifact was built from, as stored in its manifest (not the file as it is now)."""
    stored = manifest.recipe
    path = Path(stored.path)
    located = yamlio.load_text(stored.text, f"{path} (as stored in the manifest)")
    recipe = recipe_mod.parse(located)
    if samples is not None:
        recipe = recipe.model_copy(update={"verify": recipe.verify.model_copy(update={"samples": samples})})
    loaded = recipe_mod.LoadedRecipe(recipe=recipe, path=path, root=recipe_mod.find_root(path),
                                     text=stored.text, located=located)
    if not loaded.root.is_dir():
        raise ArtifactError(f"the recipe's repository {loaded.root} is not here; the original model is needed",
                            code="E705")
    return loaded


def reverify(folder: Path, samples: int | None = None) -> dict:
    """The build's contract again: the artifact vs the rewritten graph (the passes run again on the
    original model, e.g. the quantized graph of an int8 build) per element or by SQNR, vs the original
    model by verify.sqnr.vs_original and the metric; the original model alone when there are no passes."""
    manifest = artifact.load_manifest(folder)
    loaded = stored_recipe(folder, manifest, samples)
    target = manifest.target
    from accelc.config import host_cpu as host
    ok, why = host.can_run(target.device, target.arch, target.cpu_features)
    if not ok:
        return verify.skipped(f"target '{target.name}' cannot run on this machine: {why}")
    from accelc.runtime import predictor as runtime
    from accelc.compile import verify_predictor
    from accelc.verify import gate_data
    captured = capture.capture(loaded)
    rewritten = _rewritten(loaded, captured, target.name) if loaded.recipe.passes else None
    validation = gate_data.validation_data(loaded) if loaded.recipe.verify.metric else None
    ranges = {spec.name: spec.range for spec in manifest.inputs if spec.range is not None}  # as the build drew ids
    return verify_predictor(loaded, captured, rewritten, runtime.load(folder), validation, ranges, manifest)


def _rewritten(loaded: recipe_mod.LoadedRecipe, captured: capture.Captured, target_name: str):
    """The graph the build compiled: the recipe's passes on the captured model, for the artifact's
    target (its int8 policy decides a quantize pass's settings)."""
    from accelc.config import targets
    from accelc.passes import PassContext, run_passes
    spec = targets.resolve(target_name, loaded.root)
    return run_passes(captured.graph, list(loaded.recipe.passes),
                      PassContext(captured.example_inputs, loaded, None, target=spec))[0]
