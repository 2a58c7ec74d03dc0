"""The README is for users: at most 12,000 bytes, and what it shows runs. Its set-up commands are
the ones CI runs, its recipes validate and their models take the declared inputs, its Python
snippet uses names that exist and feeds the artifact what the recipe declares, every `accelc`
command it (or a page of docs/) shows exists with the options it shows, the cheap ones run, and
its links lead to files. Nothing here builds: the build is tested elsewhere
(tests/integration/test_edu_churn_build.py)."""
from __future__ import annotations

import ast
import builtins
import glob
import importlib
import inspect
import re
import shlex

import numpy as np
import pytest
import yaml

from tests.fixtures.helpers import ROOT, cli

README = ROOT / "README.md"
TEXT = README.read_text("utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
CHEAP = {"validate", "schema", "targets"}  # commands the test runs (no build, no server)


DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))  # hand-written pages (reference/ is generated)


def _blocks(*langs: str, text: str = TEXT) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang in langs]


def _commands(text: str = TEXT) -> list[list[str]]:
    """Every `accelc ...` command line of a page: shell blocks and inline code."""
    lines = [line for body in _blocks("bash", "sh", text=text) for line in body.splitlines()]
    lines += re.findall(r"`(accelc [^`]+)`", text)
    commands = []
    for line in (line.replace("\\|", "|") for line in lines):  # a pipe escaped inside a table
        for part in re.split(r"&&|\|(?!\|)|;| / ", line.split("#")[0]):
            part = part.strip().strip("`")
            if part.startswith("accelc "):
                commands.append(shlex.split(part.replace("[", " ").replace("]", " ")))
    return commands


def test_readme_is_at_most_12000_bytes():
    assert len(TEXT.encode("utf-8")) <= 12_000


def test_set_up_commands_are_the_ones_ci_runs():
    setup = next(body for body in _blocks("bash") if "pytest" in body).splitlines()
    install, tests = (line.split("#")[0].strip() for line in setup[:2])
    assert install.startswith("pip install -e '.[dev]' -c .ci/constraints.txt && accelc build recipes/")
    assert tests == "python -m pytest -q"
    run = (ROOT / ".ci" / "run").read_text()
    assert "-e '.[dev]' -c .ci/constraints.txt" in run
    assert "\npython -m pytest -q\n" in run  # exactly the README's test command
    assert (ROOT / install.split("accelc build ")[1]).is_file()


def _recipes() -> list[dict]:
    recipes = [yaml.safe_load(body) for body in _blocks("yaml")]
    return [r for r in recipes if isinstance(r, dict) and "version" in r]


def test_readme_has_a_complete_recipe_and_it_validates(tmp_path, capsys):
    recipes = _recipes()
    assert recipes, "the README shows no complete recipe"
    for index, recipe in enumerate(recipes):
        path = tmp_path / f"recipe{index}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        code, out, err = cli(["validate", path], capsys)
        assert code == 0, err


def test_readme_recipe_model_takes_its_declared_inputs():
    """The entrypoint exists, takes the recipe's kwargs and runs on inputs of the declared shape."""
    import torch
    for recipe in _recipes():
        module, name = recipe["model"]["entrypoint"].split(":")
        model = getattr(importlib.import_module(module), name)(**recipe["model"].get("kwargs", {}))
        inputs = [torch.zeros([1 if d == "batch" else d for d in spec["shape"]], dtype=getattr(torch, spec["dtype"]))
                  for spec in recipe["model"]["inputs"]]
        with torch.no_grad():
            assert isinstance(model(*inputs), torch.Tensor)


def _prediction_snippet() -> str:
    snippets = [body for body in _blocks("python") if "accelc.runtime" in body]
    assert snippets, "the README shows no prediction in Python"
    return snippets[0]


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_snippet_imports_and_names_exist(index):
    tree = ast.parse(_blocks("python")[index])
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    loads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert loads <= defined, loads - defined
    from accelc.runtime import load
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "load"):
        inspect.signature(load).bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})


def test_python_snippet_feeds_what_the_recipe_declares(monkeypatch):
    """Run the snippet with the artifact replaced by a stand-in that checks each call against the
    input the README's first recipe declares (recipes/edu_churn.yaml): name, dtype, shape."""
    import accelc.runtime
    build = re.search(r"accelc build (recipes/\S+)", TEXT)[1]
    recipe = yaml.safe_load((ROOT / build).read_text())
    (spec,) = recipe["model"]["inputs"]
    expected_folder = recipe["output"].format(name=recipe["name"], target=recipe["target"])
    calls = []

    def stand_in(folder, **options):
        assert folder == expected_folder
        def predict(*args, **kwargs):
            (array,) = [*args, *kwargs.values()]
            assert set(kwargs) <= {spec["name"]}
            assert array.dtype == np.dtype(spec["dtype"]) and list(array.shape[1:]) == spec["shape"][1:]
            calls.append(array)
            return np.zeros((len(array), 1), np.float32)
        return predict

    monkeypatch.setenv("TVM_USE_RUNTIME_LIB", "0")  # restored afterwards: the snippet sets it
    monkeypatch.setattr(accelc.runtime, "load", stand_in)
    exec(compile(_prediction_snippet(), "README.md", "exec"), {})
    assert calls, "the snippet made no prediction"


SHOWN = {(page.name, " ".join(argv)): argv for page in (README, *DOC_PAGES) for argv in _commands(page.read_text())
         if not argv[1].isupper()}  # `accelc COMMAND --help` names no command


@pytest.mark.parametrize("argv", SHOWN.values(), ids=[f"{page}: {command[:40]}" for page, command in SHOWN])
def test_every_accelc_command_shown_exists_with_its_options(argv, capsys):
    if argv[1:] == ["--version"]:
        code, out, _ = cli(["--version"], capsys)
        assert code == 0 and out.startswith("accelc ")
        return
    code, out, err = cli([argv[1], "--help"], capsys)
    assert code == 0, f"`accelc {argv[1]}` is not a command: {err}"
    for option in (a.split("=")[0] for a in argv[2:] if a.startswith("-")):
        assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", out), f"`accelc {argv[1]}` has no option {option}"


def test_cheap_commands_run(capsys):
    ran = set()
    for argv in _commands():
        if argv[1] in CHEAP and not any(a.isupper() for a in argv[2:]):  # placeholders: RECIPE, ARTIFACT
            args = [part for a in argv[1:] for part in (sorted(glob.glob(str(ROOT / a))) if "*" in a else [a])]
            code, out, err = cli(args, capsys)
            assert code == 0, (argv, err)
            ran.add(argv[1])
    assert ran, "no cheap command shown"


def test_links_lead_to_files_and_headings():
    headings = {re.sub(r"[^\w\s-]", "", h).strip().lower().replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", TEXT, re.M)}
    for target in re.findall(r"\]\(([^)]+)\)", TEXT):
        if target.startswith("http"):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (ROOT / path).exists(), target
        else:
            assert anchor in headings, target
