"""Where each Relax binding comes from: the importer names every binding after the fx node whose
converter emitted it (`fx<index>_<node>`), and `Origins` keeps each node's module path and source
line under its index, for the manifest's `kernels` (backends/tvm/kernel_map.py).

TVM 0.27's importer keeps neither spans nor node names (its bindings are `lv`, `lv1`, ...), and
the spans of Relax calls do not survive legalization; binding names do (the builder may append
digits to keep them unique, hence the index in front).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

from accelc.capture.export import module_path

_NAME = re.compile(r"fx(\d+)_")
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_OURS = (f"{os.sep}torch{os.sep}", str(Path(__file__).resolve().parents[3]) + os.sep)  # torch's, accelc's


@dataclass
class Origins:
    """The fx nodes named in the Relax module, by index: [{node, op, module, source}]."""

    nodes: list[dict] = field(default_factory=list)

    def add(self, node: torch.fx.Node) -> str:
        """The binding name for `node`'s bindings; its description goes under a new index."""
        target = getattr(node.target, "__name__", str(node.target))
        self.nodes.append({"node": node.name, "op": target, "module": module_path(node), "source": source(node)})
        return f"fx{len(self.nodes) - 1}_{node.name}"

    def of(self, name: str) -> dict | None:
        """The node a binding named `name` comes from; None for a binding no node emitted."""
        match = _NAME.match(name)
        index = int(match.group(1)) if match else -1
        return self.nodes[index] if 0 <= index < len(self.nodes) else None


def source(node: torch.fx.Node) -> str:
    """'file.py:LINE' of the model's code that made `node`: the innermost frame of its stack trace
    neither in torch nor in accelc (whose Hugging Face wrapper calls the model); a package's file
    (a transformers model) by its path in the package."""
    frames = [(file, line) for file, line in _FRAME.findall(node.meta.get("stack_trace") or "")
              if not any(part in file for part in _OURS)]
    if not frames:
        return ""
    file, line = frames[-1]
    inside = file.split(f"site-packages{os.sep}", 1)
    return f"{inside[1] if len(inside) == 2 else Path(file).name}:{line}"


class _NamingBuilder(relax.BlockBuilder):
    """A BlockBuilder that names what it emits after the node being converted (`naming`)."""

    naming = ""

    def emit(self, expr, name_hint: str = ""):
        return super().emit(expr, self.naming or name_hint)

    def emit_output(self, output, name_hint: str = ""):
        # the function's output replaces the binding it returns: it keeps that binding's name
        if isinstance(output, relax.Var) and not name_hint:
            name_hint = output.name
        return super().emit_output(output, name_hint)


class _Importer(ExportedProgramImporter):
    """TVM's importer with the naming builder in place of the one it makes for the function."""

    @property
    def block_builder(self):
        return self._builder

    @block_builder.setter
    def block_builder(self, value) -> None:
        self._builder = _NamingBuilder() if type(value) is relax.BlockBuilder else value


def _named(convert, origins: Origins, importer: _Importer):
    """`convert` (a converter of the importer's table, or a custom one, which takes the importer
    too) emitting under the name of the node it converts."""
    def run(node, *rest):
        builder = importer.block_builder
        builder.naming = origins.add(node)
        try:
            return convert(node, *rest)
        finally:
            builder.naming = ""
    return run


def import_program(program: torch.export.ExportedProgram, custom_convert_map: dict,
                   origins: Origins) -> tvm.IRModule:
    """`from_exported_program(program, keep_params_as_input=True, run_ep_decomposition=False,
    unwrap_unit_return_tuple=True)` with every binding named after its node (in `origins`)."""
    importer = _Importer()
    importer.convert_map = {op: _named(fn, origins, importer) for op, fn in importer.convert_map.items()}
    custom = {op: _named(fn, origins, importer) for op, fn in custom_convert_map.items()}
    return importer.from_exported_program(program, True, True, False, custom)
