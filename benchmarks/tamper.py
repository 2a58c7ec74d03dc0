"""Tamper with an artifact in every way we can think of and check that it is refused before any
native code is loaded: a flipped bit in every byte of the manifest and at spread offsets of every
other file, truncated, extended, emptied, missing, extra and replaced files, edited manifest
fields, and a library swapped together with its hash (the attacker who rewrites the manifest).

Each case runs twice: unsigned (sha256 check only) and signed (HMAC with a key). Unsigned, an
edit to the manifest alone cannot be told from a legitimate one (README "Threat model"); every
other case must be refused. Signed, every case must be refused.

    python benchmarks/tamper.py [ARTIFACT] [--offsets 64]

Without ARTIFACT it builds the tiny test MLP first. Exits 1 if a case that must be refused was not.
tests/unit/artifact/test_signing.py runs the same cases.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from accelc.artifact import store as artifact  # noqa: E402
from accelc.artifact import signing
from accelc.errors import ArtifactError  # noqa: E402

KEY = "tamper-benchmark-key-0123456789abcdef"


@dataclass(frozen=True)
class Case:
    kind: str  # the family, for the table
    name: str
    apply: Callable[[Path], None]
    manifest_only: bool = False  # touches nothing but manifest.json (undetectable unsigned)


def _flip(name: str, offset: int) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        data[offset] ^= 0x01
        (folder / name).write_bytes(bytes(data))
    return apply


def _rewrite(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(change((folder / name).read_bytes()))


def _edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Change the manifest's content and write it back as valid JSON."""
    def apply(folder: Path) -> None:
        manifest = json.loads((folder / artifact.MANIFEST).read_text())
        change(manifest)
        (folder / artifact.MANIFEST).write_text(json.dumps(manifest, indent=2))
    return apply


def _swap_library(folder: Path) -> None:
    """Another library put in place, and its hash written into the manifest."""
    lib = folder / artifact.LIBRARY
    lib.write_bytes(lib.read_bytes() + b"\0payload")
    _edit(lambda m: m["files"].update({artifact.LIBRARY: artifact.sha256_file(lib)}))(folder)


def _replace_with(name: str, kind: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / name
        data = path.read_bytes()
        path.unlink()
        if kind == "directory":
            path.mkdir()
        else:  # a link to identical bytes outside the artifact
            outside = folder.parent / f"outside-{name}"
            outside.write_bytes(data)
            path.symlink_to(outside)
    return apply


def cases(folder: Path, offsets: int = 64, stride: int = 1) -> list[Case]:
    """Every tamper case for the artifact at `folder`: bit flips at `offsets` spread offsets of each
    file, and at every `stride`-th byte of the manifest."""
    found = []
    for path in sorted(folder.iterdir()):
        name, size = path.name, path.stat().st_size
        every = range(0, size, stride) if name == artifact.MANIFEST else sorted(
            {i * (size - 1) // max(1, offsets - 1) for i in range(offsets)})
        manifest = name == artifact.MANIFEST
        found += [Case("bit flip", f"{name}@{i}", _flip(name, i), manifest) for i in every]
        found += [Case("truncated/extended/emptied", f"{name} {how}", _rewrite(name, change), manifest)
                  for how, change in (("truncated", lambda b: b[:-1]), ("extended", lambda b: b + b"\n"),
                                      ("emptied", lambda b: b""))]
        found += [Case("missing", f"{name} deleted", lambda f, n=name: (f / n).unlink())]
        found += [Case("replaced", f"{name} -> {kind}", _replace_with(name, kind)) for kind in ("directory", "link")]
    found += [Case("extra file", f"extra {extra}", lambda f, e=extra: (f / e).write_bytes(b"\x7fELF"))
              for extra in ("evil.so", ".hidden", "manifest.json.bak")]
    found += [Case("extra file", "extra directory", lambda f: (f / "plugins").mkdir())]
    edits = {  # valid JSON, other content
        "verified flag": lambda m: m.update(verified=not m.get("verified")),
        "input shape": lambda m: m["inputs"][0].update(shape=["batch", 4096]),
        "target": lambda m: m["target"].update(name="cuda-sm90", device="cuda"),
        "functions": lambda m: m.update(functions={"1": "main"}),
        "added field": lambda m: m.update(note="harmless?"),
        "signature removed": lambda m: m.pop(signing.FIELD, None),
        "signature altered": lambda m: m.update({signing.FIELD: {"algorithm": signing.ALGORITHM, "hmac": "0" * 64}}),
        "algorithm altered": lambda m: m.update({signing.FIELD: {"algorithm": "none", "hmac": ""}}),
    }
    found += [Case("manifest edit", name, _edit(change), True) for name, change in edits.items()]
    found += [Case("library + hash swapped", "lib.so replaced, its sha256 updated", _swap_library, True)]
    return found


def outcome(folder: Path, key: str | None) -> str:
    """The error code the loader's pre-native checks give (signature, hashes, the manifest's types),
    or 'accepted'."""
    try:
        artifact.load_manifest(folder, key)
    except ArtifactError as exc:
        return exc.code
    return "accepted"


def content(folder: Path) -> dict:
    """What a loader could act on: the bytes of each file, and the manifest as parsed (a flipped
    17th digit of a float, or a trailing newline, leaves it the same artifact)."""
    found = {}
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or not path.is_file():
            found[path.name] = "not a regular file"
        elif path.name == artifact.MANIFEST:
            try:
                found[path.name] = json.dumps(json.loads(path.read_bytes()), sort_keys=True)
            except ValueError:
                found[path.name] = "not JSON"
        else:
            found[path.name] = path.read_bytes()
    return found


def sweep(original: Path, key: str | None, offsets: int = 64, stride: int = 1) -> list[tuple[Case, str]]:
    """Run every case on a fresh copy of `original`; (case, outcome): an error code, 'accepted',
    or 'unchanged' (accepted, and rightly: the tampering changed nothing a loader reads)."""
    results, before = [], content(original)
    with tempfile.TemporaryDirectory(prefix="accelc-tamper-") as scratch:
        work = Path(scratch) / "artifact"
        for case in cases(original, offsets, stride):
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(original, work, symlinks=True)
            case.apply(work)
            got = outcome(work, key)
            results.append((case, "unchanged" if got == "accepted" and content(work) == before else got))
    return results


def must_refuse(case: Case, signed: bool, got: str) -> bool:
    return got != "unchanged" and (signed or not case.manifest_only)


def signed_copy(source: Path, dest: Path, key: str = KEY) -> Path:
    """A copy of `source` whose manifest is signed with `key` (files re-hashed, then signed)."""
    shutil.copytree(source, dest)
    artifact.write_manifest(dest, artifact.load_manifest(dest), key)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", nargs="?")
    parser.add_argument("--offsets", type=int, default=64, help="bit-flip offsets per non-manifest file")
    args = parser.parse_args(argv)
    os.environ.pop(signing.ENV, None)  # "unsigned" must mean unsigned
    if args.artifact:
        source = Path(args.artifact)
    else:
        from tests.fixtures.helpers import shared_artifact
        source = shared_artifact()
    failures, table = [], Counter()
    with tempfile.TemporaryDirectory(prefix="accelc-tamper-src-") as scratch:
        plain = Path(scratch) / "unsigned"
        shutil.copytree(source, plain)
        artifact.write_manifest(plain, artifact.load_manifest(plain), key=None)  # any signature dropped
        for signed, folder, key in ((False, plain, None), (True, signed_copy(plain, Path(scratch) / "signed"), KEY)):
            for case, got in sweep(folder, key, args.offsets):
                refused = got not in ("accepted", "unchanged")
                table[(case.kind, "signed" if signed else "unsigned", got if not refused else "refused")] += 1
                if must_refuse(case, signed, got) and not refused:
                    failures.append(f"{'signed' if signed else 'unsigned'} {case.name}: accepted")
    columns = ("refused", "accepted", "unchanged")
    print(f"{'case family':<28} {'mode':<9}" + "".join(f"{c:>10}" for c in columns))
    for kind in dict.fromkeys(k for k, _, _ in table):
        for mode in ("unsigned", "signed"):
            print(f"{kind:<28} {mode:<9}" + "".join(f"{table[(kind, mode, c)]:>10}" for c in columns))
    print(f"{sum(table.values())} tamper cases; accepted where they had to be refused: {len(failures)}")
    print("accepted: unsigned, an edit to manifest.json alone that leaves valid JSON (README, Threat model);\n"
          "unchanged: the same parsed manifest (a float's 17th digit, a trailing newline), rightly accepted")
    for line in failures[:20]:
        print("FAILURE", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
