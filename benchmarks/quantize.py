"""int8 vs float32, both compiled by accelc for this x86 host (AVX2, no VNNI), same run.

    python benchmarks/quantize.py [--reps 5] [--threads 1] [--models mlp,mlp_wide,cnn] [--batches 1,256]

For each model: the float graph (BatchNorm folded) and the same graph after
`quantize {mode: static}` (calibrated on random data: this measures speed, not accuracy) are
compiled with the untuned default schedules. Each repetition times every variant in turn
(interleaved, so that load from other processes hits all alike); the table prints the median
over repetitions of each variant's p50. Variants:

  fp32          accelc's float32 build as it is (convolutions lowered like the int8 ones: im2col +
                the register-tiled float GEMM, so that int8 vs fp32 isolates int8 from the lowering)
  fp32 TVM conv2d   control for the CNN: float32 convolutions as TVM's importer lowers them (direct
                conv2d, which TVM 0.27 has no default CPU schedule for): what accelc's lowering replaced
  int8          uint8 x int8 -> int32 kernels (AVX2 vpmaddubsw/vpmaddwd), requantize fused
  torch fp32    eager PyTorch (same thread count), a yardstick for the compiled float baseline
Target: int8 >= 1.3x fp32 at batch >= 256, and never slower.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from torch import nn  # noqa: E402
from tvm import relax  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import print_table  # noqa: E402

from accelc.config import targets  # noqa: E402
from accelc.backends.tvm.lower import relax as lower  # noqa: E402
from accelc.backends.tvm.lower import quant as quant_lower
from accelc.capture.export import drop_guards  # noqa: E402
from accelc.passes import PASSES, PassContext, run_passes  # noqa: E402

CALIBRATION: dict = {}


def calibration():
    """The calibration source the quantize pass imports (random rows, set per model)."""
    return CALIBRATION["rows"]


def models() -> dict:
    from examples.mlp.model import build_model as small_mlp
    from examples.resnet_small.model import build_model as resnet

    def wide_mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                             nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    return {"mlp": (small_mlp, (32,)), "mlp_wide": (wide_mlp, (256,)), "cnn": (resnet, (3, 32, 32))}


def capture(model: nn.Module, shape: tuple):
    example = (torch.randn(2, *shape),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                                 strict=False).module()
    drop_guards(gm)
    return gm, example


def tvm_direct_conv(node, importer):
    """Convolutions as TVM's importer lowers them (direct conv2d, no default CPU schedule): what
    accelc's im2col lowering (backends/tvm/conv_lower.py) replaced. Benchmark control only."""
    return importer._convolution(node)


def compile_graph(graph, shape, batches, target, convert=None) -> dict:
    """{batch: call()} of one compiled module with a static function per batch size."""
    inputs = {b: (torch.randn(b, *shape),) for b in batches}
    programs = {b: lower.export_program(graph, inputs[b], None) for b in batches}
    lowered = lower.to_relax(programs, target, custom_convert_map=convert)
    vm = relax.VirtualMachine(lower.compile_module(lowered, target), tvm.cpu())
    params = list(vm["transform_params"]([tvm.runtime.tensor(p) for p in lowered.params.values()]))
    calls = {}
    for b in batches:
        fn, arg = vm[lower.function_name(b)], tvm.runtime.tensor(inputs[b][0].numpy())
        got = fn(arg, *params)
        got = (got if hasattr(got, "numpy") else got[0]).numpy()
        want = graph(*inputs[b]).detach().numpy()  # the compiled module computes its graph, int8 or not
        # (a float reduction before a quantize, here the average pool, may round an activation one
        # quantum apart: the int8 variant is held to 1% of the output range, the float ones to 1e-3)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-2 * max(1.0, float(np.abs(want).max())))
        calls[b] = (lambda fn=fn, arg=arg: fn(arg, *params))
    return calls


def p50(call, seconds: float) -> float:
    """Median microseconds of `call` over about `seconds` of calls (after one warm-up call)."""
    call()
    start, samples = time.perf_counter(), []
    while time.perf_counter() - start < seconds or len(samples) < 3:
        begin = time.perf_counter()
        call()
        samples.append(time.perf_counter() - begin)
    return float(np.median(samples) * 1e6)


def measure(name: str, batches: list[int], reps: int, target, seconds: float) -> list[list]:
    factory, shape = models()[name]
    gm, example = capture(factory(), shape)
    CALIBRATION["rows"] = torch.randn(256, *shape).numpy()
    ctx = PassContext(example, None)
    base = [PASSES["fold_batchnorm"].Config(kind="fold_batchnorm"), PASSES["simplify"].Config(kind="simplify")]
    quantize = PASSES["quantize"].Config(kind="quantize", mode="static", data="__main__:calibration")
    float_graph, _ = run_passes(gm, base, ctx)
    int8_graph, reports = run_passes(gm, base + [quantize], ctx)
    size = reports[-1]["size"]
    start = time.perf_counter()
    variants = {"fp32": compile_graph(float_graph, shape, batches, target),
                "int8": compile_graph(int8_graph, shape, batches, target)}
    if name == "cnn":
        variants["fp32_tvm_conv2d"] = compile_graph(float_graph, shape, batches, target,
                                                    {"convolution.default": tvm_direct_conv})
    print(f"{name}: compiled {len(variants)} variants in {time.perf_counter() - start:.0f} s; parameters "
          f"{size['float32_bytes']} -> {size['quantized_bytes']} bytes", flush=True)
    model = factory().eval()
    for b in batches:  # eager PyTorch float32 as a yardstick for the compiled float baseline
        x = torch.randn(b, *shape)
        variants.setdefault("torch", {})[b] = lambda model=model, x=x: model(x)
    rows = []
    for b in batches:
        times = {key: [] for key in variants}
        for _ in range(reps):  # interleaved: each repetition runs every variant once
            for key, table in variants.items():
                times[key].append(p50(table[b], seconds))
        t = {key: float(np.median(v)) for key, v in times.items()}
        rows.append([name, b, t["torch"], t.get("fp32_tvm_conv2d", "-"), t["fp32"], t["int8"],
                     f"{t['fp32'] / t['int8']:.2f}x"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per variant")
    parser.add_argument("--seconds", type=float, default=0.3, help="timing window per variant and repetition")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (TVM: set TVM_NUM_THREADS)")
    parser.add_argument("--models", default="mlp,mlp_wide,cnn")
    parser.add_argument("--batches", default="1,256")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    spec = targets.resolve("x86")
    target = spec.tvm_target()
    batches = [int(b) for b in args.batches.split(",")]
    rows = [row for name in args.models.split(",") for row in measure(name, batches, args.reps, target, args.seconds)]
    print(f"\nquantize static int8 vs float32; target {spec.name} ({spec.tvm.get('mcpu')}: AVX2, no VNNI), untuned "
          f"default schedules, TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}, median of {args.reps} interleaved "
          f"repetitions of p50")
    print_table(["model", "batch", "torch fp32 us", "fp32 TVM conv2d us", "fp32 us", "int8 us", "int8 vs fp32"], rows)
    print("target: int8 >= 1.3x fp32 at batch >= 256, never slower")


if __name__ == "__main__":
    main()
