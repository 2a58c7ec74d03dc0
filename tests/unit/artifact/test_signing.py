"""Tamper-proof artifacts: every tamper case of benchmarks/tamper.py is refused before native code
is loaded (unsigned: all but edits to the manifest alone; signed: all), and the optional HMAC
signature: `accelc build` signs with $ACCELC_SIGNING_KEY, loaders given a key refuse unsigned or
badly signed artifacts."""
from __future__ import annotations

import json

import numpy as np
import pytest

from accelc.artifact import store as artifact
from accelc.runtime import predictor as runtime
from accelc.artifact import signing
from accelc.errors import ArtifactError
from benchmarks.tamper import KEY, must_refuse, signed_copy, sweep
from tests.fixtures.helpers import TINY_RECIPE, cli, copy_artifact, make_repo, write_recipe

OTHER_KEY = "another-key-of-the-right-length-000"


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch):
    monkeypatch.delenv(signing.ENV, raising=False)


@pytest.fixture(scope="module")
def signed_build(tmp_path_factory):
    """`accelc build` of the tiny MLP with the signing key in the environment."""
    from accelc.compile import build
    repo = make_repo(tmp_path_factory.mktemp("signed"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(signing.ENV, KEY)
        result = build(write_recipe(repo, TINY_RECIPE), output=repo / "out")
    return result.output


@pytest.fixture
def unsigned(tmp_path):
    return copy_artifact(tmp_path / "unsigned")


def refusal(folder, **load) -> ArtifactError:
    with pytest.raises(ArtifactError) as info:
        runtime.load(folder, **load)
    return info.value


def test_build_signs_and_the_runtime_verifies(signed_build, monkeypatch):
    manifest = artifact.read_manifest(signed_build)
    assert manifest[signing.FIELD]["algorithm"] == "hmac-sha256" and len(manifest[signing.FIELD]["hmac"]) == 64
    x = np.ones((3, 4), np.float32)
    expected = runtime.load(signed_build)(x)  # no key: hashes only
    np.testing.assert_array_equal(runtime.load(signed_build, key=KEY)(x), expected)
    monkeypatch.setenv(signing.ENV, KEY)
    np.testing.assert_array_equal(runtime.load(signed_build)(x), expected)  # the key from the environment


def test_a_signed_artifact_under_another_key_is_refused(signed_build):
    exc = refusal(signed_build, key=OTHER_KEY)
    assert exc.code == "E712" and "signed with another key" in exc.problems[0].message


def test_an_unsigned_artifact_is_refused_when_a_key_is_set(unsigned, monkeypatch, capsys):
    assert refusal(unsigned, key=KEY).code == "E711"
    monkeypatch.setenv(signing.ENV, KEY)
    assert refusal(unsigned).code == "E711"
    code, _, err = cli(["serve", unsigned, "--port", "0"], capsys)  # the server refuses it before listening
    assert code == 2 and "error[E711]" in err and "Traceback" not in err


@pytest.mark.parametrize("key", ["short", b"", "x" * 15])
def test_a_weak_key_is_a_coded_error(unsigned, key):
    assert refusal(unsigned, key=key).code == "E710"


def test_build_with_a_weak_key_fails_before_any_work(tmp_path, monkeypatch, capsys):
    repo = make_repo(tmp_path)
    monkeypatch.setenv(signing.ENV, "too-short")
    code, out, err = cli(["build", write_recipe(repo, TINY_RECIPE), "--output", repo / "out"], capsys)
    assert code == 2 and "error[E710]" in err and "secrets.token_hex" in err and "[2/6]" not in err
    assert not (repo / "out").exists()


def test_a_library_swapped_with_its_hash_is_caught_only_by_the_signature(tmp_path):
    """The attacker who rewrites the manifest: hashes alone cannot tell, the signature can."""
    folder = copy_artifact(tmp_path / "a")
    signed = signed_copy(folder, tmp_path / "signed", KEY)
    for target in (folder, signed):
        lib = target / artifact.LIBRARY
        lib.write_bytes(lib.read_bytes() + b"\0")
        manifest = json.loads((target / artifact.MANIFEST).read_text())
        manifest["files"][artifact.LIBRARY] = artifact.sha256_file(lib)
        (target / artifact.MANIFEST).write_text(json.dumps(manifest))
    artifact.verified_manifest(folder)  # accepted without a key: the documented limit
    assert refusal(signed, key=KEY).code == "E712"


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_every_tamper_case_is_refused(unsigned, tmp_path, signed):
    source = signed_copy(unsigned, tmp_path / "signed", KEY) if signed else unsigned
    results = sweep(source, KEY if signed else None, offsets=16, stride=7)
    wrongly_accepted = [case.name for case, got in results if must_refuse(case, signed, got) and got == "accepted"]
    assert wrongly_accepted == [] and len(results) > 400
    if signed:
        assert {got for _, got in results} <= {"E700", "E701", "E702", "E711", "E712", "unchanged"}


def test_update_manifest_re_signs_and_needs_the_key(signed_build, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in signed_build.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ArtifactError) as info:
        artifact.update_manifest(folder, verification={"status": "failed", "rows": []})
    assert info.value.code == "E710"
    checked = {"status": "passed", "rows": [], "reference": "checked on the server"}
    artifact.update_manifest(folder, key=KEY, verification=checked)
    assert artifact.load_manifest(folder, KEY).verification.reference == "checked on the server"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temp file left beside it
