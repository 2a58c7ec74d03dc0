"""benchmarks/models.py's core on one tiny model, one call per system (no timing assertions): every
system at every batch size, GFLOP/s that agree with the model's FLOPs counted by hand, and a
per-kernel breakdown that covers the profiled call and names the rule of RULES behind each kernel."""
from __future__ import annotations

import pytest

from accelc.backends.tvm.schedules import RULES
from accelc.backends.tvm import kernel_map
from accelc.bench import kernels as per_kernel
from benchmarks import models as bench_models

MLP = "tests.fixtures.models:tiny_mlp"  # Linear(4, 8) -> ReLU -> Linear(8, 2)
INPUTS = [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]
SYSTEMS = {"accelc", "pytorch eager", "torch.compile", "onnxruntime"}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    import tvm
    before = tvm.runtime.num_threads()
    args = bench_models.parse(["--batch", "1,3", "--threads", "1", "--calls", "1", "--rounds", "1", "--warmup", "1",
                               "--profile-repeat", "1", "--out", str(tmp_path_factory.mktemp("bench-models"))])
    yield bench_models.measure("tiny", MLP, INPUTS, args)
    bench_models.set_threads(before)  # the rest of the session keeps its thread pool


def test_every_system_at_every_batch_size_with_flops_counted_by_hand(measured):
    assert [(c["batch"], c["threads"]) for c in measured["configs"]] == [(1, 1), (3, 1)]
    for config in measured["configs"]:
        rows = {row["system"]: row for row in config["rows"]}
        assert set(rows) == SYSTEMS
        assert all("p50_us" in row or row["note"].startswith("skipped") for row in rows.values())
        ours, flops = rows["accelc"], 2 * config["batch"] * (4 * 8 + 8 * 2)  # 2 per multiply-add
        assert ours["gflops"] * ours["p50_us"] * 1e3 == pytest.approx(flops)
        if "p50_us" in rows["onnxruntime"]:
            assert config["vs_ort"] == pytest.approx(ours["p50_us"] / rows["onnxruntime"]["p50_us"])


def test_kernel_shares_cover_the_call_and_name_the_rule_that_scheduled_each(measured):
    labels = {kernel_map.rule_label(rule) for _, rule in RULES} | {kernel_map.NAIVE}
    for config in measured["configs"]:
        rows = config["kernels"]["accelc"]["rows"]
        assert sum(row["share"] for row in rows) == pytest.approx(100, abs=0.5)
        kernels = [row for row in rows if row["kernel"] != bench_models.OUTSIDE]
        assert {row["rule"] for row in kernels} <= labels  # each library symbol found among the build's kernels
        # the two Linear layers: two GEMM kernel calls per inference, both on the register-tiled rule
        gemm = [row for row in kernels if "gemm" in row["tags"]]
        assert sum(row["calls"] for row in gemm) == 2 and {row["rule"] for row in gemm} == {"Matmul"}


def test_printed_and_markdown_tables(measured):
    text = bench_models.format_config("tiny", measured["configs"][1])
    assert "tiny batch 3, 1 thread(s)" in text and "accelc per kernel" in text and "by rule: " in text
    table = bench_models.markdown([measured]).splitlines()
    assert len(table) == 2 + len(measured["configs"])
    assert all(line.count("|") == 11 for line in table)  # ten columns in every row


def test_breakdown_shares_from_a_planted_profile():
    profile = {"call_ms": 10.0, "spent": {"fused_matmul_add": (0.006, 2), "take": (0.001, 1)}}
    rules = {"fused_matmul_add": {"rule": "Matmul", "tags": ["gemm"]}, "take": {"rule": "Elementwise", "tags": []}}
    rows = per_kernel.breakdown(profile, rules)
    assert [(r["kernel"], r["rule"], r["calls"]) for r in rows] == [
        ("fused_matmul_add", "Matmul", 2), ("take", "Elementwise", 1), (bench_models.OUTSIDE, "-", 0)]
    assert [r["share"] for r in rows] == pytest.approx([60, 10, 30])
    assert per_kernel.by_rule(rows) == pytest.approx({"Matmul": 60, "rest of the call": 30, "Elementwise": 10})
    # kernels timed one by one above the whole call: shares of their sum, nothing outside
    over = per_kernel.breakdown({"call_ms": 5.0, "spent": profile["spent"]}, rules, {"take"})
    assert [r["share"] for r in over] == pytest.approx([600 / 7, 100 / 7, 0]) and over[1]["rule"] == per_kernel.SEARCHED
