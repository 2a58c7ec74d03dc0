"""cli: documented exit codes (0 ok, 1 verification failed, 2 user error, 3 bug), every bad recipe
as a coded error without a traceback, and the validate/schema/targets/inspect/verify commands."""
from __future__ import annotations

import fcntl
import ast
import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from accelc.artifact import store as artifact
from tests.fixtures.helpers import (ROOT, TINY_RECIPE, assert_cli_user_error, at, cli, copy_artifact, make_repo,
                                    shared_artifact, write_recipe)

BOMB = "\n".join(['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
    f"{n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in zip("abcdefgh", "bcdefghi")]) + "\n"


def test_help_documents_the_exit_codes(capsys):
    rc, out, _ = cli(["--help"], capsys)
    assert rc == 0
    assert "exit codes: 0 ok, 1 verification failed, 2 user error, 3 internal error" in " ".join(out.split())
    for command in ("build", "validate", "schema", "targets", "verify", "inspect"):
        assert command in out


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["build"], ["verify", "x", "--samples", "0"],
                                  ["verify", "x", "--samples", "two"]])
def test_usage_errors_exit_2(capsys, argv):
    rc, _, err = cli(argv, capsys)
    assert rc == 2 and "usage:" in err and "Traceback" not in err


# (file contents, error code, text the location points at, or None for the file itself)
BAD_RECIPES = {
    "yaml-syntax": (TINY_RECIPE.replace("batch: [1, 4]", "batch: [1, 4"), "E101", ": x86"),  # the ":" it trips on
    "duplicate-key": (TINY_RECIPE + "target: arm\n", "E105", "target: arm"),
    "alias-bomb": (BOMB, "E106", None),
    "wrong-type": (TINY_RECIPE.replace("batch: [1, 4]", 'batch: "abc"'), "E102", '"abc"'),
    "unknown-key": (TINY_RECIPE.replace("entrypoint:", "entrypont:"), "E103", "entrypont"),
    "unknown-pass": (TINY_RECIPE + "passes:\n  - {kind: fold_batchnom}\n", "E104", "fold_batchnom"),
    "missing-field": (TINY_RECIPE.replace("name: tiny\n", ""), "E102", None),
    "absurd-shape": (TINY_RECIPE.replace("[batch, 4]", "[batch, 1000000, 1000000]"), "E102", "[batch, 1000000"),
    "bad-placeholder": (TINY_RECIPE + "output: 'build/{user}'\n", "E102", "'build/{user}'"),
    "unknown-target": (TINY_RECIPE.replace("target: x86", "target: x68"), "E200", "x68"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipes_are_coded_errors(tmp_path, capsys, case):
    text, code, needle = BAD_RECIPES[case]
    path = write_recipe(make_repo(tmp_path), text)
    for command in (["validate", path], ["build", path, "--output", tmp_path / "out"]):
        err = assert_cli_user_error(command, capsys, code)
        assert (at(path, text, needle) if needle else str(path)) in err
    assert not (tmp_path / "out").exists()


def test_several_problems_in_one_run(tmp_path, capsys):
    text = TINY_RECIPE.replace("entrypoint:", "entrypont:").replace("batch: [1, 4]", "batch: x") \
        + "passes:\n  - {kind: fold_batchnom}\n"
    path = write_recipe(tmp_path, text)
    err = assert_cli_user_error(["validate", path], capsys, "E103")
    assert "did you mean 'entrypoint'?" in err and "did you mean 'fold_batchnorm'?" in err
    lines = [int(line.split(f"{path}:")[1].split(":")[0]) for line in err.splitlines() if f"{path}:" in line]
    assert len(lines) >= 3 and lines == sorted(lines)


def test_unreadable_recipe_files(tmp_path, capsys):
    assert "file not found" in assert_cli_user_error(["validate", tmp_path / "nope.yaml"], capsys, "E100")
    assert "cannot read" in assert_cli_user_error(["validate", tmp_path], capsys, "E100")
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    assert "not UTF-8" in assert_cli_user_error(["validate", tmp_path / "latin1.yaml"], capsys, "E101")
    assert_cli_user_error(["build", tmp_path / "nope.yaml"], capsys, "E100")


def test_validate_ok_with_bom(tmp_path, capsys):
    path = make_repo(tmp_path) / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + TINY_RECIPE.encode())
    rc, out, err = cli(["validate", path], capsys)
    assert (rc, err) == (0, "") and out.strip() == f"{path}: ok"


def test_validate_json(tmp_path, capsys):
    good = write_recipe(tmp_path, TINY_RECIPE, "good.yaml")
    text = TINY_RECIPE.replace("entrypoint:", "entrypont:")
    bad = write_recipe(tmp_path, text, "bad.yaml")
    rc, out, err = cli(["validate", good, bad, "--json"], capsys)
    assert rc == 2 and err == ""
    results = json.loads(out)
    assert [(r["recipe"], r["ok"]) for r in results] == [(str(good), True), (str(bad), False)]
    assert results[0]["errors"] == []
    assert all(set(e) == {"code", "message", "location", "field", "hint"} for e in results[1]["errors"])
    unknown = next(e for e in results[1]["errors"] if e["code"] == "E103")
    assert unknown["location"] == at(bad, text, "entrypont") and unknown["hint"] == "did you mean 'entrypoint'?"
    assert unknown["field"] == "model.entrypont"


def test_schema_is_a_json_schema_with_descriptions(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    rc, out, _ = cli(["schema"], capsys)
    schema = json.loads(out)
    assert rc == 0
    jsonschema.Draft202012Validator.check_schema(schema)
    model = schema["$defs"]["ModelSection"]["properties"]
    assert "nn.Module" in model["entrypoint"]["description"] and model["batch"]["description"]
    import yaml
    for path in sorted((ROOT / "recipes").glob("*.yaml")):  # the shipped recipes satisfy it
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(TINY_RECIPE.replace("entrypoint:", "entrypont:")), schema)


def target_records(out: str) -> dict[str, str]:
    """`accelc targets` output -> {target: its row and the indented lines below it}."""
    records: dict[str, str] = {}
    for line in out.splitlines()[2:]:
        if line.startswith(" "):
            records[name] += "\n" + line
        else:
            name = line.split()[0]
            records[name] = line
    return records


def test_targets_lists_what_each_supports(capsys):
    rc, out, _ = cli(["targets"], capsys)
    assert rc == 0
    rows = target_records(out)
    assert {"x86", "aarch64", "cuda-sm80"} <= set(rows)
    assert "x86_64" in rows["x86"] and "float32" in rows["x86"] and "bfloat16" not in rows["aarch64"]
    assert "Haswell" in rows["x86"]  # the description, whole


def test_targets_fit_in_100_columns(capsys):
    from accelc.config import targets
    rc, out, _ = cli(["targets"], capsys)
    assert rc == 0 and max(len(line) for line in out.splitlines()) <= 100
    flat = {name: " ".join(text.split()) for name, text in target_records(out).items()}
    for spec in targets.load_all(ROOT).values():  # nothing was cut to fit: every fact is still there
        assert all(text in flat[spec.name] for text in (spec.description, ", ".join(spec.dtypes), *spec.aliases))


def test_doctor_gpu_hint_matches_gpu_check_usage():
    """The hint's command lines are the ones benchmarks/gpu_check.sh prints as its usage, optional
    [arguments] given or not."""
    from accelc import doctor
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=30)
    usage = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("bash ")]
    assert done.returncode == 2 and len(usage) == 2, done.stdout  # pack, then run
    commands = [c for c in re.findall(r"`([^`]*)`", doctor.GPU_HINT) if c.startswith("bash ")]
    assert len(commands) == 2
    for command, line in zip(commands, usage):
        forms = {" ".join(re.sub(r"\[([^]]*)\]", r"\1", line).split()),  # with the optional part
                 " ".join(re.sub(r"\[[^]]*\]", "", line).split())}  # without it
        assert " ".join(command.split()) in forms, (command, line)
    from accelc.config import targets
    finding = doctor.check(targets.load_all(ROOT)["cuda-sm80"])
    assert finding.verify == "native" or doctor.GPU_HINT in finding.fixes  # what doctor says without a GPU


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="sizes the pipe (Linux)")
def test_broken_pipe_exits_quietly():
    """`accelc schema | head -2`: the reader goes away after a little; no traceback, not exit 3."""
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)  # smaller than the schema (26 KB): not all of it fits
    process = subprocess.Popen([sys.executable, "-m", "accelc", "schema"], cwd=ROOT, stdout=writer,
                               stderr=subprocess.PIPE)
    os.close(writer)
    with open(reader, "rb") as pipe:
        assert pipe.read(100)
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141 and err == ""


def test_broken_pipe_at_the_last_flush_exits_quietly():
    """`accelc validate ... --json | head -1` with output small enough to sit in the buffer until exit."""
    process = subprocess.Popen([sys.executable, "-m", "accelc", "validate", *sorted(ROOT.glob("recipes/*.yaml")),
                                "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before it writes anything
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141 and err == ""


def test_version_is_quick_and_imports_neither_torch_nor_tvm():
    probe = ("import sys; from accelc.cli.main import main; code = main(['--version']); "
             "print(code, sorted(m for m in ('torch', 'tvm', 'pydantic') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert done.stderr == "" and lines[-1] == "0 []"
    from importlib import metadata

    import accelc
    assert lines[:4] == [f"accelc {accelc.__version__}", f"python {platform.python_version()}",
                         f"torch {metadata.version('torch')}", f"tvm {metadata.version('apache-tvm')}"]


def test_version_without_torch(capsys, monkeypatch):
    from importlib import metadata
    real = metadata.version

    def version(name):
        if name == "torch":
            raise metadata.PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(metadata, "version", version)
    rc, out, _ = cli(["--version"], capsys)
    assert rc == 0 and "torch not installed" in out.splitlines()


def test_output_under_a_file_fails_before_any_work(tmp_path, capsys):
    repo = make_repo(tmp_path)
    (repo / "afile").write_text("mine")
    for cache in (["--no-cache"], []):
        rc, out, err = cli(["build", write_recipe(repo, TINY_RECIPE), "--output", repo / "afile" / "sub", *cache],
                           capsys)
        assert rc == 2 and "error[E703]" in err and "Traceback" not in out + err
        assert f"{repo / 'afile'} is not a directory" in err
        assert "[1/6] loading" in err and "capturing" not in err  # refused at step 1, before the model is loaded
    assert (repo / "afile").read_text() == "mine"


def test_output_where_we_cannot_write_fails_before_any_work(tmp_path, capsys, monkeypatch):
    repo = make_repo(tmp_path)
    (repo / "locked").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != repo / "locked" and real(path, mode))
    rc, out, err = cli(["build", write_recipe(repo, TINY_RECIPE), "--output", repo / "locked" / "a" / "b",
                        "--no-cache"], capsys)
    assert rc == 2 and "error[E703]" in err and "permission denied" in err and "Traceback" not in err
    assert "capturing" not in err and not (repo / "locked" / "a").exists()


def test_inspect(capsys):
    folder = shared_artifact()
    rc, out, _ = cli(["inspect", folder], capsys)
    assert rc == 0
    table = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines()[2:])
    assert table["name"] == "pair" and table["target"].startswith("x86 (cpu, x86_64)")
    assert table["input a"] == "['batch', 3] float32" and table["verification"] == "passed"
    digest = hashlib.sha256((folder / artifact.LIBRARY).read_bytes()).hexdigest()
    assert table[f"file {artifact.LIBRARY}"] == digest[:16]
    rc, out, _ = cli(["inspect", folder, "--json"], capsys)
    assert rc == 0 and json.loads(out) == artifact.read_manifest(folder)


def test_inspect_refuses_a_tampered_artifact(tmp_path, capsys):
    copy = copy_artifact(tmp_path / "copy")
    (copy / "extra.txt").write_text("x")
    assert "unexpected file extra.txt" in assert_cli_user_error(["inspect", copy], capsys, "E702")
    (copy / "extra.txt").unlink()
    manifest = json.loads((copy / artifact.MANIFEST).read_text())
    manifest["inputs"][0]["dtype"] = "float"
    (copy / artifact.MANIFEST).write_text(json.dumps(manifest))
    err = assert_cli_user_error(["inspect", copy], capsys, "E701")
    assert f"{copy / artifact.MANIFEST}: inputs[0].dtype: unknown dtype 'float'" in err
    (copy / artifact.MANIFEST).write_text("[")
    assert_cli_user_error(["inspect", copy], capsys, "E701")
    assert_cli_user_error(["inspect", tmp_path / "none"], capsys, "E700")


def test_verify_reruns_against_the_eager_model(capsys):
    rc, out, err = cli(["verify", shared_artifact(), "--samples", "1"], capsys)
    assert rc == 0, err
    assert "PASSED" in out and "output0" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("1 ", "4 "))]
    assert rows and all(row[-1] == "ok" and row[2] == "1" for row in rows)  # one sample per batch size


def test_verify_that_fails_names_the_reference_output_and_numbers(capsys, monkeypatch):
    from accelc.verify import artifact_check
    row = {"output": "logits", "batch": 4, "samples": 1, "max_abs": 0.5, "max_rel": 0.9, "mismatched": 3,
           "elements": 8, "passed": False, "sqnr_db": 12.0, "criterion": None}
    failed = {"status": "failed", "tolerance": {"atol": 1e-4, "rtol": 1e-3}, "rows": [row],
              "reference": "rewritten graph (after passes)", "sqnr": {"vs_rewritten": 40.0, "vs_original": None}}
    monkeypatch.setattr(artifact_check, "reverify", lambda folder, samples=None: failed)
    rc, out, _ = cli(["verify", shared_artifact()], capsys)
    assert rc == 1
    assert ("output 'logits' at batch 4 does not match the rewritten graph (after passes): max abs err 0.5, 3/8 "
            "elements outside the tolerance, SQNR 12.0 dB (floor 40 dB)") in out


def test_verify_on_something_that_is_not_an_artifact(tmp_path, capsys):
    assert_cli_user_error(["verify", tmp_path], capsys, "E700")


DRIFT = textwrap.dedent("""\
    version: 1
    name: drift
    model:
      entrypoint: tests.fixtures.models:drifting
      inputs:
        - {name: x, shape: [batch, 3], dtype: float32}
      batch: [2]
    verify: {samples: 1, tolerance: {atol: 0.5, rtol: 0}}
    """)


def test_verification_failure_exits_1_and_writes_nothing(tmp_path, capsys):
    repo = make_repo(tmp_path)
    path = write_recipe(repo, DRIFT)
    previous = copy_artifact(tmp_path / "previous")
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    for output in (tmp_path / "fresh", previous):
        rc, out, err = cli(["build", path, "--output", output], capsys)
        assert rc == 1, err
        assert "FAILED" in err and "error[E600]" in err and "Traceback" not in err
        assert out == ""  # progress and the report are on stderr; a build prints no result on stdout
    assert not (tmp_path / "fresh").exists()
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before  # the old artifact is untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_bug_exits_3_with_a_traceback(tmp_path, capsys, monkeypatch):
    from accelc.config import recipe

    def broken(path):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(recipe, "load", broken)
    rc, _, err = cli(["validate", write_recipe(tmp_path, TINY_RECIPE)], capsys)
    assert rc == 3 and "Traceback" in err and "ZeroDivisionError" in err and "bug in accelc" in err


# ---- the console: the library's logging records on stderr, -v / -q, ticks on a terminal only ------

@pytest.mark.parametrize("argv, verbosity", [(["validate", "r.yaml"], 0), (["-q", "validate", "r.yaml"], -1),
                                             (["validate", "r.yaml", "-v"], 1), (["-v", "build", "r.yaml"], 1),
                                             (["build", "r.yaml", "--quiet"], -1)])
def test_verbosity_before_or_after_the_command(argv, verbosity):
    from accelc.cli.main import parser
    assert parser().parse_args(argv).verbosity == verbosity


def test_the_console_shows_info_by_default_debug_with_v_and_warnings_only_with_q(capsys):
    from accelc.cli import common
    log = logging.getLogger("accelc.tests.console")
    for verbosity, shown in ((-1, ["  warning: w"]), (0, ["i", "  warning: w"]), (1, ["d", "i", "  warning: w"])):
        with common.console(verbosity):
            log.debug("d")
            log.info("i")
            log.warning("  w")  # the message's own indentation stays in front
        assert capsys.readouterr() == ("", "".join(f"{line}\n" for line in shown))


def test_progress_ticks_reach_a_terminal_only(capsys, monkeypatch):
    """Tuning's line per measured batch is a tick: shown on a terminal, left out of a CI log."""
    from accelc.backends.tvm.tune import metaschedule
    from accelc.cli import common
    progress = metaschedule.Progress(["dense"], None, logging.getLogger("accelc.backends.tvm.tune.metaschedule"))
    for terminal in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
        with common.console(0):
            progress.record(0, [SimpleNamespace(error_msg=None, run_secs=[2e-6])], 1)
        err = capsys.readouterr().err
        assert ("1/1 kernels done, " in err and "dense: best 2.00 us after" in err) == terminal, err


def test_quiet_keeps_errors_and_drops_progress(tmp_path, capsys):
    repo = make_repo(tmp_path)
    (repo / "afile").write_text("mine")
    argv = ["build", write_recipe(repo, TINY_RECIPE), "--output", repo / "afile" / "sub"]
    _, _, err = cli(argv, capsys)
    assert "[1/6] loading recipe and target ..." in err
    rc, out, err = cli(["-q", *argv], capsys)
    assert rc == 2 and out == "" and err.startswith("error[E703]") and "[1/6]" not in err


def test_the_cli_leaves_logging_as_it_found_it(tmp_path, capsys):
    """main() may run many times in one process (tests, notebooks): its handler goes when it returns,
    and a library user who configured nothing sees nothing afterwards."""
    logger = logging.getLogger("accelc")
    before = (logger.level, list(logger.handlers))
    cli(["-v", "validate", write_recipe(make_repo(tmp_path), TINY_RECIPE)], capsys)
    assert (logger.level, logger.handlers) == before
    logging.getLogger("accelc.compile").warning("after the command")
    assert capsys.readouterr() == ("", "")


def test_json_commands_print_only_json_on_stdout(capsys):
    rc, out, _ = cli(["doctor", "--json", "-v"], capsys)
    assert rc == 0 and {row["target"] for row in json.loads(out)} >= {"x86", "aarch64"}


def test_the_library_never_imports_the_cli():
    """The CLI calls the library; the library does not print, parse arguments or reach back."""
    package = ROOT / "accelc"
    for path in sorted(package.rglob("*.py")):
        if path.parts[len(package.parts)] in ("cli", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "accelc.cli" or n.startswith("accelc.cli.") for n in names), path
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                assert path.name == "__main__.py", f"{path}:{node.lineno} prints; log instead"
