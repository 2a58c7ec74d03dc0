"""No import cycle in accelc: statically (the graph of module-level imports has no cycle) and in
practice (every module imports on its own in an interpreter that has loaded no accelc module)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.helpers import ROOT

PACKAGE = ROOT / "accelc"
SKIP = {"accelc.__main__", "accelc.emulate.__main__"}  # they run the CLI when imported

# A fork server: third-party packages are loaded once, then each accelc module is imported in a
# child forked before any accelc module was loaded, so each import starts from nothing of ours.
FORKER = """
import json, os, sys, traceback
import numpy, pydantic, yaml, torch, tvm  # noqa: F401  (third-party only)
assert not [m for m in sys.modules if m == "accelc" or m.startswith("accelc.")]
failed = {}
for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc()[-3000:].encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    if os.waitpid(pid, 0)[1] != 0:
        failed[name] = text or "killed"
print(json.dumps(failed))
"""


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _module_level(tree: ast.Module):
    """Import statements that run at import time: not those inside functions or TYPE_CHECKING."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))


def imports_of(name: str, known: set[str]) -> set[str]:
    """accelc modules that importing `name` imports first (package __init__s included, except
    those of `name`'s own packages, which are already being imported)."""
    path = PACKAGE.parent / (name.replace(".", "/") + ".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _module_level(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).strip(".")
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return found - own - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    """Control for the check below: a hand-made cycle is reported, a chain is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_module_level_imports_have_no_cycle():
    known = set(modules())
    graph = {name: imports_of(name, known) for name in known}
    assert "accelc.config.recipe" in graph["accelc.capture.export"]  # the graph sees real edges
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_every_module_imports_first_in_a_fresh_interpreter():
    names = [name for name in modules() if name not in SKIP]
    done = subprocess.run([sys.executable, "-c", FORKER, json.dumps(names)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = json.loads(done.stdout)
    assert failed == {}, "\n\n".join(f"{name}:\n{text}" for name, text in failed.items())


def test_no_test_module_imports_another_or_a_private_name():
    """Tests share helpers through tests/fixtures only, and use accelc's public names: a test that
    reaches into another test or a private helper breaks when either is rearranged."""
    import ast
    import re
    tests = Path(__file__).resolve().parents[1]
    for path in sorted(tests.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            assert node.level == 0 and not re.search(r"(^|\.)test_", node.module), (path, node.module)
            if node.module.startswith("accelc"):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                assert not private, (path, node.module, private)
