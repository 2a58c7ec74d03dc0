"""`accelc verify ARTIFACT`: rebuild the original model from the recipe stored in the
manifest and compare it with the artifact again (e.g. on the production host)."""
from __future__ import annotations

from pathlib import Path

from . import artifact, capture, recipe as recipe_mod, verify, yamlio
from .errors import ArtifactError


def reverify(folder: Path, samples: int | None = None) -> dict:
    manifest = artifact.read_manifest(folder)
    artifact.check_files(folder, manifest)
    artifact.require(manifest, folder, recipe=dict, target=dict, outputs=list)
    stored = manifest["recipe"]
    if not (isinstance(stored.get("path"), str) and isinstance(stored.get("text"), str)):
        raise ArtifactError(f"{folder}: the manifest does not hold the recipe's path and text", code="E701")
    path = Path(stored["path"])
    located = yamlio.load_text(stored["text"], f"{path} (as stored in the manifest)")
    recipe = recipe_mod.parse(located)
    if samples is not None:
        recipe = recipe.model_copy(update={"verify": recipe.verify.model_copy(update={"samples": samples})})
    loaded = recipe_mod.LoadedRecipe(recipe=recipe, path=path, root=recipe_mod.find_root(path),
                                     text=manifest["recipe"]["text"], located=located)
    target = manifest["target"]
    from . import host
    ok, why = host.can_run(target["device"], target["arch"], target.get("cpu_features", []))
    if not ok:
        return verify.skipped(f"target '{target['name']}' cannot run on this machine: {why}")
    if not loaded.root.is_dir():
        raise ArtifactError(f"the recipe's repository {loaded.root} is not here; the original model is needed "
                            "to verify against", code="E705")
    from . import runtime
    from .compile import sample_sets
    model = capture.build_model(loaded)
    predictor = runtime.load(folder)
    names = [o["name"] for o in manifest["outputs"]]
    return verify.verify(lambda arrays: predictor.predict(*arrays), lambda arrays: capture.run_eager(model, arrays),
                         sample_sets(loaded), recipe.verify.tolerance.atol, recipe.verify.tolerance.rtol, names)
