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

    `dest` may only be replaced if it is an accelc artifact (or absent, or an empty directory):
    we never delete what someone else owns. On failure the temp dir is removed and `dest` is untouched.
    """
    dest = Path(dest).resolve()
    if dest.exists() and not is_artifact(dest) and not _empty_dir(dest):
        raise ArtifactError(f"output {dest} exists and is not an accelc artifact; refusing to replace it",
                            code="E703", hint="choose another --output or remove it yourself")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as exc:
        raise ArtifactError(f"cannot create the output {dest}: {exc.strerror or exc}", code="E703") from None
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; an artifact is meant to be shared
    try:
        yield tmp
        _replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _empty_dir(path: Path) -> bool:
    """An empty directory (say, made by `mkdir -p` in a CI script) holds nothing to lose."""
    return path.is_dir() and not path.is_symlink() and next(path.iterdir(), None) is None


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
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{folder / MANIFEST} is not valid JSON: {exc}", code="E701") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {folder / MANIFEST}: {exc.strerror or exc}", code="E700") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{folder / MANIFEST} has unknown format {manifest.get('format')!r}"
                            if isinstance(manifest, dict) else f"{folder / MANIFEST} is not a mapping", code="E701")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ArtifactError(f"{folder / MANIFEST} has no valid 'files' table of sha256 digests", code="E701")
    return manifest


def require(manifest: dict, folder: Path, **fields: type) -> None:
    """Fail with a coded error, not a KeyError, when a manifest lacks a field a reader needs."""
    for name, kind in fields.items():
        if not isinstance(manifest.get(name), kind):
            raise ArtifactError(f"{Path(folder) / MANIFEST}: field '{name}' is missing or not a {kind.__name__}",
                                code="E701", hint="the artifact was edited or written by another tool; rebuild it")


def check_files(folder: Path, manifest: dict) -> None:
    """Every file present, unmodified, and nothing extra: before any native code is loaded."""
    folder = Path(folder)
    expected = manifest.get("files") or {}
    present = {p.name for p in folder.iterdir() if p.name != MANIFEST}
    problems = [f"missing file {name}" for name in sorted(set(expected) - present)]
    problems += [f"unexpected file {name}" for name in sorted(present - set(expected))]
    problems += [why for name in sorted(set(expected) & present) if (why := _mismatch(folder / name, expected[name]))]
    if problems:
        raise ArtifactError(f"artifact {folder} failed its integrity check: " + "; ".join(problems), code="E702",
                            hint="rebuild it or copy it again; never edit an artifact by hand")


def _mismatch(path: Path, digest: str) -> str | None:
    """Why `path` is not the file the manifest hashed, or None."""
    if path.is_symlink() or not path.is_file():
        return f"{path.name} is not a regular file"
    try:
        actual = sha256_file(path)
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror or exc})"
    return None if actual == digest else f"{path.name} does not match its sha256 (modified or truncated)"


def update_manifest(folder: Path, **changes) -> dict:
    """Rewrite manifest fields (e.g. a later verification) without touching hashed files."""
    manifest = read_manifest(folder)
    check_files(folder, manifest)
    manifest.update(changes)
    tmp = Path(folder) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n", "utf-8")
    os.replace(tmp, Path(folder) / MANIFEST)
    return manifest
