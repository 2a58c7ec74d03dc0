"""What every pass must satisfy (DESIGN.md "conformance"), shared by the pass tests:
captured like accelc captures, input never mutated, numerics equal eager PyTorch,
idempotent, and the rewritten graph still exports (the lowering step re-exports it)."""
from __future__ import annotations

import warnings
from collections import Counter

import torch

from accelc.capture.export import _drop_guards
from accelc.passes import PASS_CONFIGS, PassContext, run_passes


def export_graph(model: torch.nn.Module, *args: torch.Tensor) -> torch.fx.GraphModule:
    """The fx graph accelc's capture produces: torch.export, .module(), input guards dropped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = torch.export.export(model, args, strict=False).module()
    _drop_guards(gm)
    return gm


def apply(gm: torch.fx.GraphModule, kind: str) -> tuple[torch.fx.GraphModule, dict]:
    """Run one pass through run_passes (which copies the graph) and return its report."""
    graph, reports = run_passes(gm, [PASS_CONFIGS[kind](kind=kind)], PassContext())
    return graph, reports[0]


def ops(gm: torch.fx.GraphModule) -> Counter:
    """How many times each op is called, by its short name ('batch_norm', 'view', ...)."""
    return Counter(getattr(n.target, "_opname", str(n.target)) for n in gm.graph.nodes
                   if n.op == "call_function")


def snapshot(gm: torch.fx.GraphModule) -> tuple[str, dict]:
    return gm.code, {k: v.detach().clone() for k, v in gm.state_dict().items()}


def assert_same(gm: torch.fx.GraphModule, snap: tuple[str, dict]) -> None:
    code, state = snap
    assert gm.code == code
    assert gm.state_dict().keys() == state.keys()
    for key, value in gm.state_dict().items():
        assert torch.equal(value, state[key]), key


def fresh_like(args: tuple, seed: int) -> tuple:
    """New random inputs with the same shapes (export specialised them) for a second numeric check."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(a.shape, generator=gen, dtype=a.dtype) if a.is_floating_point() else a for a in args)


def check_pass(kind: str, model: torch.nn.Module, *args: torch.Tensor, atol: float = 1e-5,
               rtol: float = 1e-5) -> tuple[torch.fx.GraphModule, dict]:
    """The conformance checks; returns the rewritten graph and the pass report for specific asserts."""
    model.eval()
    gm = export_graph(model, *args)
    before = snapshot(gm)
    out, report = apply(gm, kind)
    assert_same(gm, before)  # the input graph is not mutated
    with torch.no_grad():
        for inputs in (args, fresh_like(args, seed=1), fresh_like(args, seed=2)):
            torch.testing.assert_close(out(*inputs), model(*inputs), atol=atol, rtol=rtol)
    again, second = apply(out, kind)
    assert not second["changed"], second  # idempotent: nothing left to do
    assert again.code == out.code
    export_graph(out, *args)  # what lowering does next must still work
    return out, report
