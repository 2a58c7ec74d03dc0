"""Symbolic batch dimension (one module for every size) vs one static module per batch size.

    python benchmarks/batch_modes.py [recipe]

Compiles the recipe's model both ways (untuned, same pipeline) and times the compiled
call with TVM tensors at each batch size the recipe lists, one thread.
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from common import print_table, time_calls  # noqa: E402

from accelc.capture import export as capture  # noqa: E402
from accelc.config import recipe as recipe_mod
from accelc.config import targets
from accelc.backends.tvm.lower import relax as lower  # noqa: E402


def compiled_call(graph, example, dynamic, target):
    start = time.perf_counter()
    lowered = lower.to_relax(lower.export_program(graph, example, dynamic), target)
    vm = relax.VirtualMachine(lower.compile_module(lowered, target), tvm.cpu())
    seconds = time.perf_counter() - start
    params = vm["main_transform_params"]([tvm.runtime.tensor(p) for p in lowered.params.values()])
    return vm["main"], list(params), seconds


def main(path: str = "recipes/edu_churn.yaml") -> None:
    torch.set_num_threads(1)
    loaded = recipe_mod.load(path)
    spec = targets.resolve(loaded.recipe.target, loaded.root)
    target = spec.tvm_target()
    captured = capture.capture(loaded)
    symbolic, sym_params, sym_compile = compiled_call(captured.graph, captured.example_inputs,
                                                      captured.dynamic_shapes, target)
    rows = []
    for batch in loaded.recipe.model.batch:
        example = capture.to_torch(capture.random_inputs(loaded.recipe.model.inputs, batch, 0))
        static, st_params, st_compile = compiled_call(captured.graph, example, None, target)
        args = [tvm.runtime.tensor(t.numpy()) for t in example]
        want = capture.run_eager(captured.model, [t.numpy() for t in example])[0]
        for name, fn, params in (("symbolic", symbolic, sym_params), ("static", static, st_params)):
            got = fn(*args, *params)[0].numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        t_sym = time_calls(lambda: symbolic(*args, *sym_params), calls=500 if batch < 512 else 100)
        t_st = time_calls(lambda: static(*args, *st_params), calls=500 if batch < 512 else 100)
        rows.append([batch, t_sym["p50_us"], t_st["p50_us"], t_sym["p50_us"] / t_st["p50_us"], st_compile])
    print(f"recipe {path}, target {spec.name}, untuned, 1 thread; symbolic compile {sym_compile:.2f} s")
    print_table(["batch", "symbolic p50 us", "static p50 us", "symbolic/static", "static compile s"], rows)


if __name__ == "__main__":
    main(*sys.argv[1:])
