"""Build cache: the same inputs give the same artifact, so a build whose inputs were built before
copies that artifact instead of capturing, tuning and compiling again.

The key is a sha256 over everything a build reads: the recipe as validated (comments, layout and
`output` do not count), the source of every package a recipe entrypoint names, every file the
recipe names (weights, CSV), the target, accelc's own source, the torch/TVM/numpy versions, the
tuning database's records when tuning is on, and which signing key is in use. Entries live
in `.accelc/cache/<key>/` (or $ACCELC_CACHE_DIR) as complete artifacts; one whose files no longer
match their manifest is deleted and rebuilt, never loaded.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from accelc import __version__, logs
from accelc.artifact import store as artifact
from accelc.artifact import signing
from accelc.artifact.manifest import Manifest
from accelc.errors import ArtifactError

ENTRYPOINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
PACKAGES = ("torch", "apache-tvm", "apache-tvm-ffi", "numpy", "transformers")
ENV = "ACCELC_CACHE_DIR"
TMP = ".tmp-"
_LOG = logging.getLogger(__name__)


def folder(loaded) -> Path:
    return Path(os.environ.get(ENV) or loaded.root / ".accelc" / "cache")


def key(loaded, spec) -> str:
    """The cache key of building `loaded` for `spec` now."""
    recipe = loaded.recipe.model_dump(mode="json", exclude={"output"})
    strings = list(_strings(recipe))
    material = {
        "recipe": recipe,
        "target": spec.model_dump(mode="json"),
        "sources": {top: _package_digest(top, loaded.root) for top in
                    sorted({s.split(":")[0].split(".")[0] for s in strings if ENTRYPOINT.match(s)})},
        "files": {s: artifact.sha256_file(p) for s in sorted(set(strings)) if (p := _inside(loaded.root, s))},
        "huggingface": _huggingface_digest(loaded),
        "accelc": [__version__, _tree_digest(Path(__file__).resolve().parents[1])],
        "versions": {name: _version(name) for name in PACKAGES} | {"python": sys.version.split()[0]},
        "tuning": _tuning_records(loaded, spec),
        "signing": _signing_identity(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _inside(root: Path, text: str) -> Path | None:
    """A recipe string that names a regular file of the repository (weights, CSV, ...)."""
    if not text or "\n" in text or len(text) > 4096:
        return None
    try:
        path = (root / text).resolve()
        return path if path.is_file() else None
    except (OSError, ValueError):
        return None


def _package_digest(top: str, root: Path) -> str:
    """Entrypoints import relative to the repository: hash the whole top-level package there (a
    model module may import its siblings); an installed package counts by its version."""
    if (root / top).is_dir():
        return _tree_digest(root / top)
    if (root / f"{top}.py").is_file():
        return artifact.sha256_file(root / f"{top}.py")
    dists = metadata.packages_distributions().get(top, [])
    return ",".join(f"{d}=={_version(d)}" for d in dists) or "unknown"


def _huggingface_digest(loaded) -> str | None:
    """Every file of a model.huggingface directory (config, weights): a hub id in the cache counts by
    its name and the transformers version only."""
    source = loaded.recipe.model.huggingface
    folder = loaded.root / source.path if source is not None and source.path else None
    if folder is None or not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{artifact.sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" not in path.parts:
            digest.update(f"{path.relative_to(folder)}\0{artifact.sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _tuning_records(loaded, spec) -> str | None:
    """New records change what a tuned build applies. Every target's records count: finding this
    target's folder needs TVM, whose import would be most of a cache hit's time."""
    section = loaded.recipe.tuning
    if not section.enabled:
        return None
    root = loaded.resolve(section.database, "tuning", "database")
    digest = hashlib.sha256()
    for path in sorted(root.glob("*/*.json")) if root.is_dir() else []:
        if path.name in ("workloads.json", "records.json"):
            digest.update(f"{path.parent.name}/{path.name}\0{artifact.sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _signing_identity() -> str | None:
    """An artifact signed under one key does not verify under another; the key itself stays secret."""
    secret = signing.key_from()
    return hmac.new(secret, b"accelc build cache", hashlib.sha256).hexdigest() if secret else None


def fetch(keys: list[str], out: Path, loaded, logger: logs.Logger | None = None) -> Manifest | None:
    """The manifest of an artifact for `keys[0]` now at `out`, or None when the build must run.
    An output already built from the same inputs is kept as it is."""
    log = logger or _LOG
    if _matches(out, keys[0]):
        log.info(f"build cache: {out} is up to date (key {keys[0][:12]})")
        return artifact.load_manifest(out)
    entry = folder(loaded) / keys[0]
    if not entry.is_dir():
        return None
    try:
        manifest = _checked(entry)
    except ArtifactError as exc:
        log.warning(f"build cache: entry {keys[0][:12]} is corrupt ({exc.problems[0].message}); deleting it and "
                    "building")
        shutil.rmtree(entry, ignore_errors=True)
        return None
    with artifact.staging(out) as tmp:
        _copy_files(entry, tmp)
    log.info(f"build cache: reused {entry} (key {keys[0][:12]}); nothing was captured, tuned or compiled")
    return manifest


def _checked(folder: Path) -> Manifest:
    """The manifest of a complete, unmodified, verified artifact; ArtifactError otherwise."""
    manifest = artifact.load_manifest(folder)
    if not manifest.verified:
        raise ArtifactError("it is not a verified artifact", code="E701")
    return manifest


def _valid(folder: Path) -> bool:
    try:
        return folder.is_dir() and bool(_checked(folder))
    except ArtifactError:
        return False


def _matches(out: Path, wanted: str) -> bool:
    try:
        cache = _checked(out).cache
        return cache is not None and wanted in cache.keys
    except ArtifactError:
        return False


def store(keys: list[str], out: Path, loaded, logger: logs.Logger | None = None) -> None:
    """Keep a copy of the finished artifact under each key (before and after tuning added records).
    The cache is an optimisation: failing to write it never fails the build."""
    root = folder(loaded)
    for name in dict.fromkeys(keys):
        if _valid(root / name):  # the same inputs built by someone else meanwhile: keep theirs
            continue
        tmp = None
        try:
            root.mkdir(parents=True, exist_ok=True)
            _sweep(root)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name[:12]}{TMP}", dir=root))
            _copy_files(out, tmp)
            shutil.rmtree(root / name, ignore_errors=True)
            os.rename(tmp, root / name)  # whole entries only: a reader never sees half of one
        except OSError as exc:  # a concurrent store of the same key, a full disk, a read-only cache
            (logger or _LOG).warning(f"build cache: not stored ({exc.strerror or exc})")
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            return


def _sweep(root: Path) -> None:
    """Staging directories of stores that were killed (an hour old: no live store takes that long)."""
    for stale in root.glob(f".*{TMP}*"):
        try:
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            continue


def _copy_files(source: Path, dest: Path) -> None:
    for path in Path(source).iterdir():
        if path.is_file() and not path.is_symlink():
            shutil.copyfile(path, dest / path.name)
