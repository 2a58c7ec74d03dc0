"""Pass interface: a rewrite of an fx.GraphModule configured by its pydantic config (registry.py
maps kinds to both) that returns PassResult(graph, changed, stats), and a runner that records
what each did."""
from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Any, ClassVar

from accelc import logs
from accelc.capture.export import node_location
from accelc.errors import AccelcError, PassError, Problem, did_you_mean
from accelc.passes import stats
from accelc.passes.configs.base import PassConfig
from accelc.passes.registry import implementation

if TYPE_CHECKING:
    from accelc.config.targets import Target


@dataclass
class PassResult:
    graph: Any  # torch.fx.GraphModule
    changed: bool
    stats: dict = field(default_factory=dict)


@dataclass
class PassContext:
    """What a pass may need beyond the graph: example inputs, the recipe, data sources, the target."""

    example_inputs: tuple = ()
    loaded: Any = None  # LoadedRecipe, for passes that read data (fine-tune, calibration)
    logger: logs.Logger | None = None  # the build's; None: each pass module's own logger
    target: Target | None = None  # the resolved target: its policies (int8) decide a pass's `auto` settings

    def logger_or(self, default: logging.Logger) -> logs.Logger:
        """Where a pass reports: the build's logger if it gave one, else the pass module's."""
        return self.logger or default


class Pass:
    Config: ClassVar[type[PassConfig]]

    def __init__(self, config: PassConfig):
        self.config = config

    def run(self, gm, ctx: PassContext) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError


def graph_stats(gm, example_inputs=()) -> dict:
    """Parameters read, MACs per sample (see stats.py) and op count of a graph, before/after each pass."""
    ops = sum(1 for n in gm.graph.nodes if n.op == "call_function")
    return {**stats.measure(gm, example_inputs), "ops": ops}


def run_passes(gm, configs: list, ctx: PassContext):
    """Apply passes in order to a copy of `gm`; returns (graph, per-pass reports).

    A user error inside a pass is re-raised with the names of the passes that ran before it;
    anything else propagates as a bug, also annotated with the history.
    """
    reports, history = [], []
    graph, after = gm, None
    for index, config in enumerate(configs):
        pass_ = implementation(config.kind)(config)
        before = after or graph_stats(graph, ctx.example_inputs)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation on deepcopy
                working = copy.deepcopy(graph)
            result = pass_.run(working, ctx)
        except AccelcError as exc:
            exc.problems.append(Problem(exc.code, f"raised by pass #{index} '{config.kind}'; "
                                        f"passes before it: {', '.join(history) or 'none'}"))
            raise
        except Exception as exc:
            exc.add_note(f"in pass #{index} '{config.kind}' after: {', '.join(history) or 'none'}")
            raise
        result.graph.graph.lint()
        after = graph_stats(result.graph, ctx.example_inputs)
        reports.append({"kind": config.kind, "changed": result.changed, "seconds": round(time.perf_counter() - start, 4),
                        "before": before, "after": after, **result.stats})
        history.append(config.kind)
        graph = result.graph
    return graph, reports


def fail(message: str, *, node=None, hint: str | None = None):
    """Raise a PassError naming the node and its source line."""
    raise PassError(message, location=node_location(node) if node is not None else None, hint=hint)


def glob_warnings(globs_by_field: dict[str, list[str]], names: list[str]) -> list[str]:
    """One line per glob (of each named config field) that matches no Linear/Conv layer in
    `names`, with a "did you mean" and the candidates: a typo must not silently do nothing."""
    lines, names = [], list(dict.fromkeys(names))
    shown = ", ".join(names[:12]) + (f" (+{len(names) - 12} more)" if len(names) > 12 else "")
    for where, globs in globs_by_field.items():
        for glob in globs:
            if not any(fnmatch(name, glob) for name in names):
                hint = did_you_mean(glob, names)
                lines.append(f"{where} glob '{glob}' matches no Linear/Conv layer"
                             f"{'; ' + hint if hint else ''}; layers: {shown or 'none'}")
    return lines
