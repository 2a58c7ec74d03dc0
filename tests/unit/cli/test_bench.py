"""accelc bench: every system timed on the same inputs, peers skipped with a note when missing."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from accelc.bench import run as bench
from accelc.cli.main import main
from tests.fixtures.helpers import TINY_RECIPE, cli, make_repo, shared_artifact, write_recipe


def test_time_calls_counts_and_orders_percentiles():
    calls = []
    timing = bench.time_calls(lambda: calls.append(1), calls=50, warmup=5)
    assert len(calls) == 55 and timing["calls"] == 50
    assert 0 < timing["p50_us"] <= timing["p99_us"]


def test_model_flops_of_a_linear_layer_is_two_mac():
    import numpy as np
    import torch
    layer = torch.nn.Linear(8, 4, bias=False)
    assert bench.model_flops(layer, [np.zeros((3, 8), np.float32)]) == 2 * 3 * 8 * 4


def test_bench_cli_writes_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", str(shared_artifact()), "--batch", "1,3", "--calls", "20",
                 "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    results = json.loads(out_json.read_text())
    assert set(results["batches"]) == {"1", "3"}
    for rows in results["batches"].values():
        systems = {row["system"]: row for row in rows}
        assert systems["accelc"]["p50_us"] > 0
        assert {"pytorch eager", "torch.compile", "onnxruntime"} <= set(systems)
        assert all("p50_us" in row or row["note"].startswith("skipped") for row in rows)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out, err = capsys.readouterr()
    assert out.count("pair batch") == 2 and "pytorch eager" in out  # the tables: the command's result
    assert "timing pair at batch 1:" in err and "pytorch eager" not in err  # progress only


def test_compare_reports_the_median_round_and_the_quietest_one(monkeypatch):
    import numpy as np
    import torch
    planted = iter([30.0, 10.0, 20.0])  # p50 of each round, us: median 20, quietest 10
    monkeypatch.setattr(bench, "time_calls", lambda fn, calls, warmup: {"p50_us": (p := next(planted)),
                                                                         "p99_us": 2 * p, "calls": calls})
    layer = torch.nn.Linear(8, 4, bias=False)
    inputs = [np.zeros((3, 8), np.float32)]
    [row] = bench.compare(layer, inputs, {"accelc": lambda: None}, threads=1, calls=30, peers=False, rounds=3)
    flops, bound = 2 * 3 * 8 * 4, bench.fma_bound_gflops(1)
    assert (row["p50_us"], row["p99_us"], row["best_round_p50_us"]) == (20.0, 40.0, 10.0)
    assert np.isclose(row["bound_pct"], 100 * flops / 20e3 / bound)
    assert np.isclose(row["best_round_bound_pct"], 100 * flops / 10e3 / bound)
    assert "quietest round" in bench.format_rows([row], "title")


def no_work(*args, **kwargs):
    raise AssertionError("a bad argument must be refused before any work")


@pytest.mark.parametrize("argv", [["--batch", "abc"], ["--batch=-3"], ["--batch", "1,,2"], ["--threads", "0"],
                                  ["--calls", "0"], ["--json", "{missing}/out.json"], ["--plot", "{missing}/p.png"],
                                  ["--json", "{here}"], ["--plot", "{file}/p.png"]])
def test_bad_bench_arguments_exit_2_before_any_work(argv, tmp_path, capsys, monkeypatch):
    from accelc import compile
    monkeypatch.setattr(bench, "bench_artifact", no_work)
    monkeypatch.setattr(compile, "build", no_work)
    (tmp_path / "afile").write_text("")
    places = {"missing": tmp_path / "missing", "here": tmp_path, "file": tmp_path / "afile"}
    recipe = write_recipe(make_repo(tmp_path / "repo"), TINY_RECIPE)
    rc, out, err = cli(["bench", recipe, *(a.format(**places) for a in argv)], capsys)
    assert rc == 2 and "usage:" in err and "Traceback" not in out + err, err


def test_onnxruntime_peer_leaves_no_temporary_files(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import numpy as np
    import torch
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    layer, inputs = torch.nn.Linear(8, 4), [np.ones((2, 8), np.float32)]
    peer = bench._onnxruntime(layer, inputs, threads=1)
    assert not isinstance(peer, str), peer
    with torch.no_grad():  # the session works with its model file gone
        np.testing.assert_allclose(peer()[0], layer(torch.from_numpy(inputs[0])).numpy(), rtol=1e-5, atol=1e-6)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fails", [False, True])
def test_bench_of_a_recipe_removes_the_artifact_it_built(fails, tmp_path, capsys, monkeypatch):
    """The recipe's artifact is built into a temporary directory, gone after the run, also after an error."""
    from accelc import compile
    from accelc.errors import ArtifactError
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    built = []

    def build(recipe, output):
        Path(output).mkdir(parents=True)
        built.append(Path(output))
        return type("Result", (), {"output": Path(output)})

    def bench_artifact(folder, batches, threads, calls, rounds):
        assert Path(folder) == built[0] and folder.is_dir()
        if fails:
            raise ArtifactError("planted", code="E701")
        return {"batches": {}}
    monkeypatch.setattr(compile, "build", build)
    monkeypatch.setattr(bench, "bench_artifact", bench_artifact)
    rc, _, err = cli(["bench", write_recipe(make_repo(tmp_path / "repo"), TINY_RECIPE)], capsys)
    assert rc == (2 if fails else 0) and ("E701" in err) == fails
    assert built and not built[0].exists() and list((tmp_path / "tmp").iterdir()) == []


def test_peers_return_every_output_of_a_dict_model_and_onnx_runs_a_decoder():
    """A ModelOutput/dict model crashed the eager peer ('.numpy' of a dict); the TorchScript ONNX
    exporter fails on decoder LMs (aten::diff), so ONNX Runtime used to be skipped there."""
    from tests.fixtures.hf_models import gpt2
    from tests.fixtures.models import named
    x = np.random.default_rng(0).standard_normal((2, 4), dtype=np.float32)
    peers = bench.peer_callables(named(), [x], threads=1)
    eager = peers["pytorch eager"]()
    assert [a.shape for a in eager] == [(2, 3)] * 3
    ids = np.random.default_rng(0).integers(0, 100, (2, 16))
    decoder = bench.peer_callables(gpt2(), [ids], threads=1)
    assert callable(decoder["onnxruntime"]), decoder["onnxruntime"]
    np.testing.assert_allclose(decoder["onnxruntime"]()[0], decoder["pytorch eager"]()[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cpuinfo,lanes", [
    ("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n", 8),  # Zen 4: 512-bit FMAs on 256-bit pipes
    ("vendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n", 16),  # Zen 5: full-width FMAs
    ("vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n", 16),  # Skylake-SP
])
def test_the_fma_bound_counts_the_lanes_each_fma_unit_retires(monkeypatch, cpuinfo, lanes):
    from accelc.config import host_cpu
    monkeypatch.setattr(host_cpu, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    assert bench.fma_lanes(cpuinfo) == lanes
    monkeypatch.setattr(host_cpu, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert bench.fma_lanes(cpuinfo) == 8
