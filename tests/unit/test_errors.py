"""The error-code registry: every code accelc raises is registered once, in its class's band, with a
summary, a remedy and a docs anchor; the bands do not overlap; an error with an unregistered or
foreign code is refused where it is raised."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

import accelc.errors as errors
from accelc.errors import CODES, AccelcError, Code, InputError, Problem, RecipeError, TuningError

PACKAGE = Path(errors.__file__).resolve().parent
CODE = re.compile(r"E\d{3}")
CLASSES = {cls.__name__: cls for cls in (AccelcError, *AccelcError.__subclasses__())}


def literals() -> dict[str, list[str]]:
    """Every string in accelc/ that is an error code (code="E401", Problem("E401", ...), a helper's
    argument, a status table's key) -> where, outside the registry itself."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(errors.__file__).resolve():
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE.fullmatch(node.value):
                found.setdefault(node.value, []).append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


def raise_sites() -> list[tuple[str, str, str]]:
    """(class name, code, where) for each `SomeError(..., code="E...")` in accelc/."""
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = isinstance(node, ast.Call) and (getattr(node.func, "id", None) or getattr(node.func, "attr", None))
            if name in CLASSES:
                for keyword in node.keywords:
                    if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                        sites.append((name, keyword.value.value, f"{path.name}:{node.lineno}"))
    return sites


def in_band(cls: type[AccelcError], code: str) -> bool:
    low, high = cls.band
    return low <= int(code[1:]) <= high


def test_the_scan_sees_the_raise_sites():
    """Control: the scan finds codes raised by keyword, through Problem and through a helper."""
    found = literals()
    assert "accelc/config/recipe.py" in " ".join(found["E103"])  # Problem("E103", ...)
    assert "accelc/runtime/kserve_v2.py" in " ".join(found["E813"])  # _bad(message, "E813")
    assert ("VerificationError", "E600") in {(c, code) for c, code, _ in raise_sites()}


def test_every_code_in_the_source_is_registered():
    unregistered = {code: where for code, where in literals().items() if code not in CODES}
    assert unregistered == {}


def test_every_raise_site_uses_a_code_of_its_own_class():
    wrong = [(cls, code, where) for cls, code, where in raise_sites()
             if code not in CODES or CODES[code].error != cls or not in_band(CLASSES[cls], code)]
    assert wrong == []


def test_the_registry_holds_exactly_the_codes_raised():
    """No dead entries: each registered code is in the source, or a class's default code."""
    used = set(literals()) | {cls.default_code for cls in CLASSES.values()}
    assert sorted(set(CODES) - used) == [] and sorted(used - set(CODES)) == []


def test_each_entry_is_complete_and_in_its_class_band():
    assert [f.name for f in dataclasses.fields(Code)] == ["code", "error", "summary", "remedy", "anchor"]
    for code, entry in CODES.items():
        assert entry.code == code and CODE.fullmatch(code) and entry.anchor == code.lower()
        assert entry.error in CLASSES and in_band(CLASSES[entry.error], code), entry
        for text in (entry.summary, entry.remedy):
            assert text and "\n" not in text and len(text) <= 110 and text == text.strip(), entry
    with pytest.raises(dataclasses.FrozenInstanceError):
        CODES["E100"].summary = "x"


def test_bands_do_not_overlap_and_hold_their_default():
    bands = sorted((cls.band, name) for name, cls in CLASSES.items())
    for (first, a), (second, b) in zip(bands, bands[1:]):
        assert first[1] < second[0], (a, first, b, second)
    for cls in CLASSES.values():
        assert in_band(cls, cls.default_code) and CODES[cls.default_code].error == cls.__name__


def test_tuning_and_verification_have_their_own_bands():
    """E60x is verification's; tuning (its database included) is E61x-E62x; recipes are E1xx."""
    assert {c.error for c in CODES.values() if 600 <= int(c.code[1:]) <= 609} == {"VerificationError"}
    assert {c.error for c in CODES.values() if 610 <= int(c.code[1:]) <= 629} == {"TuningError"}
    assert TuningError("x", code="E618").code == "E618"


@pytest.mark.parametrize("make, why", [
    (lambda: RecipeError("x", code="E999"), "not registered"),
    (lambda: RecipeError("x", code="E601"), "not registered"),
    (lambda: RecipeError("x", code="E200"), "outside its band E100-E199"),
    (lambda: InputError("x", code="E600"), "outside its band E800-E899"),
    (lambda: RecipeError(problems=[Problem("E102", "ok"), Problem("E401", "foreign")]), "E401 is outside"),
])
def test_an_unregistered_or_foreign_code_is_a_programming_error(make, why):
    with pytest.raises(ValueError, match=why):
        make()


def test_registered_codes_in_band_still_raise_normally():
    exc = RecipeError(problems=[Problem("E103", "unknown key 'x'", "r.yaml:1:1", "x")])
    assert exc.code == "E103" and "error[E103] r.yaml:1:1: x: unknown key 'x'" in exc.format()
    assert AccelcError("plain").code == "E000" and InputError("bad").code == "E800"


def test_errors_import_nothing_of_ours():
    tree = ast.parse(Path(errors.__file__).read_text())
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m and m.split(".")[0] == "accelc"]
