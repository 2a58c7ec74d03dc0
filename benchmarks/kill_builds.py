"""SIGKILL builds at many points: afterwards the output holds the previous good artifact (every
hash verifies), nothing, or the finished new one; never a partial one. The next build succeeds.

Two kinds of kill points:
  staging points  a child process stages a small artifact with artifact.staging and kills itself
                  at a named point (after a file, after the manifest, before the fsync, before and
                  after the swap, between the two renames of the non-Linux fallback): exact, cheap.
  build points    `accelc build` of the tiny MLP (examples/mlp) killed, with its process group, at a
                  random moment, uniform over the duration of a full build.
  tuning points   `accelc tune` of the same MLP killed at a random moment of its run; then the
                  tuning database must open (a torn last record set aside, nothing else lost), and
                  every 5th run tunes to its end and builds with the records.

    python benchmarks/kill_builds.py [--builds 40] [--staging-rounds 20] [--tunes 20] [--seed 0]

Prints the outcomes per kill point and exits 1 if any output was partial or a rebuild failed.
tests/integration/test_crash_safety.py runs a few of the same kill points in CI.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from accelc.artifact import store as artifact  # noqa: E402
from accelc.errors import ArtifactError  # noqa: E402

STAGING_POINTS = ("written", "manifest", "fsync", "before-swap", "swapped", "fallback-moved")
# What each staging point leaves at the output when a previous artifact was there.
EXPECTED = {"written": "previous", "manifest": "previous", "fsync": "previous", "before-swap": "previous",
            "swapped": "new", "fallback-moved": "absent"}

# The child: stage an artifact whose files hold `payload`, and SIGKILL itself at `point`.
STAGING_CHILD = textwrap.dedent("""\
    import os, signal, sys
    from pathlib import Path
    from accelc.artifact import store as artifact
    from tests.fixtures.manifests import minimal
    dest, point, payload = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)

    def wrap(name, before):
        original = getattr(artifact, name)
        def wrapped(*args):
            if before:
                die()
            original(*args)
            die()
        setattr(artifact, name, wrapped)

    if point in ("fsync", "before-swap", "swapped"):
        wrap({"fsync": "_fsync_tree", "before-swap": "_swap", "swapped": "_swap"}[point], point != "swapped")
    if point == "fallback-moved":  # as on a system without renameat2: dest is renamed away, then killed
        artifact._exchange = lambda a, b: False
        rename = os.rename
        def rename_then_die(src, dst):
            rename(src, dst)
            die()
        os.rename = rename_then_die
    with artifact.staging(dest) as tmp:
        (tmp / artifact.LIBRARY).write_bytes(payload.encode() * 50_000)
        if point == "written":
            die()
        (tmp / artifact.PARAMS).write_bytes(payload.encode())
        artifact.write_manifest(tmp, minimal(payload))
        if point == "manifest":
            die()
    """)

MLP_RECIPE = textwrap.dedent("""\
    version: 1
    name: kill_mlp
    model:
      entrypoint: examples.mlp.model:build_model
      inputs:
        - {name: x, shape: [batch, 32], dtype: float32}
      batch: [1, 8]
    verify: {samples: 1}
    """)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def state(out: Path, previous: dict | None) -> str:
    """'previous' (byte for byte), 'absent', or 'new' (a complete artifact whose hashes verify).
    Anything else is a partial artifact: ArtifactError."""
    if not out.exists():
        return "absent"
    now = digests(out)
    if now == previous:
        return "previous"
    artifact.check_files(out, artifact.read_manifest(out))  # E700-E702 if partial
    return "new"


def leftovers(out: Path) -> list[str]:
    """Staging directories beside `out` (of live builds, or of killed ones not yet swept)."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.tmp-*"))


def kill_staging(out: Path, point: str, payload: str) -> int:
    """Run STAGING_CHILD; its exit status (-9 when it killed itself, 0 when it got through)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", STAGING_CHILD, str(out), point, payload], env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"staging child failed at {point}: {done.stderr[-2000:]}")
    return done.returncode


def start_build(recipe: Path, out: Path) -> subprocess.Popen:
    """`accelc build` in its own process group (so that a kill takes its linker with it); never from
    the build cache, which would skip the stages we kill in."""
    return start_accelc(recipe, "build", str(recipe), "--output", str(out), "--no-cache")


def start_tune(recipe: Path) -> subprocess.Popen:
    return start_accelc(recipe, "tune", str(recipe))


def start_accelc(recipe: Path, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "accelc", *argv], cwd=recipe.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def kill_build(process: subprocess.Popen, delay: float, after: str = "") -> str:
    """Kill `process` (with its group) `delay` seconds after it prints a line starting with `after`
    (or after it starts); the last stage line it printed, 'finished' if it exited first, or
    'FAILED build' if it exited with an error."""
    stage, seen = ["started"], threading.Event()

    def read() -> None:
        for line in process.stdout:
            if line.startswith("["):
                stage[0] = line.split(" ...")[0]
            if line.startswith(after):
                seen.set()
        seen.set()  # it ended without printing `after`

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen.wait()
    deadline = time.monotonic() + delay
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    code = process.poll()
    kill(process)
    reader.join(5)
    process.stdout.close()
    return stage[0] if code is None else "finished before the kill" if code == 0 else "FAILED build"


def full_build(recipe: Path, out: Path) -> dict[str, float]:
    """A build that must succeed and leave a verifying artifact; seconds from its start to each
    stage line ('[4/6]') and to its end ('end')."""
    start, marks = time.monotonic(), {}
    process = start_build(recipe, out)
    log = []
    for line in process.stdout:
        log.append(line)
        if line.startswith("["):
            marks[line[:5]] = time.monotonic() - start
    process.wait()
    process.stdout.close()
    marks["end"] = time.monotonic() - start
    if process.returncode != 0:
        raise SystemExit(f"a build after kills failed (exit {process.returncode}):\n{''.join(log)[-3000:]}")
    state(out, None)
    return marks


def staging_sweep(folder: Path, rounds: int) -> Counter:
    out, counts = folder / "staged", Counter()
    kill_staging(out, "none", "first")  # a previous good artifact
    for round_ in range(rounds):
        for point in STAGING_POINTS:
            previous = digests(out) if out.exists() else None
            kill_staging(out, point, f"{point}-{round_}")
            got = state(out, previous)
            expected = EXPECTED[point] if previous else ("absent" if got == "absent" else "new")
            counts[(point, got if got == expected else f"UNEXPECTED {got}")] += 1
            if kill_staging(out, "none", f"rebuild-{point}-{round_}") != 0 or state(out, None) != "new" \
                    or leftovers(out):
                counts[(point, "REBUILD FAILED")] += 1
    return counts


LATE_STAGES = ("[2/6]", "[4/6]", "[5/6]", "[6/6]")  # capture, compile, write, verify: where the work is


def project(folder: Path) -> Path:
    """`folder` as a repository whose recipes can name examples.mlp."""
    (folder / "pyproject.toml").touch()
    if not (folder / "examples").exists():
        (folder / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    return folder


def build_sweep(folder: Path, builds: int, rng: random.Random) -> tuple[Counter, float]:
    """Half the kills at a moment uniform over a whole build (start-up included), half at a moment
    uniform within one of the late stages, in turn."""
    recipe = project(folder) / "kill_mlp.yaml"
    recipe.write_text(MLP_RECIPE)
    out = folder / "out"
    full_build(recipe, out)  # cold caches
    marks = full_build(recipe, out)  # the timings kill moments are drawn from (renewed every 10 kills)
    counts = Counter()
    for i in range(builds):
        times = sorted(marks.values())
        length = {p: min((t for t in times if t > marks[p]), default=1.0) - marks[p] for p in LATE_STAGES}
        previous = digests(out) if out.exists() else None
        after = "" if i % 2 == 0 else LATE_STAGES[i // 2 % len(LATE_STAGES)]
        stage = kill_build(start_build(recipe, out), rng.uniform(0, length[after] if after else marks["end"]), after)
        try:
            got = state(out, previous)
        except ArtifactError as exc:
            got = f"PARTIAL ({exc.code})"
        counts[(stage, got if stage != "FAILED build" else "FAILED")] += 1
        if (i + 1) % 10 == 0:
            marks = full_build(recipe, out)
            counts[("rebuild after kills", "ok")] += 1
    together = [start_build(recipe, out) for _ in range(3)]  # concurrent builds to the same output
    for process in together:
        process.communicate()
    codes = [process.returncode for process in together]
    state(out, None)
    counts[("3 concurrent builds", "ok" if codes == [0, 0, 0] and not leftovers(out) else f"FAILED {codes}")] += 1
    return counts, marks["end"]


class _Kept(logging.Handler):
    """The records one call logs: the database reports a torn line it set aside."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def database_state(root: Path) -> str:
    """'clean', 'torn line set aside' or 'REFUSED <code>' for the tuning database under `root`."""
    import tvm

    from accelc.backends.tvm.tune import database as tune_db
    from accelc.errors import AccelcError
    folders = [f for f in root.iterdir() if (f / tune_db.TARGET_FILE).is_file()] if root.is_dir() else []
    if not folders:
        return "clean"  # killed before the database was created
    logger, kept = logging.getLogger("kill_builds.database"), _Kept()
    logger.addHandler(kept)
    try:
        target = json.loads((folders[0] / tune_db.TARGET_FILE).read_text())["target"]
        tune_db.open_database(root, tvm.target.Target(target), logger=logger)
    except AccelcError as exc:
        return f"REFUSED {exc.code}"
    finally:
        logger.removeHandler(kept)
    return "torn line set aside" if kept.records else "clean"


def tune_sweep(folder: Path, tunes: int, rng: random.Random) -> Counter:
    recipe = project(folder) / "tune_mlp.yaml"
    recipe.write_text(MLP_RECIPE.replace("name: kill_mlp", "name: tune_mlp") + "tuning: {trials: 24, threads: 1}\n")
    counts, started, database = Counter(), time.monotonic(), folder / ".accelc" / "tuning"
    process = start_tune(recipe)  # how long a whole run takes: kill moments are drawn from it
    process.communicate()
    length = time.monotonic() - started
    for i in range(tunes):
        stage = kill_build(start_tune(recipe), rng.uniform(0, length))
        outcome = stage if stage == "finished before the kill" else "tune killed"
        counts[(outcome, database_state(database))] += 1
        if (i + 1) % 5 == 0:
            done = start_tune(recipe)
            log = done.communicate()[0]
            built = start_build(recipe, folder / "tuned-out")
            log += built.communicate()[0]
            ok = done.returncode == 0 and built.returncode == 0 and "tuned" in log
            counts[("tune + build after kills", "ok" if ok else f"FAILED\n{log[-2000:]}")] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=40, help="accelc builds killed at random moments")
    parser.add_argument("--staging-rounds", type=int, default=20, help="rounds over the staging kill points")
    parser.add_argument("--tunes", type=int, default=20, help="accelc tune runs killed at random moments")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="accelc-kill-") as scratch:
        staged = staging_sweep(Path(scratch), args.staging_rounds)
        built, full = build_sweep(Path(scratch), args.builds, random.Random(args.seed))
        tuned = tune_sweep(Path(scratch), args.tunes, random.Random(args.seed))
    print(f"staging kill points: {sum(staged.values())} kills ({args.staging_rounds} rounds x "
          f"{len(STAGING_POINTS)} points), each followed by a rebuild")
    for (point, got), n in sorted(staged.items()):
        print(f"  {point:<16} {got:<24} {n}")
    print(f"build kill points: {args.builds} builds killed at random moments (a full build: {full:.1f} s)")
    for (stage, got), n in sorted(built.items()):
        print(f"  {stage:<46} {got:<24} {n}")
    print(f"tuning kill points: {args.tunes} `accelc tune` runs killed at random moments, then the database opened")
    for (stage, got), n in sorted(tuned.items()):
        print(f"  {stage:<46} {got:<24} {n}")
    bad = [k for k in (*staged, *built, *tuned) if any(w in k[1] for w in ("UNEXPECTED", "PARTIAL", "FAILED", "REFUSED"))]
    print("partial artifacts, refused databases or failed rebuilds:", len(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
