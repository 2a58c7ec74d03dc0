"""YAML with positions: data plus a map from field path to file:line:col.

We walk PyYAML's node tree ourselves instead of using its constructor so that
(1) every key and value keeps its mark, (2) duplicate keys are errors rather
than silently last-wins, and (3) alias expansion is counted, which refuses
"billion laughs" documents before they are materialised.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from accelc.errors import Problem, RecipeError

MAX_NODES = 100_000  # expanded nodes; a real recipe has a few hundred
MAX_BYTES = 1 << 20  # a recipe larger than 1 MiB is not a recipe
MAX_DEPTH = 64

Path_ = tuple  # field path: ("model", "inputs", 0, "shape")
MAP_TAG, SEQ_TAG = yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class Located:
    """Parsed YAML data with the position of every key and value."""

    data: Any
    file: str
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_, prefer_key: bool = False) -> str:
        """file:line:col of the deepest known prefix of `path`."""
        path = tuple(path)
        for cut in range(len(path), -1, -1):
            prefix = path[:cut]
            table = (self.keys, self.values) if prefer_key else (self.values, self.keys)
            for marks in table:
                if prefix in marks:
                    line, col = marks[prefix]
                    return f"{self.file}:{line}:{col}"
        return f"{self.file}:1:1"


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, out: Located):
        self.loader, self.out, self.count = loader, out, 0
        self.problems: list[Problem] = []

    def walk(self, node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise RecipeError(f"document expands to more than {MAX_NODES} nodes (alias bomb?)",
                              code="E106", location=self.out.where(path))
        if depth > MAX_DEPTH:
            raise RecipeError(f"nesting deeper than {MAX_DEPTH} levels", code="E106",
                              location=f"{self.out.file}:{_mark(node)[0]}:{_mark(node)[1]}")
        self.out.values.setdefault(path, _mark(node))
        if isinstance(node, yaml.MappingNode):
            self._check_tag(node, MAP_TAG)
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            self._check_tag(node, SEQ_TAG)
            return [self.walk(child, path + (i,), depth + 1) for i, child in enumerate(node.value)]
        return self._scalar(node)

    def _where(self, node: yaml.Node) -> str:
        line, col = _mark(node)
        return f"{self.out.file}:{line}:{col}"

    def _check_tag(self, node: yaml.Node, expected: str) -> None:
        """Collections keep their plain meaning: no !!set, !!omap or application tags."""
        if node.tag != expected:
            raise RecipeError(f"YAML tag '{node.tag}' is not supported in a recipe", code="E101",
                              location=self._where(node))

    def _scalar(self, node: yaml.Node) -> Any:
        """A scalar value; a bad explicit tag (`!!int abc`, `!!timestamp x`) is located, not a crash."""
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError:
            raise
        except Exception as exc:  # PyYAML raises ValueError, AttributeError, ... on malformed tagged scalars
            raise RecipeError(f"YAML value {node.value!r:.60} does not fit tag '{node.tag}': {exc}", code="E101",
                              location=self._where(node)) from None

    def _mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict:
        """Keys are scalars and unique; "<<" merges are expanded here so that alias counting covers them
        and explicit keys override merged ones (YAML merge semantics) instead of counting as duplicates."""
        result: dict = {}
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(Problem("E105", f"mapping key must be a scalar, got a {key_node.id}",
                                             self._where(key_node), _dotted(path)))
                continue
            key = self._scalar(key_node)
            if key is None or not isinstance(key, (str, int, float, bool)):
                self.problems.append(Problem("E105", f"mapping key must be a scalar, got {type(key).__name__}",
                                             self._where(key_node), _dotted(path)))
                continue
            if key in result:
                self.problems.append(Problem("E105", f"duplicate key '{key}'", self._where(key_node),
                                             _dotted(path + (key,)), "each key may appear once"))
                continue
            self.out.keys.setdefault(path + (key,), _mark(key_node))
            result[key] = self.walk(value_node, path + (key,), depth + 1)
        merged: dict = {}
        for value_node in merges:
            merged.update(self._merged(value_node, path, depth))
        return {**merged, **result}

    def _merged(self, node: yaml.Node, path: Path_, depth: int) -> dict:
        """The mapping(s) a "<<" key brings in; earlier mappings in a list win."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict = {}
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode):
                raise RecipeError("'<<' (merge) needs a mapping or a list of mappings", code="E101",
                                  location=self._where(source))
            merged.update(self.walk(source, path, depth + 1))
        return merged


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path) or "(root)"


dotted = _dotted


def load_text(text: str, file: str) -> Located:
    """Parse one YAML document; every failure is a RecipeError with a position."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise RecipeError(f"file is larger than {MAX_BYTES} bytes", code="E106", location=file)
    text = text.lstrip("\ufeff")
    out = Located(data=None, file=file)
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            walker = _Walker(loader, out)
            out.data = walker.walk(node, ()) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise RecipeError(f"YAML syntax: {exc.problem or exc.context}", code="E101", location=where) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"YAML: {exc}", code="E101", location=file) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. timestamps out of range
        raise RecipeError(f"YAML value: {exc}", code="E101", location=file) from None
    if walker.problems:
        raise RecipeError(problems=list(dict.fromkeys(walker.problems)))  # an anchored node may be walked twice
    return out


def load_file(path: str | Path, display: str | None = None) -> Located:
    """Read and parse a YAML file; missing or unreadable files are coded errors."""
    path = Path(path)
    display = display or str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)  # bounded: `accelc validate /dev/zero` must not eat memory
    except FileNotFoundError:
        raise RecipeError("file not found", code="E100", location=display) from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise RecipeError(f"cannot read file: {exc.strerror or exc}", code="E100", location=display) from None
    if len(raw) > MAX_BYTES:
        raise RecipeError(f"file is larger than {MAX_BYTES} bytes", code="E106", location=display)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"file is not UTF-8 text (byte {exc.start})", code="E101", location=display) from None
    return load_text(text, display)
