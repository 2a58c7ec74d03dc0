"""int8 accuracy on TRAINED weights: held-out task metric of eager float32, accelc float32 and
accelc int8, the drop, SQNR of the int8 logits vs float32, which layers stayed float32 and why,
and int8 / fp32 latency (interleaved rounds, median).

    python benchmarks/int8_trained.py [--models digits_cnn,digits_encoder,edu_churn] [--reuse]
                                      [--rounds 7] [--calls 200] [--threads 1] [--layers]

Models and their recipe pairs (float32, int8):
  digits_cnn      recipes/digits_cnn.yaml / digits_cnn_int8.yaml          small ResNet, static int8
  digits_encoder  recipes/digits_encoder.yaml / digits_encoder_int8.yaml  transformer encoder, dynamic int8
  edu_churn       recipes/edu_churn.yaml / edu_churn_int8.yaml            MLP, static int8 (metric: AUC)
Weights are the committed trained ones (python -m examples.digits.train reproduces the digits
models). Artifacts go to benchmarks/out/int8_trained/ (git-ignored); --reuse skips building when
they exist. --layers prints each quantized layer's own SQNR (the model output with only that
layer in int8), worst first: where the error comes from.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if "--threads" in sys.argv:  # the TVM runtime reads this once, when its thread pool starts
    os.environ["TVM_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]
os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "int8_trained"
sys.path.insert(0, str(ROOT))

from accelc.compile import build  # noqa: E402
from accelc.config import recipe as recipe_mod  # noqa: E402
from accelc.capture.export import build_model  # noqa: E402
from accelc.runtime import predictor as runtime  # noqa: E402
from accelc.verify import metrics  # noqa: E402
from accelc.verify.gate_data import validation_data  # noqa: E402

MODELS = {"digits_cnn": ("digits_cnn", "digits_cnn_int8"), "digits_encoder": ("digits_encoder", "digits_encoder_int8"),
          "edu_churn": ("edu_churn", "edu_churn_int8")}


def artifact(name: str, reuse: bool) -> Path:
    out = OUT / name
    if not (reuse and (out / "manifest.json").exists()):
        build(ROOT / "recipes" / f"{name}.yaml", output=out)
    return out


def eager_outputs(recipe: Path, inputs: list[np.ndarray]) -> np.ndarray:
    """The original float32 model as the recipe loads it (entrypoint + weights), in eager PyTorch."""
    model = build_model(recipe_mod.load(recipe)).eval()
    with torch.no_grad():
        return np.concatenate([model(*[torch.from_numpy(a[i:i + 256]) for a in inputs]).numpy()
                               for i in range(0, len(inputs[0]), 256)])


def sqnr_db(reference: np.ndarray, got: np.ndarray) -> float:
    reference, got = reference.astype(np.float64), got.astype(np.float64)
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum((reference - got) ** 2), 1e-300)))


def float_layers(manifest) -> list[str]:
    """'layer: why' for each layer the quantize pass left in float32, and the float matmul ops."""
    (stats,) = [p.stats for p in manifest.passes if p.kind == "quantize"]
    rows = [f"{r['layer']}: {r['reason']}" for r in stats["layers"] if r["dtype"] == "float32"]
    ops = stats.get("float32_ops", [])
    if ops:
        rows.append(f"{len(ops)} matmul op(s) without an int8 path ({', '.join(sorted({o['op'] for o in ops}))})")
    return rows


def layer_sqnr(manifest) -> list[tuple[str, float | None]]:
    (stats,) = [p.stats for p in manifest.passes if p.kind == "quantize"]
    rows = [(r["layer"], r.get("sqnr_db")) for r in stats["layers"] if r["dtype"] != "float32"]
    return sorted(rows, key=lambda r: np.inf if r[1] is None else r[1])


def latency_ratio(fp32, int8, x: np.ndarray, rounds: int, calls: int) -> tuple[float, float, float]:
    """(fp32 p50 us, int8 p50 us, median over rounds of the int8/fp32 ratio), alternating A/B."""
    def p50(fn) -> float:
        for _ in range(max(calls // 10, 3)):
            fn(x)
        times = np.empty(calls)
        for i in range(calls):
            start = time.perf_counter()
            fn(x)
            times[i] = time.perf_counter() - start
        return float(np.median(times) * 1e6)
    pairs = [(p50(fp32), p50(int8)) for _ in range(rounds)]
    return (float(np.median([a for a, _ in pairs])), float(np.median([b for _, b in pairs])),
            float(np.median([b / a for a, b in pairs])))


def evaluate(model: str, args) -> dict:
    float_name, int8_name = MODELS[model]
    folders = {k: artifact(n, args.reuse) for k, n in (("fp32", float_name), ("int8", int8_name))}
    loaded = recipe_mod.load(ROOT / "recipes" / f"{int8_name}.yaml")
    metric = loaded.recipe.verify.metric.name
    inputs, labels = validation_data(loaded)
    eager = eager_outputs(ROOT / "recipes" / f"{float_name}.yaml", inputs)
    predictors = {k: runtime.load(f) for k, f in folders.items()}
    outs = {"eager": eager, **{k: p(*inputs) for k, p in predictors.items()}}
    score = {k: metrics.METRICS[metric](labels, v) for k, v in outs.items()}
    row = {"model": model, "metric": metric, "examples": len(labels), **score,
           "drop": metrics.drop(metric, score["eager"], score["int8"]),
           "sqnr_db": sqnr_db(eager, outs["int8"]), "sqnr_fp32_db": sqnr_db(eager, outs["fp32"]),
           "float_layers": float_layers(predictors["int8"].manifest), "layers": layer_sqnr(predictors["int8"].manifest)}
    if eager.ndim == 2 and eager.shape[1] > 1:
        row["agree"] = float(np.mean(eager.argmax(1) == outs["int8"].argmax(1)))
    for batch in args.batches:
        x = [a[:batch] for a in inputs]
        row[f"latency_b{batch}"] = latency_ratio(predictors["fp32"], predictors["int8"], *x, args.rounds, args.calls)
    return row


def report(rows: list[dict], args) -> None:
    print("\nheld-out task metric (eager float32 = the original model; drop = eager - accelc int8)")
    header = f"{'model':<16}{'metric':<7}{'n':>6}{'eager fp32':>12}{'accelc fp32':>13}{'accelc int8':>13}" \
             f"{'drop':>9}{'agree':>8}{'SQNR dB':>9}" + "".join(f"{f'int8/fp32 b{b}':>16}" for b in args.batches)
    print(header + "\n" + "-" * len(header))
    for r in rows:
        agree = f"{r['agree']:.4f}" if "agree" in r else "-"
        ratios = "".join(f"{r[f'latency_b{b}'][2]:>16.2f}" for b in args.batches)
        print(f"{r['model']:<16}{r['metric']:<7}{r['examples']:>6}{r['eager']:>12.4f}{r['fp32']:>13.4f}"
              f"{r['int8']:>13.4f}{r['drop']:>+9.4f}{agree:>8}{r['sqnr_db']:>9.1f}{ratios}")
    print("\nlatency p50 (us, median of interleaved rounds): fp32 / int8")
    for r in rows:
        print(f"  {r['model']:<16}" + "  ".join(f"b{b}: {r[f'latency_b{b}'][0]:.0f} / {r[f'latency_b{b}'][1]:.0f}"
                                                for b in args.batches))
    for r in rows:
        print(f"\n{r['model']}: layers kept float32 ({len(r['float_layers'])})")
        for line in r["float_layers"] or ["(none)"]:
            print(f"  {line}")
        if args.layers:
            print(f"{r['model']}: each int8 layer's own SQNR (model output, only that layer int8), worst first")
            for name, db in r["layers"]:
                print(f"  {name:<40} {'exact' if db is None else f'{db:.1f} dB'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts already in benchmarks/out/")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", type=int, default=1, help="TVM runtime threads")
    parser.add_argument("--layers", action="store_true", help="per-layer SQNR of each int8 model")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    rows = [evaluate(m, args) for m in args.models.split(",")]
    report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
