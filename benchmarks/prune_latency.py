"""Does structured pruning buy compiled speed in proportion to the MACs it removes?

    python benchmarks/prune_latency.py [--amount 0.5] [--round-to 8] [--threads 1]

For a ResNet-style CNN (BatchNorm folded first) and an MLP: compile the graph before and after
`prune l1_structured` with TVM for this x86 host (untuned: default schedules, no MetaSchedule),
time the compiled call at each batch size, and print the latency speedup next to the MAC
reduction and their ratio (target: speedup >= 0.65 x MAC reduction). Weights are random: this
measures speed, not accuracy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from torch import nn  # noqa: E402
from tvm import relax  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from common import print_table, time_calls  # noqa: E402

from accelc.config import targets  # noqa: E402
from accelc.backends.tvm.lower import relax as lower  # noqa: E402
from accelc.capture.export import drop_guards  # noqa: E402
from accelc.passes import PASSES, PassContext, run_passes  # noqa: E402


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class ResNet(nn.Module):
    """32x32 images, widths 32/64/128, one block per stage: a small ResNet-18-like body."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = Block(width, width)
        self.layer2 = Block(width, 2 * width, 2)
        self.layer3 = Block(2 * width, 4 * width, 2)
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10))


CASES = {"resnet_cnn": (ResNet, (3, 32, 32), [1, 16]), "mlp": (mlp, (256,), [1, 256])}


def capture(model: nn.Module, shape: tuple) -> tuple:
    example = (torch.randn(2, *shape),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1024)},)
    gm = torch.export.export(model.eval(), example, dynamic_shapes=dynamic, strict=False).module()
    drop_guards(gm)
    return gm, example


def compile_graph(graph, shape: tuple, batches: list[int], target) -> dict:
    """{batch: (function, params, input)} of one compiled module with a static function per batch."""
    inputs = {b: (torch.randn(b, *shape),) for b in batches}
    programs = {b: lower.export_program(graph, inputs[b], None) for b in batches}
    lowered = lower.to_relax(programs, target)
    vm = relax.VirtualMachine(lower.compile_module(lowered, target), tvm.cpu())
    params = list(vm["transform_params"]([tvm.runtime.tensor(p) for p in lowered.params.values()]))
    out = {}
    for b in batches:
        fn = vm[lower.function_name(b)]
        arg = tvm.runtime.tensor(inputs[b][0].numpy())
        got = fn(arg, *params)
        got = (got if hasattr(got, "numpy") else got[0]).numpy()  # one output may come unwrapped
        np.testing.assert_allclose(got, graph(*inputs[b]).detach().numpy(), rtol=1e-3, atol=1e-4)
        out[b] = (fn, params, arg)
    return out


def measure(case: str, amount: float, round_to: int, target) -> list[list]:
    factory, shape, batches = CASES[case]
    torch.manual_seed(0)
    gm, example = capture(factory(), shape)
    ctx = PassContext(example, None)
    config = PASSES["prune"].Config(kind="prune", method="l1_structured", amount=amount, round_to=round_to)
    fold = PASSES["fold_batchnorm"].Config(kind="fold_batchnorm")
    base, base_reports = run_passes(gm, [fold], ctx)
    pruned, reports = run_passes(gm, [fold, config], ctx)
    macs_before, macs_after = base_reports[-1]["after"]["macs"], reports[-1]["after"]["macs"]
    params_before, params_after = base_reports[-1]["after"]["params"], reports[-1]["after"]["params"]
    start = time.perf_counter()
    compiled = {"before": compile_graph(base, shape, batches, target),
                "after": compile_graph(pruned, shape, batches, target)}
    print(f"{case}: compiled both in {time.perf_counter() - start:.1f} s; params {params_before} -> {params_after}")
    rows = []
    for b in batches:
        t = {}
        for key, table in compiled.items():
            fn, params, arg = table[b]
            calls = max(20, min(2000, int(2e9 / max(macs_before * b, 1))))
            t[key] = time_calls(lambda: fn(arg, *params), calls=calls, warmup=max(5, calls // 20))["p50_us"]
        speedup, reduction = t["before"] / t["after"], macs_before / macs_after
        rows.append([case, b, f"{macs_before / 1e6:.2f}", f"{macs_after / 1e6:.2f}", f"{reduction:.2f}x",
                     t["before"], t["after"], f"{speedup:.2f}x", f"{speedup / reduction:.2f}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (TVM: set TVM_NUM_THREADS)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = targets.resolve("x86")
    target = spec.tvm_target()
    rows = [row for case in CASES for row in measure(case, args.amount, args.round_to, target)]
    print(f"\nprune l1_structured amount={args.amount} round_to={args.round_to}; target {spec.name} "
          f"({spec.tvm.get('mcpu')}), untuned default schedules, TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}")
    print_table(["model", "batch", "MMACs/sample before", "after", "MAC reduction", "p50 us before",
                 "p50 us after", "speedup", "speedup / MAC reduction"], rows)
    print("target: speedup / MAC reduction >= 0.65")


if __name__ == "__main__":
    main()
