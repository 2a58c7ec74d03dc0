"""On a GPU host (driven by gpu_check.sh): verify CUDA artifacts against the eager PyTorch model and
time them against PyTorch eager and torch.compile on the same GPU, printing one table.

The artifacts run with the smallest runtime gpu_check.sh packs (TVM without libtvm_compiler.so, so
TVM_USE_RUNTIME_LIB=1, plus apache-tvm-ffi for this Python); the references come from accelc's own
recipe and capture code, rebuilt from the recipe stored in each manifest. Times are end to end
from numpy input to numpy output for all three (host<->device copies included), p50 of many calls.

    python benchmarks/gpu_check.py --src SRC ARTIFACT...       (SRC: the packed repository copy)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def loaded_recipe(manifest: dict, src: Path):
    """The recipe stored in the manifest, resolved against the packed repository (its models)."""
    from accelc.config import recipe as recipe_mod
    from accelc.config import yamlio
    path = src / "recipes" / Path(manifest["recipe"]["path"]).name
    located = yamlio.load_text(manifest["recipe"]["text"], f"{path} (as stored in the manifest)")
    return recipe_mod.LoadedRecipe(recipe=recipe_mod.parse(located), path=path, root=src,
                                   text=manifest["recipe"]["text"], located=located)


def torch_runner(model, device: str, compiled: bool):
    """numpy in, numpy out, as the artifact is called; None when torch.compile cannot run here."""
    import torch
    model = model.to(device).eval()
    if compiled:
        try:
            model = torch.compile(model)
        except Exception as exc:  # no triton, unsupported GPU...: reported, not fatal
            print(f"  torch.compile unavailable: {exc}", file=sys.stderr)
            return None

    def run(*arrays):
        with torch.inference_mode():
            out = model(*[torch.from_numpy(a).to(device) for a in arrays])
            outs = out if isinstance(out, (tuple, list)) else [out]
            return [o.cpu().numpy() for o in outs]
    return run


def sample_sets_of(manifest: dict, loaded) -> list:
    """The samples the build verified on: the recipe's data.samples, or random inputs with each
    integer input drawn from the range the manifest records (declared, or the model's tables')."""
    from accelc.compile import sample_sets
    ranges = {spec["name"]: tuple(spec["range"]) for spec in manifest["inputs"] if spec.get("range") is not None}
    return sample_sets(loaded, ranges)


def check_artifact(folder: Path, src: Path, calls: int) -> list[list]:
    """Rows: one per built batch size, with verification and timings."""
    from accelc.artifact import store as artifact
    from accelc.capture import export as capture
    from accelc.runtime import predictor as runtime
    from accelc.verify import compare as verify
    from benchmarks.common import time_calls
    manifest = artifact.read_manifest(folder)
    loaded = loaded_recipe(manifest, src)
    model = capture.build_model(loaded)
    predictor = runtime.load(folder)  # hashes, host and GPU arch checks; ArtifactError if it cannot run
    names = [o["name"] for o in manifest["outputs"]]
    sets = sample_sets_of(manifest, loaded)
    reference = capture.eager_runner(model, loaded.recipe.model.inputs, loaded.recipe.model.batch)  # as the build
    report = verify.verify(lambda a: predictor.predict(*a), reference, sets, loaded.recipe.verify.tolerance.atol,
                           loaded.recipe.verify.tolerance.rtol, names)
    errors = {row["batch"]: row for row in report["rows"]}
    device = "cuda" if manifest["target"]["device"] == "cuda" else "cpu"  # a CPU artifact: a dry run
    eager, compiled = torch_runner(model, device, False), torch_runner(capture.build_model(loaded), device, True)
    rows = []
    for batch, samples, *_ in sets:
        if batch not in manifest["batch"]:
            continue  # the padded size is verified above, timed only where it was built
        arrays = samples[0]
        warm = max(10, calls // 10)
        ours = time_calls(lambda: predictor.predict(*arrays), calls, warm)["p50_us"]
        base = time_calls(lambda: eager(*arrays), calls, warm)["p50_us"]
        fast = time_calls(lambda: compiled(*arrays), calls, warm)["p50_us"] if compiled else float("nan")
        row = errors[batch]
        rows.append([manifest["name"], manifest["target"]["name"], batch,
                     f"{'ok' if row['passed'] else 'FAIL'} {row['max_abs']:.1e}", ours / 1e3, base / 1e3,
                     fast / 1e3, f"{base / ours:.2f}x", f"{fast / ours:.2f}x" if compiled else "n/a"])
    return rows


def environment() -> str:
    import numpy
    import torch
    import tvm
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible to torch"
    return (f"GPU: {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); TVM {tvm.__version__} "
            f"runtime-only={tvm.base._RUNTIME_ONLY}; numpy {numpy.__version__}; Python {sys.version.split()[0]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1],
                        help="repository copy holding accelc/, examples/ and recipes/")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per measurement")
    args = parser.parse_args(argv)
    import torch  # noqa: F401  first: a CUDA build of torch also loads libcudart for TVM's CUDA runtime
    from accelc.errors import AccelcError
    from benchmarks.common import print_table
    print(environment())
    rows, failed = [], False
    for folder in args.artifacts:
        try:
            rows += check_artifact(folder, args.src, args.calls)
        except AccelcError as exc:  # e.g. no GPU here, GPU too old, artifact tampered with
            print(f"{folder}: {exc.format()}", file=sys.stderr)
            failed = True
    header = ["artifact", "target", "batch", "verify (max abs)", "accelc ms", "eager ms", "compile ms",
              "vs eager", "vs compile"]
    if rows:
        print_table(header, rows)
    failed |= any(r[3].startswith("FAIL") for r in rows)
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
