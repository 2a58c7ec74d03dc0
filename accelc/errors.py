"""Coded errors. User mistakes print one block without a traceback; anything else is a bug.

This module imports neither torch nor TVM: the runtime uses it in production servers.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

# Documented exit codes (README "Exit codes").
EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, with where it is."""

    code: str
    message: str
    location: str | None = None  # "recipes/x.yaml:3:5", "node linear_1 (model.py:12)", "column age, row 7"
    field: str | None = None  # dotted field path in the recipe
    hint: str | None = None

    def format(self) -> str:
        where = f"{self.location}: " if self.location else ""
        path = f"{self.field}: " if self.field else ""
        text = f"error[{self.code}] {where}{path}{self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class AccelcError(Exception):
    """Base of all user-facing errors; carries one or more problems."""

    exit_code = EXIT_USER_ERROR
    default_code = "E000"

    def __init__(self, message: str | None = None, *, code: str | None = None,
                 location: str | None = None, field: str | None = None,
                 hint: str | None = None, problems: list[Problem] | None = None):
        self.problems: list[Problem] = list(problems or [])
        if message is not None:
            self.problems.insert(0, Problem(code or self.default_code, message, location, field, hint))
        super().__init__(self.format())

    @property
    def code(self) -> str:
        return self.problems[0].code if self.problems else self.default_code

    def format(self) -> str:
        return "\n".join(p.format() for p in self.problems)


class RecipeError(AccelcError):
    """The recipe file is missing, malformed or does not fit the schema."""
    default_code = "E100"


class TargetError(AccelcError):
    """Unknown target, malformed target file, or a target the recipe cannot use."""
    default_code = "E200"


class ModelError(AccelcError):
    """The model entrypoint, its weights or its inputs are wrong."""
    default_code = "E300"


class DataError(AccelcError):
    """A data source (CSV, sample function) does not fit the recipe."""
    default_code = "E350"


class UnsupportedOpError(AccelcError):
    """The graph holds ops the backend cannot import or compile."""
    default_code = "E400"


class PassError(AccelcError):
    """A pass cannot do what its configuration asks."""
    default_code = "E450"


class ToolchainError(AccelcError):
    """A compiler, cross compiler or emulator needed for the target is missing."""
    default_code = "E500"


class TuningError(AccelcError):
    """Tuning cannot run: no device to measure on, an unreachable RPC tracker, a foreign database."""
    default_code = "E610"


class VerificationError(AccelcError):
    """The compiled module does not match the original model within budget."""
    default_code = "E600"
    exit_code = EXIT_VERIFY_FAILED


class ArtifactError(AccelcError):
    """An artifact is missing, tampered with, or built for another target."""
    default_code = "E700"


class InputError(AccelcError):
    """Arrays passed to a predictor do not match the artifact's signature."""
    default_code = "E800"


def did_you_mean(name: str, candidates, n: int = 1) -> str | None:
    """A 'did you mean' hint when a close candidate exists."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
