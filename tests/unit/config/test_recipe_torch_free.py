"""`accelc validate` and `accelc schema` where torch and TVM are absent: each runs in a fresh
interpreter whose imports of torch and tvm fail (a sys.meta_path finder), as on a CI runner or an
editor machine without the compiler. Recipe errors stay coded and located there."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.helpers import ROOT, TINY_RECIPE, at, make_repo, write_recipe

BLOCKED = ("torch", "tvm")
# Runs the CLI with torch and tvm unimportable; prints the names it refused last, on stderr.
PROGRAM = f"""
import sys

class Block:
    tried = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            self.tried.append(name)
            raise ImportError(f"{{name}} is blocked by the test")
        return None

sys.meta_path.insert(0, Block())
from accelc.cli.main import main
try:
    code = main(sys.argv[1:])
finally:
    sys.stderr.write("BLOCKED:" + ",".join(Block.tried) + "\\n")
raise SystemExit(code)
"""


def run_blocked(*argv: str, cwd: Path = ROOT) -> tuple[int, str, str]:
    """(exit code, stdout, stderr without the blocker's report); fails if torch or tvm was asked for."""
    done = subprocess.run([sys.executable, "-c", PROGRAM, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    err, _, tried = done.stderr.rpartition("BLOCKED:")
    assert tried.strip() == "", f"the command tried to import {tried.strip()}; stderr: {err}"
    return done.returncode, done.stdout, err


def test_the_blocker_blocks():
    """Control: the same interpreter set-up fails on a command that needs torch."""
    done = subprocess.run([sys.executable, "-c", PROGRAM.replace("from accelc.cli.main import main",
                                                                 "import accelc.passes.quantize")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "torch is blocked by the test" in done.stderr


def test_validate_every_packaged_recipe_without_torch():
    recipes = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*.yaml"))
    assert recipes
    code, out, err = run_blocked("validate", *recipes)
    assert code == 0, err
    assert out.splitlines() == [f"{path}: ok" for path in recipes]


def test_schema_without_torch_is_the_full_schema():
    from accelc.config.recipe import json_schema  # here torch may be loaded: the reference
    code, out, err = run_blocked("schema")
    assert code == 0, err
    schema = json.loads(out)
    assert schema == json_schema()
    kinds = schema["properties"]["passes"]["items"]["discriminator"]["mapping"]
    assert set(kinds) == {"fold_batchnorm", "merge_linear", "prune", "quantize", "simplify"}


def test_bad_recipe_is_coded_and_located_without_torch(tmp_path):
    repo = make_repo(tmp_path)
    text = TINY_RECIPE + "passes:\n  - {kind: quantize, mode: dynamic, reduce_rnge: true}\n"
    path = write_recipe(repo, text)
    code, out, err = run_blocked("validate", str(path), cwd=repo)
    assert code == 2, (out, err)
    assert f"error[E103] {at(path.relative_to(repo), text, 'reduce_rnge')}: passes.0.reduce_rnge: unknown key" in err
    assert "did you mean 'reduce_range'?" in err and "Traceback" not in err


def test_target_policy_conflict_is_coded_and_located_without_torch(tmp_path):
    """8-bit activations on the AVX2 target: refused by validate, at the field, before any work."""
    repo = make_repo(tmp_path)
    text = TINY_RECIPE + "passes:\n  - {kind: quantize, mode: dynamic, reduce_range: false}\n"
    path = write_recipe(repo, text)
    code, out, err = run_blocked("validate", str(path), cwd=repo)
    assert code == 2, (out, err)
    where = at(path.relative_to(repo), text, "false")
    assert f"error[E202] {where}: passes.0.reduce_range: reduce_range: false asks for 8-bit activations" in err
    assert "vpmaddubsw" in err and "Traceback" not in err  # the target file's reason
    code, out, err = run_blocked("validate", str(path), "--target", "x86-avx512-vnni", cwd=repo)
    assert code == 0, err
