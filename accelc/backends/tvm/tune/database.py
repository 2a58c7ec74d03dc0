"""The tuning database: one JSON database per (full target, TVM version, default schedules) under a
shared root.

Records live under ROOT/<key>/ where key hashes the exported target and the TVM version, so
records tuned for one target are never applied to another (TVM issue #15549: the JSON database
itself ignores the target when it is queried). The key also hashes accelc's default schedule rules:
a search keeps a record only if it beat the default of its day, and a better default makes old
records slower than the untuned build (seen after the register-tile change: tuned 1975 us vs
untuned 1547 us on the MLP at batch 4096), so new defaults start a new database. A corrupt or
foreign folder is refused, never rewritten: it may hold hours of measurements. The one exception
is a torn last line: TVM appends each record with buffered writes, so a tuner killed mid-append
leaves a line without its newline. That fragment is moved to a side file and the complete records
before it are kept.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import tvm

from accelc import logs
from accelc.errors import TuningError

FILES = ("workloads.json", "records.json")
TARGET_FILE = "target.json"
_LOG = logging.getLogger(__name__)


DEFAULTS = ("schedules", "kernels", "intrin")  # backends/tvm folders: what schedules a kernel without records


@functools.cache
def defaults_digest() -> str:
    return digest_of(Path(__file__).resolve().parents[1])


def digest_of(root: Path) -> str:
    """A hash of every source file under DEFAULTS in `root` (backends/tvm), path and contents: a new
    rule, table row or intrinsic, or a change to one, starts a new database."""
    digest = hashlib.sha256()
    for folder in DEFAULTS:
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def database_key(target) -> str:
    spec = json.dumps(tvm.target.Target(target).export(), sort_keys=True, default=str)
    return hashlib.sha256(f"{spec}|tvm-{tvm.__version__}|defaults-{defaults_digest()}".encode()).hexdigest()[:16]


def folder_for(root: Path, target) -> Path:
    return Path(root) / database_key(target)


def check_root(root: Path, where: str | None = None) -> None:
    """Before any work: the database directory can be created and written."""
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):
            raise PermissionError(13, "permission denied", str(root))
    except OSError as exc:
        raise TuningError(f"tuning database {root} is not writable: {exc.strerror or exc}", code="E618",
                          location=where, field="tuning.database") from None


def open_database(root: Path, target, where: str | None = None, logger: logs.Logger | None = None):
    """The JSON database for this target, created if absent; unwritable, corrupt or foreign
    folders are refused with a coded error and left as they are."""
    folder = folder_for(root, target)
    _check_target_file(folder, target, where)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / TARGET_FILE).exists():
            _write_atomically(folder / TARGET_FILE,
                              json.dumps({"target": str(target), "tvm": tvm.__version__,
                                          "default_schedules": defaults_digest()}) + "\n")
        if _set_aside_torn_line(folder / FILES[0], logger or _LOG):
            _set_aside_orphans(folder, logger or _LOG)
        _set_aside_torn_line(folder / FILES[1], logger or _LOG)
        for name in FILES:  # records are appended during tuning: find out now, not after an hour
            path = folder / name
            if path.exists() and not os.access(path, os.W_OK) or not os.access(folder, os.W_OK):
                raise PermissionError(13, "permission denied", str(path))
    except OSError as exc:
        raise TuningError(f"tuning database {folder} is not writable: {exc.strerror or exc}", code="E618",
                          location=where, field="tuning.database") from None
    return _load(folder, where)


def _write_atomically(path: Path, text: str) -> None:
    """A killed writer leaves the old file or none, never an empty target.json (E619 next time)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _set_aside_torn_line(path: Path, log: logs.Logger) -> bool:
    """Cut an unterminated last line (a tuner killed mid-append) off `path` into `path.torn-<ns>`;
    True when there was one."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return False
        handle.seek(0)
        data = handle.read()
        keep = data.rfind(b"\n") + 1
        side = path.with_name(f"{path.name}.torn-{time.time_ns()}")
        side.write_bytes(data[keep:])  # first: a kill between the two steps loses nothing
        handle.truncate(keep)
    lines = data.count(b"\n")
    log.warning(f"  tuning database: {path.name} ended in a torn line (a tuner killed mid-write); kept its "
                f"{lines} complete line(s) and moved the {len(data) - keep}-byte fragment to {side.name}")
    return True


def _set_aside_orphans(folder: Path, log: logs.Logger) -> None:
    """Records of a workload whose line was torn off cannot load (TVM refuses the whole database):
    move them to `records.json.orphaned-<ns>` and keep every other record."""
    records = folder / FILES[1]
    if not records.is_file():
        return
    workloads = (folder / FILES[0]).read_bytes().count(b"\n")
    lines = records.read_bytes().splitlines(keepends=True)
    kept = [line for line in lines if _workload_index(line) < workloads]
    orphaned = [line for line in lines if _workload_index(line) >= workloads]
    if not orphaned:
        return
    side = records.with_name(f"{records.name}.orphaned-{time.time_ns()}")
    side.write_bytes(b"".join(orphaned))  # first: a kill between the two steps loses nothing
    _write_atomically(records, b"".join(kept).decode())
    log.warning(f"  tuning database: moved {len(orphaned)} record(s) of the torn workload to {side.name}")


def _workload_index(line: bytes) -> int:
    """The workload a record line belongs to ([index, ...]); -1 for a line that is no record."""
    try:
        return int(json.loads(line)[0])
    except (ValueError, TypeError, IndexError, KeyError):
        return -1


def _load(folder: Path, where: str | None):
    from tvm.s_tir import meta_schedule as ms
    try:
        return ms.database.JSONDatabase(str(folder / FILES[0]), str(folder / FILES[1]), allow_missing=True)
    except (RuntimeError, ValueError) as exc:  # the JSON reader raises plain RuntimeError
        raise TuningError(f"tuning database {folder} is corrupt ({str(exc).splitlines()[-1][:200]}); "
                          "it was left untouched", code="E619", location=where, field="tuning.database",
                          hint="move it aside (or fix the named line) and tune again") from None


def _check_target_file(folder: Path, target, where: str | None) -> None:
    """A folder whose target.json names another target was copied or renamed by hand."""
    path = folder / TARGET_FILE
    if not path.exists():
        return
    try:
        recorded = tvm.target.Target(json.loads(path.read_text())["target"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise TuningError(f"tuning database {folder} has an unreadable {TARGET_FILE} ({exc}); it was left "
                          "untouched", code="E619", location=where, field="tuning.database") from None
    if database_key(recorded) != database_key(target):
        raise TuningError(f"tuning database folder {folder} holds records for another target ({recorded}); "
                          "refusing to mix them", code="E620", location=where, field="tuning.database",
                          hint="folders are named by target; do not rename or copy them by hand")


def task_records(database, mod) -> list:
    """Valid records of one task's workload, best first (without adding the workload)."""
    if not database.has_workload(mod):
        return []
    return list(database.get_top_k(database.commit_workload(mod), 1 << 30))


def schedules(records) -> int:
    """How many distinct schedules the records measured (confirmation measures some twice)."""
    return len({str(record.trace.as_json(remove_postproc=True)) for record in records})


def best_seconds(record) -> float:
    secs = [float(s) for s in record.run_secs]
    return sum(secs) / len(secs)


def merge(sources: list[Path], dest: Path, logger: logs.Logger | None = None) -> dict:
    """Add every record of `sources` to `dest`, per target folder, without duplicates. All inputs
    are read and checked before anything is written."""
    from tvm.s_tir import meta_schedule as ms
    groups: dict[str, list] = {}
    for root in map(Path, sources):
        folders = [f for f in sorted(root.iterdir()) if (f / TARGET_FILE).is_file()] if root.is_dir() else []
        if not folders:
            raise TuningError(f"{root} is not a tuning database (no <target>/{TARGET_FILE} folders in it)",
                              code="E615")
        for folder in folders:
            target = _folder_target(folder)
            groups.setdefault(folder.name, []).append((target, _load(folder, None)))
    added = {}
    for key, databases in groups.items():
        out = open_database(dest, databases[0][0], logger=logger)
        seen = {_identity(r) for r in out.get_all_tuning_records()}
        count = 0
        for _, database in databases:
            for record in database.get_all_tuning_records():
                if _identity(record) in seen:
                    continue
                seen.add(_identity(record))
                out.commit_tuning_record(ms.database.TuningRecord(
                    record.trace, out.commit_workload(record.workload.mod), record.run_secs, record.target,
                    record.args_info))
                count += 1
        added[key] = count
        (logger or _LOG).info(f"  {key} ({databases[0][0].attrs.get('mcpu', databases[0][0].kind.name)}): "
                              f"{count} new record(s) from {len(databases)} database(s), {len(out)} in all")
    return {"destination": str(dest), "added": added}


def _folder_target(folder: Path):
    """The target of a folder, checked against its name (a renamed folder would apply records to the
    wrong target)."""
    try:
        target = tvm.target.Target(json.loads((folder / TARGET_FILE).read_text())["target"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise TuningError(f"{folder / TARGET_FILE} is unreadable: {exc}", code="E615") from None
    if database_key(target) != folder.name:
        raise TuningError(f"{folder} is named for another target, TVM version or set of default schedules "
                          f"than its {TARGET_FILE} and this accelc say ({target}, this TVM {tvm.__version__})",
                          code="E620", hint="merge only databases written by this accelc and TVM version; "
                                            "never rename their folders")
    return target


def _identity(record) -> tuple[str, str]:
    return str(record.workload.as_json()[0]), str(record.as_json())
