"""yamlio: YAML with positions, and every way a file can be unreadable as a coded RecipeError."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from accelc.config import yamlio
from accelc.errors import RecipeError


def error(text: str, file: str = "r.yaml") -> RecipeError:
    with pytest.raises(RecipeError) as info:
        yamlio.load_text(text, file)
    return info.value


def test_positions_of_keys_and_values():
    located = yamlio.load_text("a: 1\nb:\n  c: [x, {d: 2}]\n", "r.yaml")
    assert located.data == {"a": 1, "b": {"c": ["x", {"d": 2}]}}
    assert located.where(("b", "c", 1, "d")) == "r.yaml:3:14"
    assert located.where(("b", "c", 1, "d"), prefer_key=True) == "r.yaml:3:11"
    assert located.where(("b", "c", 0)) == "r.yaml:3:7"
    assert located.where(("b", "nothing", "deeper")) == "r.yaml:3:3"  # deepest known prefix
    assert located.where(("zzz",)) == "r.yaml:1:1"


def test_syntax_error_is_located():
    exc = error("a: 1\nb: [1, 2\nc: 3\n")
    assert exc.code == "E101"
    assert exc.problems[0].location == "r.yaml:3:2"
    assert "YAML syntax" in exc.problems[0].message


def test_tab_indentation_is_a_syntax_error():
    exc = error("a:\n\tb: 1\n")
    assert exc.code == "E101" and exc.problems[0].location.startswith("r.yaml:2:")


def test_duplicate_keys_are_reported_each_with_its_line():
    exc = error("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n")
    assert [(p.code, p.location, p.field) for p in exc.problems] == [
        ("E105", "r.yaml:4:3", "b.c"), ("E105", "r.yaml:5:1", "a")]


def test_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffa: 1\nb: two\n".encode("utf-8"))
    located = yamlio.load_file(path)
    assert located.data == {"a": 1, "b": "two"}
    assert located.where(("b",)) == f"{path}:2:4"


def test_alias_bomb_is_refused():
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    exc = error("\n".join(lines))  # 9**9 strings if expanded; refused after MAX_NODES
    assert exc.code == "E106" and "alias bomb" in exc.problems[0].message


def test_merge_key_bomb_is_refused():
    lines = ["a0: &a0 {k0: 1, k1: 2}"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} {{<<: [" + ", ".join([f"*a{i - 1}"] * 9) + "]}")
    assert error("\n".join(lines)).code == "E106"


def test_recursive_alias_is_refused():
    assert error("a: &x [1, *x]\n").code == "E106"


def test_merge_keys_follow_yaml_semantics():
    text = "base: &b {atol: 1.0e-4, rtol: 1.0e-3}\nother: &o {rtol: 5, extra: 1}\n" \
           "tol: {<<: [*b, *o], atol: 1.0e-5}\n"
    data = yamlio.load_text(text, "r.yaml").data
    # explicit keys win over merged ones; earlier merged mappings win over later ones
    assert data["tol"] == {"atol": 1.0e-5, "rtol": 1.0e-3, "extra": 1}


def test_merge_of_a_scalar_is_located():
    exc = error("a: 1\nb: {<<: 7}\n")
    assert exc.code == "E101" and exc.problems[0].location == "r.yaml:2:9"


@pytest.mark.parametrize("text, where", [
    ("a: !!timestamp not-a-date\n", "r.yaml:1:4"),
    ("a:\n  b: !!int abc\n", "r.yaml:2:6"),
    ("a: !!float abc\n", "r.yaml:1:4"),
    ("a: !!set {x, y}\n", "r.yaml:1:4"),
    ("a: !custom [1]\n", "r.yaml:1:4"),
    ("a: !!python/object:os.system x\n", "r.yaml:1:4"),
])
def test_bad_or_unsafe_tags_are_located_errors(text, where):
    exc = error(text)
    assert exc.code == "E101"
    assert exc.problems[0].location == where


def test_non_scalar_keys_are_refused():
    exc = error("? [a, b]\n: 1\nc: 2\n")
    assert exc.code == "E105" and exc.problems[0].location == "r.yaml:1:3"
    assert "scalar" in exc.problems[0].message


def test_deep_nesting_is_refused():
    assert error("a: " + "[" * 80 + "]" * 80).code == "E106"


def test_very_deep_nesting_does_not_crash():
    assert error("[" * 1500 + "]" * 1500).code in ("E101", "E106")  # past Python's recursion limit


def test_control_characters_are_refused():
    assert error("a: b\x00c\n").code == "E101"


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError) as info:
        yamlio.load_file(tmp_path / "nope.yaml")
    assert info.value.code == "E100" and "not found" in info.value.problems[0].message
    assert info.value.problems[0].location == str(tmp_path / "nope.yaml")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(RecipeError) as info:
        yamlio.load_file(tmp_path)
    assert info.value.code == "E100" and "cannot read" in info.value.problems[0].message


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(RecipeError) as info:
        yamlio.load_file(path)
    assert info.value.code == "E101" and "UTF-8" in info.value.problems[0].message
    assert "byte 9" in info.value.problems[0].message


def test_oversized_file(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * yamlio.MAX_BYTES + b"\n")
    with pytest.raises(RecipeError) as info:
        yamlio.load_file(path)
    assert info.value.code == "E106"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_endless_file_is_read_bounded():
    with pytest.raises(RecipeError) as info:
        yamlio.load_file(Path("/dev/zero"))
    assert info.value.code == "E106"


def test_empty_document_is_none():
    assert yamlio.load_text("", "r.yaml").data is None
    assert yamlio.load_text("# only a comment\n", "r.yaml").data is None


def test_dotted():
    assert yamlio.dotted(("model", "inputs", 0, "shape")) == "model.inputs.0.shape"
    assert yamlio.dotted(()) == "(root)"
