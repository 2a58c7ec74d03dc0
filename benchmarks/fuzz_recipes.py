"""Recipe fuzzing: mutate valid recipes and check that `accelc validate` (recipe + target) either
accepts each one or refuses it with coded, located errors; never another exception, never a hang.

    python benchmarks/fuzz_recipes.py [--cases 20000] [--seed 0] [--timeout 10]

Prints the number of cases and the outcomes per mutation class and per error code; exits 1 if any
case crashed, hung or produced an error without a location. tests/unit/config/test_fuzz_recipes.py drives the
same mutations with hypothesis.
"""
from __future__ import annotations

import argparse
import copy
import math
import random
import signal
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from accelc.config import recipe as recipe_mod  # noqa: E402
from accelc.config import targets
from accelc.errors import AccelcError  # noqa: E402

TINY = """\
version: 1
name: tiny
model:
  entrypoint: examples.mlp.model:build_model
  kwargs: {sizes: [4, 8, 2]}
  inputs:
    - {name: x, shape: [batch, 4], dtype: float32, range: [0, 1]}
  batch: [1, 4]
data: {samples: examples.mlp.data:samples}
passes:
  - {kind: simplify}
target: x86
tuning: {trials: 0, database: .accelc/tuning}
verify: {tolerance: {atol: 1.0e-4, rtol: 1.0e-3}, samples: 2, seed: 3}
output: build/{name}-{target}
"""
BASES = [TINY, *(p.read_text("utf-8") for p in sorted((ROOT / "recipes").glob("*.yaml")))]

NUMBERS = [0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, -(10**30), 1e308, -1e-308, 0.5, -0.0,
           math.inf, -math.inf, math.nan, 1e-320]
TEXTS = ["", " ", "\u202eevil", "caf\u00e9", "\U0001f600" * 8, "a\u0000b", "\ufeff", "x" * 5000, "\u0301",
         "..", "../../etc/passwd", "/abs/path", "a:b", "os:system", "{name}{target}", "{0}", "{name!r}",
         "batch", "float32", "x86", "simplify", "\\x00", "%s%n", "'", '"', "\t", "NaN", "null", "~", "yes"]
TAGS = ["!!python/object/apply:os.system [echo]", "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [a: 1]",
        "!custom x", "!!int abc", "!!float x", "!!timestamp 9999-99-99", "!!str", "!!null ''"]


# ---- mutations on the data (dumped back to YAML) ------------------------------------------------

def _paths(node, prefix=()):
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _paths(value, prefix + (key,))


def _pick(rng: random.Random, data) -> tuple:
    """A (parent, key) of a random node below the root (a new root key when there is none)."""
    paths = [p for p in _paths(data) if p]
    if not paths:
        return data, "added"
    path = rng.choice(paths)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    return parent, path[-1]


def _value(rng: random.Random, depth: int = 0):
    """A random YAML-able value of any type."""
    kind = rng.randrange(7 if depth < 3 else 4)
    return [lambda: None, lambda: rng.random() < 0.5, lambda: rng.choice(NUMBERS), lambda: rng.choice(TEXTS),
            lambda: [_value(rng, depth + 1) for _ in range(rng.randrange(4))],
            lambda: {rng.choice(TEXTS + ["kind", "name", "shape"]): _value(rng, depth + 1)
                     for _ in range(rng.randrange(4))},
            lambda: rng.choice([[], {}, [[]], [{}]])][kind]()


def types(rng, data):
    parent, key = _pick(rng, data)
    parent[key] = _value(rng)


def missing(rng, data):
    parent, key = _pick(rng, data)
    del parent[key]


def extra(rng, data):
    parent, _ = _pick(rng, data)
    target = parent if isinstance(parent, dict) else data
    names = [k for k in target if isinstance(k, str)] or ["key"]
    name = rng.choice(names)
    target[rng.choice([name + "s", name[:-1], name.upper(), rng.choice(TEXTS), rng.randrange(99)])] = _value(rng)


def numbers(rng, data):
    leaves = [(p, k) for p, k in _all_leaves(data) if isinstance(p[k], (int, float)) and not isinstance(p[k], bool)]
    parent, key = rng.choice(leaves) if leaves else _pick(rng, data)
    parent[key] = rng.choice(NUMBERS)


def unicode(rng, data):
    strings = [(p, k) for p, k in _all_leaves(data) if isinstance(p[k], str)]
    parent, key = rng.choice(strings)
    parent[key] = rng.choice(TEXTS) if rng.random() < 0.5 else parent[key] + rng.choice(TEXTS)
    if isinstance(parent, dict) and rng.random() < 0.3:  # a unicode key too
        parent[rng.choice(TEXTS) + str(key)] = parent.pop(key)


def shapes(rng, data):
    """Absurd shapes and batches: refused from the numbers, before anything is allocated."""
    model = data["model"] = data["model"] if isinstance(data.get("model"), dict) else {}
    inputs = model.get("inputs") if isinstance(model.get("inputs"), list) and model["inputs"] else [{}]
    spec = inputs[0] if isinstance(inputs[0], dict) else {}
    spec["shape"] = rng.choice([["batch", 10**6, 10**6], [10**12], ["batch"] * 2, [0], [-3, 4], [1] * 9, [],
                                ["batch", 2**20, 2**20], ["n", 4], [1.5], [True, 4], "batch"])
    if rng.random() < 0.5:
        model["batch"] = rng.choice([[65536], [0], [-1], [10**9], [1] * 1000, [], "1"])
    model["inputs"] = [spec] + inputs[1:]


def _all_leaves(node):
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, (dict, list)):
            yield from _all_leaves(value)
        else:
            yield node, key


DATA_MUTATIONS = [types, missing, extra, numbers, unicode, shapes]


def _dump(data) -> bytes:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False).encode("utf-8")


# ---- mutations on the text ---------------------------------------------------------------------

def _lines(text: bytes) -> list[bytes]:
    return text.split(b"\n")


def _valued(lines: list[bytes]) -> list[int]:
    """Lines of the form `key: value` (not a section header, not a comment)."""
    return [i for i, line in enumerate(lines) if b": " in line and not line.rstrip().endswith(b":")
            and not line.lstrip().startswith(b"#")]


def nesting(rng, text: bytes) -> bytes:
    """A value nested around the depth limit, or far beyond what a recursive parser survives."""
    lines = _lines(text)
    i = rng.choice(_valued(lines))
    depth = rng.choice([10, 63, 64, 65, 200, 100_000])  # beyond ~300, all fail alike (recursion)
    open_, close = (b"[", b"]") if rng.random() < 0.5 else (b"{a: ", b"}")
    lines[i] = lines[i].split(b": ", 1)[0] + b": " + open_ * depth + b"1" + close * depth
    return b"\n".join(lines)


def anchors(rng, text: bytes) -> bytes:
    """Anchors, aliases, merge keys, recursive aliases and alias bombs."""
    choice = rng.randrange(6)
    if choice == 5:  # a legitimate anchor and alias: still a valid recipe
        named = text.replace(b"\nname: ", b"\nname: &n ", 1)
        return named.replace(b"\noutput: build/{name}-{target}", b"\noutput: *n")
    if choice == 0:  # an alias of an earlier section
        return text + rng.choice([b"\nextra: &e {a: 1}\nmore: *e\n", b"\nverify: *nothere\n", b"\nx: &a [*a]\n"])
    if choice == 1:  # merge keys into a section
        return text.replace(b"\nverify:", b"\nbase: &b {samples: 3}\nverify:\n  <<: *b\n  ignored:", 1)
    if choice == 2:  # billion laughs
        lines = [b"a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        lines += [b"%c: &%c [" % (c, c) + b", ".join([b"*%c" % (c - 1)] * 9) + b"]" for c in b"bcdefghi"]
        return b"\n".join(lines) + b"\n" + text
    if choice == 3:  # an anchor on one value reused in a typed place
        return text.replace(b"batch: [1", b"batch: &n [1", 1) + b"\ntarget: *n\n"
    lines = [b"a0: &a0 {k0: 1, k1: 2}"]
    lines += [b"a%d: &a%d {<<: [" % (i, i) + b", ".join([b"*a%d" % (i - 1)] * 9) + b"]}" for i in range(1, 10)]
    return text + b"\n" + b"\n".join(lines) + b"\n"


def duplicates(rng, text: bytes) -> bytes:
    lines = _lines(text)
    keyed = [i for i, line in enumerate(lines) if b":" in line and not line.lstrip().startswith(b"#")]
    i = rng.choice(keyed)
    lines.insert(i + 1, lines[i])
    return b"\n".join(lines)


def tabs(rng, text: bytes) -> bytes:
    lines = _lines(text)
    i = rng.randrange(len(lines))
    stripped = lines[i].lstrip(b" ")
    indent = len(lines[i]) - len(stripped)
    lines[i] = rng.choice([b"\t" * max(1, indent // 2) + stripped, lines[i] + b"\t", b"\t" + lines[i],
                           lines[i].replace(b": ", b":\t", 1)])
    return b"\n".join(lines)


def bom(rng, text: bytes) -> bytes:
    marks = [b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf\xef\xbb\xbf"]
    where = 0 if rng.random() < 0.6 else rng.randrange(len(text))
    return text[:where] + rng.choice(marks) + text[where:]


def tags(rng, text: bytes) -> bytes:
    lines = _lines(text)
    i = rng.choice(_valued(lines))
    key = lines[i].split(b": ", 1)[0]
    lines[i] = key + b": " + rng.choice(TAGS).encode()
    return b"\n".join(lines)


def garbage(rng, text: bytes) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:  # random bytes inserted
        where = rng.randrange(len(text) + 1)
        return text[:where] + rng.randbytes(rng.randrange(1, 16)) + text[where:]
    if choice == 1:  # bit flips
        data = bytearray(text)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice == 2:  # truncated
        return text[:rng.randrange(len(text))]
    return rng.choice([b"", b"\x00" * 64, rng.randbytes(256), b"- - - -", b"[", b"{{{", b"!!", b"%YAML 9.9\n---",
                       b"---\na: 1\n---\nb: 2\n", b"\x1b[31m", "\u2028\u2029".encode()])


TEXT_MUTATIONS = [nesting, anchors, duplicates, tabs, bom, tags, garbage]
MUTATIONS = {m.__name__: m for m in (*DATA_MUTATIONS, *TEXT_MUTATIONS)}


def mutate(rng: random.Random, name: str, base: str) -> bytes:
    """One mutated recipe of the class `name`; data mutations may stack a second one."""
    mutation = MUTATIONS[name]
    if mutation in TEXT_MUTATIONS:
        return mutation(rng, base.encode("utf-8"))
    data = copy.deepcopy(yaml.safe_load(base))
    mutation(rng, data)
    if rng.random() < 0.3:
        rng.choice(DATA_MUTATIONS)(rng, data)
    return _dump(data)


# ---- running a case -----------------------------------------------------------------------------

class Hang(Exception):
    """A case ran past its time bound."""


@contextmanager
def bounded(seconds: float):
    """Raise Hang in the main thread once the block has used `seconds` of CPU time (SIGPROF): CPU,
    not wall time, so that other work on a shared machine does not turn a slow case into a hang."""
    def expire(signum, frame):
        raise Hang()
    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def validate(path: Path) -> None:
    """What `accelc validate` checks: the recipe, its target, and their compatibility."""
    loaded = recipe_mod.load(path)
    spec = targets.resolve(loaded.recipe.target, loaded.root, loaded.where("target"))
    targets.check_compatible(spec, loaded.recipe, loaded.where)


def run_case(raw: bytes, path: Path, timeout: float = 10.0) -> str:
    """'ok', the first error code ('E102'), or a failure: 'crash: Type: message', 'hang' (more than
    `timeout` CPU seconds), 'unlocated: E...' (a coded error that does not say where)."""
    path.write_bytes(raw)
    try:
        with bounded(timeout):
            validate(path)
    except Hang:
        return "hang"
    except AccelcError as exc:
        unlocated = [p.code for p in exc.problems if not p.location]
        if not exc.problems or unlocated:
            return f"unlocated: {unlocated or exc.code}"
        return exc.code
    except Exception as exc:  # anything else is a bug in accelc
        return f"crash: {type(exc).__name__}: {str(exc)[:200]}"
    return "ok"


def is_failure(outcome: str) -> bool:
    return outcome.split(":")[0] in ("crash", "hang", "unlocated")


def scratch_repo(folder: Path) -> Path:
    """A repository root for the fuzzed recipes (targets resolve from the packaged ones)."""
    (folder / "pyproject.toml").write_text("[project]\nname = 'fuzz'\n")
    return folder / "recipe.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="CPU seconds per case before it counts as a hang")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    by_class, by_code, failures = Counter(), Counter(), []
    with tempfile.TemporaryDirectory(prefix="accelc-fuzz-") as scratch:
        path = scratch_repo(Path(scratch))
        for case in range(args.cases):
            name, base = rng.choice(list(MUTATIONS)), rng.choice(BASES)
            raw = mutate(rng, name, base)
            outcome = run_case(raw, path, args.timeout)
            by_class[(name, "ok" if outcome == "ok" else "failure" if is_failure(outcome) else "coded error")] += 1
            by_code[outcome if not is_failure(outcome) else outcome.split(":")[0]] += 1
            if is_failure(outcome):
                failures.append((case, name, outcome, raw[:300]))
    print(f"{args.cases} cases (seed {args.seed}), {len(MUTATIONS)} mutation classes, {len(BASES)} base recipes")
    print(f"{'class':<12} {'ok':>7} {'coded error':>12} {'failure':>8}")
    for name in MUTATIONS:
        print(f"{name:<12} {by_class[(name, 'ok')]:>7} {by_class[(name, 'coded error')]:>12} "
              f"{by_class[(name, 'failure')]:>8}")
    print("outcomes: " + ", ".join(f"{code} {n}" for code, n in sorted(by_code.items())))
    for case, name, outcome, raw in failures[:20]:
        print(f"FAILURE case {case} ({name}): {outcome}\n  {raw!r}")
    print(f"failures (crash, hang, unlocated): {len(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
