"""Artifact directories: written atomically, every file hashed in manifest.json.

Imports neither torch nor TVM: production servers read artifacts with this module.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT = 1
LIBRARY = "lib.so"
PARAMS = "params.bin"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_artifact(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@contextmanager
def staging(dest: Path):
    """Yield a temp directory beside `dest`; on success it replaces `dest` in one rename.

    `dest` may only be replaced if it is an accelc artifact (or absent): we never delete
    a directory someone else owns. On failure the temp dir is removed and `dest` is untouched.
    """
    dest = Path(dest).resolve()
    if dest.exists() and not is_artifact(dest):
        raise ArtifactError(f"output {dest} exists and is not an accelc artifact; refusing to replace it",
                            code="E703", hint="choose another --output or remove it yourself")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; an artifact is meant to be shared
    try:
        yield tmp
        _replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(tmp: Path, dest: Path) -> None:
    """Swap a finished directory into place; the old one is renamed away first, then deleted."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rename(dest, old / "a")
    os.rename(tmp, dest)
    _fsync_dir(dest.parent)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Hash every file in `folder` into the manifest and write it."""
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"format": FORMAT, **manifest, "files": files}
    text = json.dumps(manifest, indent=2, sort_keys=False, default=str)
    with open(folder / MANIFEST, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return manifest


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"no artifact at {folder}", code="E700")
    try:
        manifest = json.loads((folder / MANIFEST).read_text("utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{folder} has no {MANIFEST}; not an accelc artifact", code="E700") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{folder / MANIFEST} is not valid JSON: {exc}", code="E701") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{folder / MANIFEST} has unknown format {manifest.get('format')!r}"
                            if isinstance(manifest, dict) else f"{folder / MANIFEST} is not a mapping", code="E701")
    return manifest


def check_files(folder: Path, manifest: dict) -> None:
    """Every file present, unmodified, and nothing extra: before any native code is loaded."""
    folder = Path(folder)
    expected = manifest.get("files") or {}
    present = {p.name for p in folder.iterdir() if p.name != MANIFEST}
    problems = [f"missing file {name}" for name in sorted(set(expected) - present)]
    problems += [f"unexpected file {name}" for name in sorted(present - set(expected))]
    problems += [f"{name} does not match its sha256 (modified or truncated)" for name in sorted(set(expected) & present)
                 if sha256_file(folder / name) != expected[name]]
    if problems:
        raise ArtifactError(f"artifact {folder} failed its integrity check: " + "; ".join(problems), code="E702",
                            hint="rebuild it or copy it again; never edit an artifact by hand")


def update_manifest(folder: Path, **changes) -> dict:
    """Rewrite manifest fields (e.g. a later verification) without touching hashed files."""
    manifest = read_manifest(folder)
    check_files(folder, manifest)
    manifest.update(changes)
    tmp = Path(folder) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n", "utf-8")
    os.replace(tmp, Path(folder) / MANIFEST)
    return manifest
