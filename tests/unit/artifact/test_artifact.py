"""artifact: atomic writes that never clobber foreign directories, and integrity checks that
refuse any modified, missing or extra file before native code is loaded."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from accelc.artifact import store as artifact
from accelc.artifact.manifest import FORMAT, Verification
from accelc.runtime import predictor as runtime
from accelc.errors import ArtifactError
from tests.fixtures.helpers import copy_artifact, shared_artifact
from tests.fixtures.manifests import minimal


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def copy(tmp_path) -> Path:
    return copy_artifact(tmp_path / "artifact")


def load_error(folder: Path) -> ArtifactError:
    with pytest.raises(ArtifactError) as info:
        runtime.load(folder)
    return info.value


def test_manifest_hashes_every_file():
    folder = shared_artifact()
    manifest = artifact.load_manifest(folder)
    on_disk = digests(folder)
    del on_disk[artifact.MANIFEST]
    assert manifest.files == on_disk and set(on_disk) >= {artifact.LIBRARY, artifact.PARAMS}
    assert manifest.format == FORMAT and manifest.verified is True
    assert manifest.target.name == "x86"  # the recipe said x86_64: aliases resolve
    assert [i.name for i in manifest.inputs] == ["a", "b"]
    assert manifest.recipe.sha256 == hashlib.sha256(manifest.recipe.text.encode()).hexdigest()
    assert artifact.is_artifact(folder)


def test_the_written_json_is_what_the_manifest_says():
    """The store writes to_json() (plus the files' hashes) and reads back the same manifest."""
    folder = shared_artifact()
    raw, manifest = artifact.read_manifest(folder), artifact.load_manifest(folder)
    assert manifest.to_json() == raw and json.loads((folder / artifact.MANIFEST).read_text()) == raw


def test_staging_writes_atomically(tmp_path):
    dest = tmp_path / "out"
    with artifact.staging(dest) as tmp:
        (tmp / "data.bin").write_bytes(b"1234")
        assert not dest.exists()  # nothing visible until the block succeeds
        written = artifact.write_manifest(tmp, minimal("t"))
    assert sorted(p.name for p in dest.iterdir()) == ["data.bin", artifact.MANIFEST]
    assert written.files == {"data.bin": hashlib.sha256(b"1234").hexdigest()} and written.name == "t"
    assert artifact.read_manifest(dest)["files"] == {"data.bin": hashlib.sha256(b"1234").hexdigest()}
    assert leftovers(tmp_path) == []


def test_failure_inside_staging_leaves_nothing(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with artifact.staging(dest) as tmp:
            (tmp / "partial.bin").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not dest.exists() and leftovers(tmp_path) == []


def test_failure_inside_staging_keeps_the_previous_artifact(copy):
    before = digests(copy)
    with pytest.raises(RuntimeError):
        with artifact.staging(copy) as tmp:
            (tmp / artifact.LIBRARY).write_bytes(b"not a library")
            artifact.write_manifest(tmp, minimal("half-built"))
            raise RuntimeError("the build died here")
    assert digests(copy) == before and leftovers(copy.parent) == []
    runtime.load(copy)  # still loads and passes its integrity check


def test_success_replaces_the_previous_artifact(copy):
    with artifact.staging(copy) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
        artifact.write_manifest(tmp, minimal("replacement"))
    assert artifact.read_manifest(copy)["name"] == "replacement"
    assert sorted(p.name for p in copy.iterdir()) == [artifact.MANIFEST, "new.bin"]
    assert leftovers(copy.parent) == []


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    foreign = tmp_path / "src"
    foreign.mkdir()
    (foreign / "main.py").write_text("print('precious')\n")
    with pytest.raises(ArtifactError) as info:
        with artifact.staging(foreign):
            pytest.fail("must not get here")
    assert info.value.code == "E703"
    assert (foreign / "main.py").read_text() == "print('precious')\n" and leftovers(tmp_path) == []


def test_refuses_a_file_and_a_directory_with_a_bad_manifest(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / artifact.MANIFEST).write_text('{"format": 99}')
    for dest in (tmp_path / "file", tmp_path / "fake"):
        with pytest.raises(ArtifactError) as info:
            with artifact.staging(dest):
                pass
        assert info.value.code == "E703"
    assert (tmp_path / "file").read_text() == "x"


def test_output_below_a_file_is_a_coded_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError) as info:
        with artifact.staging(tmp_path / "file" / "out"):
            pass
    assert info.value.code == "E703"


def test_an_empty_directory_may_be_used(tmp_path):
    (tmp_path / "out").mkdir()
    with artifact.staging(tmp_path / "out") as tmp:
        artifact.write_manifest(tmp, minimal("t"))
    assert artifact.is_artifact(tmp_path / "out")


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [artifact.LIBRARY, artifact.PARAMS])
def test_flipped_byte_is_refused(copy, name):
    flip_byte(copy / name)
    exc = load_error(copy)
    assert exc.code == "E702" and f"{name} does not match its sha256" in exc.problems[0].message


def test_truncated_file_is_refused(copy):
    path = copy / artifact.PARAMS
    path.write_bytes(path.read_bytes()[:-1])
    assert load_error(copy).code == "E702"


def test_missing_file_is_refused(copy):
    (copy / artifact.PARAMS).unlink()
    exc = load_error(copy)
    assert exc.code == "E702" and f"missing file {artifact.PARAMS}" in exc.problems[0].message


def test_extra_file_is_refused(copy):
    (copy / "evil.so").write_bytes(b"\x7fELF")
    exc = load_error(copy)
    assert exc.code == "E702" and "unexpected file evil.so" in exc.problems[0].message


def test_file_replaced_by_a_directory_or_a_link_is_refused(copy, tmp_path):
    (copy / artifact.PARAMS).unlink()
    (copy / artifact.PARAMS).mkdir()
    assert "not a regular file" in load_error(copy).problems[0].message
    other = copy_artifact(tmp_path / "other")
    (other / artifact.LIBRARY).rename(tmp_path / "lib-elsewhere.so")
    (other / artifact.LIBRARY).symlink_to(tmp_path / "lib-elsewhere.so")
    assert "not a regular file" in load_error(other).problems[0].message


def edit_manifest(folder: Path, edit) -> None:
    path = folder / artifact.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_manifest_that_is_not_json(copy):
    (copy / artifact.MANIFEST).write_text("{ not json")
    exc = load_error(copy)
    assert exc.code == "E701" and "not valid JSON" in exc.problems[0].message
    assert not artifact.is_artifact(copy)


def test_manifest_missing(copy):
    (copy / artifact.MANIFEST).unlink()
    assert load_error(copy).code == "E700"


def test_not_a_directory(tmp_path):
    assert load_error(tmp_path / "nothing").code == "E700"


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(format=2), None),
    (lambda m: m.pop("inputs"), "inputs"),
    (lambda m: m.update(target="x86"), "target"),
    (lambda m: m.update(files=["lib.so"]), None),
    (lambda m: m["files"].pop(artifact.LIBRARY), None),
    (lambda m: m.update(inputs=[{"name": "a"}]), "inputs[0].shape"),
    (lambda m: m["inputs"][1].update(dtype="float"), "inputs[1].dtype"),
    (lambda m: m["target"].update(cpu_features="avx2"), "target.cpu_features"),
    (lambda m: m.update(functions={"1": 5}), "functions['1']"),
], ids=["format", "no-inputs", "target-string", "files-list", "library-unlisted", "input-without-shape",
        "unknown-dtype", "features-string", "function-number"])
def test_malformed_manifest_is_refused(copy, edit, field):
    """Before any native code: E701 naming the field (E702 when the files table no longer matches)."""
    edit_manifest(copy, edit)
    exc = load_error(copy)
    assert exc.code in ("E701", "E702")
    if field is not None:
        assert exc.code == "E701" and exc.problems[0].field == field
        assert exc.problems[0].location == str(copy / artifact.MANIFEST)


def test_manifest_that_is_a_directory(copy):
    (copy / artifact.MANIFEST).unlink()
    (copy / artifact.MANIFEST).mkdir()
    assert load_error(copy).code == "E700"


def test_update_manifest_keeps_hashes_valid(copy):
    updated = artifact.update_manifest(copy, verification=Verification("passed", runner="test"))
    manifest = artifact.load_manifest(copy)
    assert manifest == updated and manifest.verification.runner == "test"
    assert sorted(p.name for p in copy.iterdir()) == sorted([*manifest.files, artifact.MANIFEST])


def test_update_manifest_refuses_what_no_reader_could_load(copy):
    before = (copy / artifact.MANIFEST).read_bytes()
    with pytest.raises(ArtifactError) as info:
        artifact.update_manifest(copy, verification={"status": "passed", "rows": [], "by": "test"})
    assert info.value.code == "E701" and info.value.problems[0].field == "verification.by"
    assert (copy / artifact.MANIFEST).read_bytes() == before
