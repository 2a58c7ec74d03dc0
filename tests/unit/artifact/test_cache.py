"""Build cache: a build whose inputs were built before copies that artifact without capturing or
compiling; any input that changes the artifact changes the key; a damaged entry is rebuilt."""
from __future__ import annotations

import json

import numpy as np
import pytest

from accelc import compile as compile_mod
from accelc.artifact import store as artifact
from accelc.artifact import cache
from accelc.config import recipe as recipe_mod
from accelc.runtime import predictor as runtime
from accelc.config import targets
from accelc.verify import compare as verify
from tests.fixtures.helpers import TINY_RECIPE, Recording, cli, make_repo, scratch_dir, write_recipe


class Spy:
    """Counts the calls of a wrapped function (what ran, not how long it took)."""

    def __init__(self, monkeypatch, owner, name):
        self.calls, real = 0, getattr(owner, name)

        def wrapper(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper)


@pytest.fixture
def spies(monkeypatch):
    from accelc.backends.tvm.lower import relax as lower
    return Spy(monkeypatch, compile_mod.capture, "capture"), Spy(monkeypatch, lower, "compile_module")


@pytest.fixture(scope="module")
def first():
    """One build into the cache of a scratch repository."""
    repo = make_repo(scratch_dir() / "cache-repo")
    path = write_recipe(repo, TINY_RECIPE)
    return repo, path, compile_mod.build(path, output=repo / "build" / "first", cache=True)


def entry_of(repo, result):
    (key,) = result.manifest.cache.keys
    return repo / ".accelc" / "cache" / key


def test_a_cache_hit_skips_capture_and_compilation(first, spies):
    repo, path, built = first
    log = Recording()
    again = compile_mod.build(path, output=repo / "build" / "second", cache=True, logger=log.logger)
    assert [spy.calls for spy in spies] == [0, 0]
    assert any("build cache: reused" in line for line in log.lines)
    assert again.manifest.files == built.manifest.files  # the same library and parameters, byte for byte
    artifact.check_files(again.output, artifact.read_manifest(again.output))
    assert runtime.load(again.output)(np.ones((1, 4), np.float32)).shape == (1, 2)  # and it runs


def test_an_output_already_built_from_the_same_inputs_is_left_as_it_is(first, spies):
    repo, path, built = first
    log = Recording()
    before = (built.output / "manifest.json").stat().st_mtime_ns
    compile_mod.build(path, output=built.output, cache=True, logger=log.logger)
    assert [spy.calls for spy in spies] == [0, 0] and any("up to date" in line for line in log.lines)
    assert (built.output / "manifest.json").stat().st_mtime_ns == before


def test_a_corrupt_entry_is_rebuilt_not_loaded(first, spies):
    repo, path, built = first
    entry = entry_of(repo, built)
    library = entry / artifact.LIBRARY
    library.write_bytes(library.read_bytes()[:-16] + b"\0" * 16)  # same size, different bytes
    log = Recording()
    rebuilt = compile_mod.build(path, output=repo / "build" / "third", cache=True, logger=log.logger)
    assert [spy.calls for spy in spies] == [1, 1]
    assert any(r.levelname == "WARNING" and "is corrupt" in r.getMessage() for r in log.records)
    assert rebuilt.report["status"] == "passed"
    artifact.check_files(entry, artifact.read_manifest(entry))  # the entry was replaced by the rebuild


def test_the_cli_uses_the_cache_unless_told_not_to(first, spies, capsys):
    repo, path, _ = first
    code, _, err = cli(["build", path, "--output", repo / "build" / "cli"], capsys)
    assert code == 0 and "build cache: reused" in err and "PASSED" in err  # the stored verification report
    assert [spy.calls for spy in spies] == [0, 0]
    code, _, err = cli(["build", path, "--output", repo / "build" / "forced", "--no-cache"], capsys)
    assert code == 0 and "[6/6]" in err and "build cache" not in err
    assert [spy.calls for spy in spies] == [1, 1]


def test_unverified_builds_are_not_cached(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo")
    path = write_recipe(repo, TINY_RECIPE)
    monkeypatch.setattr(compile_mod, "_verify", lambda *args: verify.skipped("no device here"))
    built = compile_mod.build(path, output=repo / "out", cache=True)
    assert built.manifest.verified is False and not (repo / ".accelc" / "cache").exists()


def key_of(repo, text: str, target: str = "x86") -> str:
    path = write_recipe(repo, text, "keyed.yaml")
    return cache.key(recipe_mod.load(path), targets.resolve(target, repo))


def test_the_key_follows_what_changes_the_artifact(tmp_path):
    repo = make_repo(tmp_path / "repo")
    package = repo / "mymodels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text("SCALE = 1.0\n")
    (package / "model.py").write_text("from .layers import SCALE\n")
    (repo / "w.safetensors").write_bytes(b"weights v1")
    text = TINY_RECIPE.replace("tests.fixtures.models:tiny_mlp", "mymodels.model:build") + "# a comment\n"
    base = key_of(repo, text)
    assert key_of(repo, text.replace("# a comment", "# another comment")) == base  # layout is not input
    assert key_of(repo, text.replace("build/{name}-{target}", "elsewhere")) == base  # nor is the output path
    assert key_of(repo, text.replace("batch: [1, 4]", "batch: [1, 8]")) != base
    assert key_of(repo, text + "passes:\n  - {kind: simplify}\n") != base
    (package / "layers.py").write_text("SCALE = 2.0\n")  # a module the entrypoint imports
    changed_source = key_of(repo, text)
    assert changed_source != base
    weighted = text.replace("  inputs:", "  weights: w.safetensors\n  inputs:")
    with_weights = key_of(repo, weighted)
    (repo / "w.safetensors").write_bytes(b"weights v2")
    assert key_of(repo, weighted) != with_weights
    (repo / "targets").mkdir()  # the repository's own x86 target, one CPU flag different
    spec = json.loads(json.dumps(targets.resolve("x86", None).model_dump(mode="json")))
    spec["tvm"]["mcpu"] = "skylake"
    (repo / "targets" / "x86.yaml").write_text(json.dumps(spec))
    assert key_of(repo, text) != changed_source


def test_new_tuning_records_change_the_key_of_a_tuned_build(tmp_path):
    repo = make_repo(tmp_path / "repo")
    text = TINY_RECIPE + "tuning: {trials: 8, threads: 1}\n"
    before, untuned = key_of(repo, text), key_of(repo, TINY_RECIPE)
    from accelc.backends.tvm.tune import driver as tune
    from accelc.backends.tvm.tune import database as tune_db
    target = tune.tuning_target(targets.resolve("x86", repo).tvm_target(), 1)
    folder = tune_db.folder_for(repo / ".accelc" / "tuning", target)
    folder.mkdir(parents=True)
    (folder / "records.json").write_text("[0, []]\n")  # content is all the key looks at
    assert key_of(repo, text) != before
    assert key_of(repo, TINY_RECIPE) == untuned  # untuned builds do not read the database


def test_a_different_signing_key_is_a_different_entry(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo")
    monkeypatch.delenv("ACCELC_SIGNING_KEY", raising=False)
    unsigned = key_of(repo, TINY_RECIPE)
    monkeypatch.setenv("ACCELC_SIGNING_KEY", "k" * 32)
    signed = key_of(repo, TINY_RECIPE)
    monkeypatch.setenv("ACCELC_SIGNING_KEY", "j" * 32)
    assert len({unsigned, signed, key_of(repo, TINY_RECIPE)}) == 3
