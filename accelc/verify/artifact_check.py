"""`accelc verify ARTIFACT`: rebuild the original model from the recipe stored in the
manifest and compare it with the artifact again (e.g. on the production host)."""
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
    manifest = artifact.load_manifest(folder)
    loaded = stored_recipe(folder, manifest, samples)
    target = manifest.target
    from accelc.config import host_cpu as host
    ok, why = host.can_run(target.device, target.arch, target.cpu_features)
    if not ok:
        return verify.skipped(f"target '{target.name}' cannot run on this machine: {why}")
    recipe = loaded.recipe
    from accelc.runtime import predictor as runtime
    from accelc.compile import bucketed, sample_sets
    model = capture.build_model(loaded)
    predictor = runtime.load(folder)
    names = [o.name for o in manifest.outputs]
    ranges = {spec.name: spec.range for spec in manifest.inputs if spec.range is not None}  # as the build drew ids
    sets = sample_sets(loaded, ranges)
    run_reference = capture.eager_runner(model, recipe.model.inputs, recipe.model.batch)
    runs = (lambda arrays: predictor.predict(*arrays), run_reference)
    if recipe.model.dims:  # compared at the real positions, as the build did
        runs = bucketed(manifest, loaded, sets, run_reference, *runs)
    return verify.verify(*runs, sets, recipe.verify.tolerance.atol, recipe.verify.tolerance.rtol, names)
