"""A recipe and its target, loaded and checked against each other: the one place that decides which
target a build uses (an explicit one wins over the recipe's). `accelc validate`, `accelc build` and
the Python API all come through here.

A recipe may be a file or a `Recipe` built in Python. The latter has no file, so its problems are
located by field path (`<recipe tiny>:model.inputs.0.dtype`) and it resolves entrypoints and
relative paths against the current directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import yaml

from accelc.config import recipe as recipe_mod
from accelc.config import targets, yamlio
from accelc.config.recipe import LoadedRecipe, Recipe
from accelc.config.targets import Target

RecipeLike = Union[str, os.PathLike, Recipe, LoadedRecipe]


@dataclass(frozen=True)
class FieldPaths:
    """The locator of a recipe without a file: a field path where a file would give line and column."""

    name: str

    def where(self, path: tuple, prefer_key: bool = False) -> str:
        return f"{self.name}:{yamlio.dotted(tuple(path))}" if path else self.name


def load(recipe: RecipeLike) -> LoadedRecipe:
    """A recipe file (path), a `Recipe` object or an already loaded recipe, as a LoadedRecipe."""
    if isinstance(recipe, LoadedRecipe):
        return recipe
    if isinstance(recipe, Recipe):
        return from_object(recipe)
    if isinstance(recipe, (str, os.PathLike)):
        return recipe_mod.load(recipe)
    raise TypeError(f"recipe must be a path or an accelc.Recipe, not {type(recipe).__name__}")


def from_object(recipe: Recipe, root: str | os.PathLike | None = None) -> LoadedRecipe:
    """A Recipe built in Python. Its text (stored in the manifest, hashed, re-read by `accelc verify`)
    is the YAML of the fields that were set: defaults computed from this machine (tuning threads)
    stay defaults."""
    root = Path(root or Path.cwd()).resolve()
    name = f"<recipe {recipe.name}>"
    text = yaml.safe_dump(recipe.model_dump(mode="json", exclude_unset=True), sort_keys=False)
    if recipe_mod.parse(yamlio.load_text(text, name)) != recipe:  # a field set by a validator: keep all
        text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    return LoadedRecipe(recipe=recipe, path=root / name, root=root, text=text, located=FieldPaths(name))


def recipe_and_target(recipe: RecipeLike, target: str | Target | None = None) -> tuple[LoadedRecipe, Target]:
    """The recipe and its target (`target` wins over the recipe's `target:`), checked against each
    other before any work starts."""
    loaded = load(recipe)
    if isinstance(target, Target):
        spec = target
    else:
        spec = targets.resolve(target or loaded.recipe.target, loaded.root,
                               None if target else loaded.where("target"))
    targets.check_compatible(spec, loaded.recipe, loaded.where)
    return loaded, spec
