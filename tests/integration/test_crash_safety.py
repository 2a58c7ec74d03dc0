"""Crash-safe builds: SIGKILL at exact points inside artifact staging and during real `accelc build`
runs; the output is then the previous good artifact, nothing, or the complete new one, never a
partial one, and the next build succeeds. benchmarks/kill_builds.py tries many more points."""
from __future__ import annotations

import random
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from accelc.artifact import store as artifact
from accelc.runtime import predictor as runtime
from accelc.errors import ArtifactError
from benchmarks.kill_builds import (EXPECTED, STAGING_POINTS, digests, kill_build, kill_staging, leftovers,
                                    start_build, state)
from tests.fixtures.helpers import TINY_RECIPE, cli, copy_artifact, make_repo, write_recipe
from tests.fixtures.manifests import minimal


def stage(out, name: str, size: int = 1000) -> None:
    with artifact.staging(out) as tmp:
        (tmp / artifact.LIBRARY).write_bytes(name.encode() * size)
        (tmp / artifact.PARAMS).write_bytes(name.encode())
        artifact.write_manifest(tmp, minimal(name))


# ---- exact kill points inside artifact.staging (no compiler: fast) -------------------------------

@pytest.mark.parametrize("point", STAGING_POINTS)
def test_kill_at_a_staging_point_leaves_the_previous_artifact_or_nothing(tmp_path, point):
    out = tmp_path / "out"
    assert kill_staging(out, "none", "good") == 0
    previous = digests(out)
    assert kill_staging(out, point, "half") == -signal.SIGKILL
    assert state(out, previous) == EXPECTED[point]  # never partial: state() raises on that
    assert leftovers(out)  # the dead build's staging directory is still there ...
    assert kill_staging(out, "none", "next") == 0  # ... the next build succeeds
    assert state(out, None) == "new" and artifact.read_manifest(out)["name"] == "next"
    assert leftovers(out) == []  # ... and swept it


def test_concurrent_stagings_to_one_output_never_mix(tmp_path):
    """8 writers x 4 artifacts each to one output: it always holds one whole artifact."""
    out = tmp_path / "out"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: [stage(out, f"w{i}-{r}", 1000 + i) for r in range(4)], range(8)))
    manifest = artifact.read_manifest(out)
    artifact.check_files(out, manifest)
    assert (out / artifact.PARAMS).read_bytes() == manifest["name"].encode() and leftovers(out) == []


def test_the_fallback_without_an_atomic_exchange_also_replaces_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(artifact, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    stage(out, "first")
    stage(out, "second")
    assert artifact.read_manifest(out)["name"] == "second" and state(out, None) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_foreign_directory_that_appears_during_a_build_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ArtifactError) as info:
        with artifact.staging(out) as tmp:
            artifact.write_manifest(tmp, minimal("late"))
            out.mkdir()
            (out / "notes.txt").write_text("mine")
    assert info.value.code == "E703" and (out / "notes.txt").read_text() == "mine" and leftovers(out) == []


def test_a_reader_never_loads_a_file_replaced_after_its_check(tmp_path):
    """A rebuild swapping the directory between the hash check and the load is caught: the bytes
    used are the bytes hashed."""
    out = tmp_path / "out"
    stage(out, "first")
    manifest = artifact.load_manifest(out)  # hashes checked
    stage(out, "second")
    with pytest.raises(ArtifactError) as info:
        artifact.read_checked(out, manifest, artifact.LIBRARY)
    assert info.value.code == "E702" and "changed after its integrity check" in info.value.problems[0].message


def test_build_refuses_a_foreign_output_before_compiling(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo")
    foreign = repo / "src"
    foreign.mkdir()
    (foreign / "main.py").write_text("precious\n")
    code, out, err = cli(["build", write_recipe(repo, TINY_RECIPE), "--output", foreign], capsys)
    assert code == 2 and "error[E703]" in err and "Traceback" not in err
    assert "[1/6]" in err and "[2/6]" not in err  # refused at stage 1, before any work
    assert sorted(p.name for p in foreign.iterdir()) == ["main.py"] and leftovers(foreign) == []


# ---- real builds: killed at stages, then concurrent rebuilds -------------------------------------

def test_killed_builds_leave_the_previous_artifact_and_concurrent_rebuilds_succeed(tmp_path):
    repo = make_repo(tmp_path / "repo")
    recipe = write_recipe(repo, TINY_RECIPE)
    out = copy_artifact(repo / "build" / "out")  # the previous good artifact (another model)
    previous = digests(out)
    rng = random.Random(0)
    # three builds at once, each killed (with its linker) at a random moment in a late stage
    points = [(rng.uniform(0, 1.0), "[4/6]"), (rng.uniform(0, 0.3), "[5/6]"), (rng.uniform(0, 0.3), "[6/6]")]
    builds = [start_build(recipe, out) for _ in points]
    stages = [None] * len(points)

    def killer(index: int) -> None:
        stages[index] = kill_build(builds[index], *points[index])

    threads = [threading.Thread(target=killer, args=(i,)) for i in range(len(points))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), stages
    killed = [stage for stage, b in zip(stages, builds) if b.returncode == -signal.SIGKILL]
    assert len(killed) >= 2 and all(b.returncode in (0, -signal.SIGKILL) for b in builds), stages
    assert state(out, previous) in ("previous", "new"), stages  # 'new' only if one finished before its kill

    rebuilds = [start_build(recipe, out) for _ in range(2)]  # two builds to one output at once
    logs = [b.communicate(timeout=600)[0] for b in rebuilds]
    assert [b.returncode for b in rebuilds] == [0, 0], logs
    assert state(out, previous) == "new" and leftovers(out) == []
    predictor = runtime.load(out)  # the new artifact is whole: it loads and runs
    assert predictor.manifest.name == "tiny" and predictor(np.ones((2, 4), np.float32)).shape == (2, 2)
    for build in rebuilds:
        build.stdout.close()

