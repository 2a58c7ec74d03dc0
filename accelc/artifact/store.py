"""Artifact directories: written atomically, every file hashed in manifest.json.

This module is the envelope (the format number, the files' hashes, the signature, atomic writes),
read and written as the JSON it is; what the manifest says is the typed Manifest (manifest.py),
which `load_manifest` gives readers once the envelope checks out.

Imports neither torch nor TVM: production servers read artifacts with this module.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from accelc.artifact import signing
from accelc.artifact.manifest import FORMAT, Manifest
from accelc.artifact.records import dump
from accelc.errors import ArtifactError

MANIFEST = "manifest.json"
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


def check_destination(dest: Path) -> None:
    """`dest` may be written only if it is absent, an empty directory or an accelc artifact: we
    never delete what someone else owns. Checked before a build starts and again, under the lock,
    just before the swap."""
    _check_parents(dest)
    if dest.exists() and not is_artifact(dest) and not _empty_dir(dest):
        raise ArtifactError(f"output {dest} exists and is not an accelc artifact; refusing to replace it",
                            code="E703", hint="choose another --output or remove it yourself")


def _check_parents(dest: Path) -> None:
    """The nearest existing parent of `dest` must be a directory we can write in: else the build
    would fail only when it writes the artifact, after all its work ("File exists")."""
    parent = next((p for p in dest.parents if os.path.lexists(p)), None)
    if parent is None:
        return
    if not parent.is_dir():
        raise ArtifactError(f"output {dest}: {parent} is not a directory", code="E703",
                            hint="choose another --output")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArtifactError(f"output {dest}: cannot create it in {parent}: permission denied", code="E703",
                            hint="choose another --output")


def preflight(dest: Path, key: str | bytes | None = None) -> None:
    """What a build checks before its long work: the output may be replaced, the signing key is usable."""
    check_destination(Path(dest).resolve())
    signing.key_from(key)


@contextmanager
def staging(dest: Path):
    """Yield a temp directory beside `dest`; on success it replaces `dest` in one atomic exchange.

    Crash safety: `dest` always holds the previous complete artifact, the new one, or (only where the
    file system cannot exchange directories, and only if killed between two renames) nothing.
    Leftover temp directories of killed builds are swept by the next build. Concurrent builds to the
    same `dest` each stage privately; the last to finish wins, whole. On failure `dest` is untouched.
    """
    dest = Path(dest).resolve()
    check_destination(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _locked(dest.parent):  # a sweeper never sees our temp dir before we hold its claim
            _sweep(dest)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_TMP}", dir=dest.parent))
            claim = _claim(tmp)
    except OSError as exc:
        raise ArtifactError(f"cannot create the output {dest}: {exc.strerror or exc}", code="E703") from None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an artifact is meant to be shared
        yield tmp
        _fsync_tree(tmp)  # the data is on disk before the name points at it
        with _locked(dest.parent):
            check_destination(dest)  # someone may have put something there while we built
            try:
                _swap(tmp, dest)
            except OSError as exc:
                raise ArtifactError(f"cannot move the artifact into {dest}: {exc.strerror or exc}",
                                    code="E703") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after an exchange, tmp holds the previous artifact
        os.close(claim)


_TMP = ".tmp-"  # ".NAME.tmp-XXXX": a build's private staging directory, beside the output
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _empty_dir(path: Path) -> bool:
    """An empty directory (say, made by `mkdir -p` in a CI script) holds nothing to lose."""
    return path.is_dir() and not path.is_symlink() and next(path.iterdir(), None) is None


@contextmanager
def _locked(folder: Path):
    """An exclusive flock on the output's parent directory: serialises sweeps and swaps (never a
    build's long work). The kernel drops it when the holder dies, so a killed build never wedges it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _claim(folder: Path) -> int:
    """Mark a staging directory as live: an exclusive flock held until the build ends (or dies)."""
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _sweep(dest: Path) -> None:
    """Remove staging directories of builds that died (nobody holds their claim). Caller holds the lock."""
    for stale in dest.parent.glob(f".{glob.escape(dest.name)}{_TMP}*"):
        try:
            fd = os.open(stale, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live build's
        finally:
            os.close(fd)  # (closing drops a claim we just took: we hold the parent lock meanwhile)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _swap(tmp: Path, dest: Path) -> None:
    """Put `tmp` at `dest`. An existing `dest` is exchanged with `tmp` in one step (Linux
    renameat2), so there is no moment without an artifact; elsewhere the old one is renamed away
    first. Caller holds the lock."""
    old = None
    if dest.exists() and not _exchange(tmp, dest):
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_TMP}old-", dir=dest.parent))
        os.rename(dest, old / "a")
    if old is not None or not dest.exists():
        os.rename(tmp, dest)
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories; False where the OS or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not glibc >= 2.28 (macOS, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, manifest: Manifest, key: str | bytes | None = None) -> Manifest:
    """Hash every file in `folder` into the manifest and write it; signed when a key is given or
    $ACCELC_SIGNING_KEY is set. Returns the manifest as written (read back through from_json, so
    that nothing is written that a reader would refuse)."""
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    data = _signed({**manifest.to_json(), "files": files}, signing.key_from(key))
    written = Manifest.from_json(data, str(folder / MANIFEST))
    _write_json(folder / MANIFEST, data)
    return written


def _signed(manifest: dict, key: bytes | None) -> dict:
    """The manifest as it will read back (JSON values only, any old signature dropped), signed when
    there is a key."""
    manifest = json.loads(json.dumps({k: v for k, v in manifest.items() if k != signing.FIELD}, default=str))
    return signing.sign(manifest, key) if key else manifest


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"no artifact at {folder}", code="E700")
    if (folder / MANIFEST).is_symlink():  # its content could change behind a signature check
        raise ArtifactError(f"{folder / MANIFEST} is a link, not a file", code="E701")
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


def verified_manifest(folder: Path, key: str | bytes | None = None) -> dict:
    """The manifest (as JSON) of an artifact whose signature (with a key) and files all check out."""
    manifest = read_manifest(folder)
    check_files(folder, manifest, key)
    return manifest


def load_manifest(folder: Path, key: str | bytes | None = None) -> Manifest:
    """The typed manifest of an artifact whose signature (with a key) and files all check out;
    E701 naming the field when the manifest does not fit the format."""
    return Manifest.from_json(verified_manifest(folder, key), str(Path(folder) / MANIFEST))


def check_files(folder: Path, manifest: dict, key: str | bytes | None = None) -> None:
    """The signature (when a key is given or $ACCELC_SIGNING_KEY is set), then every file present,
    unmodified, and nothing extra: before any native code is loaded."""
    folder = Path(folder)
    key = signing.key_from(key)
    if key is not None:
        signing.check(manifest, key, str(folder / MANIFEST))
    expected = manifest.get("files") or {}
    present = {p.name for p in folder.iterdir() if p.name != MANIFEST}
    problems = [f"missing file {name}" for name in sorted(set(expected) - present)]
    problems += [f"unexpected file {name}" for name in sorted(present - set(expected))]
    problems += [why for name in sorted(set(expected) & present) if (why := _mismatch(folder / name, expected[name]))]
    if problems:
        raise ArtifactError(f"artifact {folder} failed its integrity check: " + "; ".join(problems), code="E702",
                            hint="rebuild it or copy it again; never edit an artifact by hand")


def read_checked(folder: Path, manifest: Manifest, name: str) -> bytes:
    """A file's bytes, hashed as they are read: what a loader uses is what was checked, even if the
    file is replaced after `check_files` (a rebuild's swap, or someone racing the check)."""
    try:
        data = (Path(folder) / name).read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {Path(folder) / name}: {exc.strerror or exc}", code="E702") from None
    if hashlib.sha256(data).hexdigest() != manifest.files.get(name):
        raise ArtifactError(f"artifact {folder}: {name} changed after its integrity check", code="E702",
                            hint="it was replaced while loading (a rebuild?); load it again")
    return data


def _mismatch(path: Path, digest: str) -> str | None:
    """Why `path` is not the file the manifest hashed, or None."""
    if path.is_symlink() or not path.is_file():
        return f"{path.name} is not a regular file"
    try:
        actual = sha256_file(path)
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror or exc})"
    return None if actual == digest else f"{path.name} does not match its sha256 (modified or truncated)"


def update_manifest(folder: Path, key: str | bytes | None = None, **changes) -> Manifest:
    """Rewrite manifest fields (e.g. a later verification: a Verification or its JSON) without
    touching hashed files; a signed artifact is re-signed, which needs its key. Changes that would
    make the manifest unreadable (an unknown field, a wrong type) are refused (E701)."""
    folder, key = Path(folder).resolve(), signing.key_from(key)
    read_manifest(folder)  # E700 before locking the parent of something that is not there
    with _locked(folder.parent):  # not while a build swaps this directory
        manifest = verified_manifest(folder, key)
        if key is None and signing.FIELD in manifest:
            raise ArtifactError(f"{folder / MANIFEST} is signed; updating it needs the signing key", code="E710",
                                hint=f"set {signing.ENV}")
        data = _signed({**manifest, **{name: dump(value) for name, value in changes.items()}}, key)
        updated = Manifest.from_json(data, str(folder / MANIFEST))
        handle, tmp = tempfile.mkstemp(prefix=f".{folder.name}{_TMP}", dir=folder.parent)  # swept if we die
        os.close(handle)
        _write_json(Path(tmp), data)
        os.replace(tmp, folder / MANIFEST)
    return updated
