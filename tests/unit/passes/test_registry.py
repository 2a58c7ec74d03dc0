"""The pass registry: every kind names its torch-free config and an implementation that loads and
runs with it; the recipe schema is built from exactly these configs."""
from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from accelc.config.recipe import Recipe
from accelc.passes import registry
from accelc.passes.base import Pass
from tests.fixtures.helpers import ROOT


@pytest.mark.parametrize("kind", sorted(registry.REGISTRY))
def test_each_kind_resolves_to_a_pass_with_its_config(kind):
    entry = registry.REGISTRY[kind]
    assert typing.get_args(entry.config.model_fields["kind"].annotation) == (kind,)
    cls = registry.implementation(kind)
    assert issubclass(cls, Pass) and cls.Config is entry.config and registry.PASSES[kind] is cls


def test_the_recipe_schema_offers_exactly_the_registered_kinds():
    mapping = Recipe.model_json_schema()["properties"]["passes"]["items"]["discriminator"]["mapping"]
    assert list(mapping) == list(registry.REGISTRY)


def test_a_row_naming_the_wrong_class_is_a_bug(monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "simplify",
                        registry.Entry(registry.PASS_CONFIGS["simplify"], "accelc.passes.fold:FoldBatchNorm"))
    with pytest.raises(TypeError, match="not the registered config of pass kind 'simplify'"):
        registry.implementation("simplify")


def test_configs_load_no_implementation():
    """The registry imports configs only; an implementation is imported when its kind is asked for."""
    probe = ("import sys; import accelc.config.recipe; "
             "print(sorted(m for m in sys.modules if m.startswith(('accelc.passes', 'torch')) "
             "and not m.startswith('accelc.passes.configs')))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['accelc.passes',", "'accelc.passes.registry']"]
