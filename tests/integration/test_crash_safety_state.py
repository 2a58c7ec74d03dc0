"""Tuning databases and the build cache under SIGKILL: a tuner killed mid-append loses only the
record it was writing, and the next tuning run and build succeed; a cache store killed at any
point leaves no entry or a whole one, never one that is loaded half-written."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import tvm

from accelc import compile as compile_mod
from accelc.artifact import store as artifact
from accelc.artifact import cache
from accelc.backends.tvm.tune import database as tune_db
from benchmarks.kill_builds import ROOT, kill, start_tune
from tests.fixtures.helpers import Recording, copy_artifact, make_repo, scratch_dir, write_recipe
from tests.fixtures.tuning import TIMED, TOPPED


@pytest.fixture(scope="module")
def tuned_repo():
    repo = make_repo(scratch_dir() / "kill-tune-repo")
    compile_mod.tune_recipe(write_recipe(repo, TIMED, "timed.yaml"))
    (folder,) = [f for f in (repo / ".accelc" / "tuning").iterdir() if (f / tune_db.TARGET_FILE).is_file()]
    return repo, folder


def target_of(folder: Path):
    return tvm.target.Target(json.loads((folder / tune_db.TARGET_FILE).read_text())["target"])


def tear(path: Path, fraction: float) -> tuple[bytes, bytes]:
    """Cut `path` inside its last line, as a kill mid-append does: (complete lines, fragment)."""
    data = path.read_bytes()
    start = data.rfind(b"\n", 0, len(data) - 1) + 1
    cut = start + max(1, min(len(data) - start - 1, int((len(data) - start) * fraction)))
    path.write_bytes(data[:cut])
    return data[:start], data[start:cut]


@pytest.mark.parametrize("name", tune_db.FILES)
@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])  # one byte in, half way, one byte short of the newline
def test_a_torn_last_line_is_set_aside_and_every_complete_record_kept(tuned_repo, tmp_path, name, fraction):
    _, source = tuned_repo
    folder = shutil.copytree(source, tmp_path / source.name)
    complete, fragment = tear(folder / name, fraction)
    before = len(tune_db._load(source, None))
    log = Recording()
    database = tune_db.open_database(tmp_path, target_of(folder), logger=log.logger)
    lines = log.lines
    assert (folder / name).read_bytes() == complete
    (side,) = folder.glob(f"{name}.torn-*")
    assert side.read_bytes() == fragment  # nothing is thrown away
    assert "torn line" in lines[0]
    if name == "records.json":
        assert len(database) == before - 1
        return
    # the torn workload's records cannot load: set aside beside it, every other record kept
    lost = {i for i, line in enumerate((source / name).read_bytes().splitlines()) if i >= complete.count(b"\n")}
    orphans = [line for line in (source / "records.json").read_bytes().splitlines() if json.loads(line)[0] in lost]
    assert len(database) == before - len(orphans)
    if orphans:
        (aside,) = folder.glob("records.json.orphaned-*")
        assert aside.read_bytes().splitlines() == orphans and "torn workload" in lines[1]


def test_a_database_corrupt_before_its_last_line_is_still_refused(tuned_repo, tmp_path):
    _, source = tuned_repo
    folder = shutil.copytree(source, tmp_path / source.name)
    records = (folder / "records.json").read_bytes()
    (folder / "records.json").write_bytes(records[:40] + b"#" + records[41:])
    with pytest.raises(Exception) as caught:
        tune_db.open_database(tmp_path, target_of(folder))
    assert getattr(caught.value, "code", None) == "E619"
    assert (folder / "records.json").read_bytes() == records[:40] + b"#" + records[41:]  # left as it was


def test_tuning_killed_while_measuring_then_tuned_again_and_built(tmp_path):
    """`accelc tune` SIGKILLed at random moments after its search began, three times; then the
    database opens, tuning runs to its end and a build applies the records."""
    repo = make_repo(tmp_path / "repo")
    recipe = write_recipe(repo, TIMED.replace("time_budget: 1", "time_budget: 30"), "timed.yaml")
    rng = random.Random(0)
    for _ in range(3):
        process = start_tune(recipe)
        for line in process.stdout:  # the search has begun: records are being appended from now on
            if line.startswith("  tuning "):
                break
        time.sleep(rng.uniform(0.5, 4.0))
        kill(process)
        process.stdout.close()
    (folder,) = (repo / ".accelc" / "tuning").iterdir()
    tune_db.open_database(repo / ".accelc" / "tuning", target_of(folder))
    summary = compile_mod.tune_recipe(write_recipe(repo, TIMED, "again.yaml"))
    assert summary["tuned_tasks"] >= 1
    built = compile_mod.build(write_recipe(repo, TOPPED, "topped.yaml"), output=repo / "out", cache=False)
    assert built.report["status"] == "passed" and built.manifest.tuning.tuned_tasks == 2


# The child: store `artifact` in the cache under `key`, SIGKILLing itself at `point`.
STORE_CHILD = textwrap.dedent("""\
    import os, signal, sys
    from pathlib import Path
    from types import SimpleNamespace
    from accelc.artifact import cache
    source, key, point = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    rename = os.rename
    def rename_at_point(src, dst):
        if point == "copied":
            os.kill(os.getpid(), signal.SIGKILL)
        rename(src, dst)
        if point == "renamed":
            os.kill(os.getpid(), signal.SIGKILL)
    os.rename = rename_at_point
    cache.store([key], source, SimpleNamespace())
    """)


@pytest.mark.parametrize("point, stored", [("copied", False), ("renamed", True), ("none", True)])
def test_a_cache_store_killed_at_any_point_leaves_no_entry_or_a_whole_one(tmp_path, monkeypatch, point, stored):
    source = copy_artifact(tmp_path / "built")
    monkeypatch.setenv(cache.ENV, str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", STORE_CHILD, str(source), "k" * 64, point],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == (0 if point == "none" else -signal.SIGKILL), done.stderr
    out, log = tmp_path / "out", Recording()
    manifest = cache.fetch(["k" * 64], out, SimpleNamespace(), logger=log.logger)
    assert (manifest is not None) == stored and out.exists() == stored
    if stored:
        artifact.check_files(out, artifact.read_manifest(out))
        assert manifest == artifact.load_manifest(source)
    staged = list((tmp_path / "cache").glob(f".*{cache.TMP}*"))
    assert len(staged) == (point == "copied")  # the killed store's private copy: never read as an entry
    for stale in staged:  # an hour later the next store sweeps it
        os.utime(stale, (time.time() - 7200,) * 2)
    cache.store(["k" * 64, "j" * 64], source, SimpleNamespace(), logger=log.logger)
    assert not list((tmp_path / "cache").glob(f".*{cache.TMP}*")) and cache._valid(tmp_path / "cache" / ("j" * 64))
