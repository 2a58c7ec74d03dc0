"""Recipe paths stay inside the recipe's repository (issue 9: safe paths)."""
from __future__ import annotations

import pytest

from accelc.config import recipe as recipe_mod
from accelc.errors import RecipeError
from tests.fixtures.helpers import TINY_RECIPE, at, make_repo, write_recipe


def loaded_with(tmp_path, line: str):
    repo = make_repo(tmp_path / "repo")
    text = TINY_RECIPE.replace("  batch: [1, 4]\n", f"  batch: [1, 4]\n  {line}\n")
    return recipe_mod.load(write_recipe(repo, text)), repo, text


def test_dotdot_escape_is_refused_with_location(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELC_ALLOW_OUTSIDE_REPO", raising=False)
    loaded, repo, text = loaded_with(tmp_path, "weights: ../../etc/passwd")
    with pytest.raises(RecipeError) as info:
        loaded.resolve(loaded.recipe.model.weights, "model", "weights")
    assert info.value.code == "E107"
    assert info.value.problems[0].location == at(repo / "recipe.yaml", text, "../../etc/passwd")


def test_symlink_escape_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELC_ALLOW_OUTSIDE_REPO", raising=False)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"")
    loaded, repo, _ = loaded_with(tmp_path, "weights: link.safetensors")
    (repo / "link.safetensors").symlink_to(outside)
    with pytest.raises(RecipeError) as info:
        loaded.resolve("link.safetensors", "model", "weights")
    assert info.value.code == "E107"


def test_inside_paths_and_explicit_opt_in(tmp_path, monkeypatch):
    loaded, repo, _ = loaded_with(tmp_path, "weights: sub/w.safetensors")
    assert loaded.resolve("sub/w.safetensors") == (repo / "sub" / "w.safetensors").resolve()
    monkeypatch.setenv("ACCELC_ALLOW_OUTSIDE_REPO", "1")
    assert loaded.resolve("../elsewhere") == (repo.parent / "elsewhere").resolve()
