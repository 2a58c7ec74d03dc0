"""Quantized graphs compiled by TVM: the Relax holds uint8 x int8 GEMMs accumulating in int32 and
the machine code the AVX2 pair-multiply instructions; the compiled module equals its quantized
graph bit for bit (static, dynamic, convolutions); recipes/edu_churn_int8.yaml builds, keeps its
AUC and ships ~4x smaller parameters; a target without int8 is refused before any work."""
from __future__ import annotations

import json
import re
import textwrap
import warnings

import numpy as np
import pytest
import torch
import tvm
from safetensors.numpy import load_file
from torch import nn
from tvm import relax, s_tir

from accelc.config import recipe as recipe_mod  # noqa: E402
from accelc.runtime import predictor as runtime
from accelc.config import targets
from accelc.backends.tvm.kernels import tags  # noqa: E402
from accelc.backends.tvm.lower import relax as lower  # noqa: E402
from accelc.capture.export import drop_guards  # noqa: E402
from accelc.compile import build  # noqa: E402
from accelc.errors import TargetError  # noqa: E402
from accelc.passes import PassContext, run_passes  # noqa: E402
from accelc.passes.quantize import QuantizeConfig  # noqa: E402
from accelc.config.recipe import InputSpec  # noqa: E402
from tests.fixtures.helpers import ROOT, make_repo, write_recipe  # noqa: E402

RECIPE = ROOT / "recipes" / "edu_churn_int8.yaml"
TARGET = targets.resolve("x86").tvm_target()


def mlp_rows():
    """Calibration sources for the tests' graphs (the pass imports them by name)."""
    return np.random.default_rng(1).standard_normal((64, 12)).astype(np.float32)


def cnn_rows():
    return np.random.default_rng(2).standard_normal((16, 3, 12, 12)).astype(np.float32)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU())
        self.head = nn.Linear(24, 1)

    def forward(self, x):
        return torch.sigmoid(self.head(self.body(x)))


class Cnn(nn.Module):
    """Padding, a strided conv, a 1x1 conv, a residual add, a grouped conv that stays float."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(16, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.down(torch.relu(self.stem(x))))
        y = torch.relu(self.mix(y) + y)
        return self.head(self.grouped(y).mean(dim=(2, 3)))


def quantized(model: nn.Module, shape: tuple, **config):
    """(float eager model, quantized fx graph, input specs) with calibration on random rows."""
    example = (torch.randn(2, *shape),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = torch.export.export(model.eval(), example, dynamic_shapes=({0: torch.export.Dim("batch", max=64)},),
                                 strict=False).module()
    drop_guards(gm)
    if config.get("mode", "static") == "static" and config.get("dtype", "int8") == "int8":
        config["data"] = f"tests.integration.test_quantize_build:{'mlp' if len(shape) == 1 else 'cnn'}_rows"
    graph, reports = run_passes(gm, [QuantizeConfig(kind="quantize", **config)], PassContext(example, None))
    return graph, reports[0], [InputSpec(name="x", shape=["batch", *shape])]


def compile_graph(graph, specs, batch: int):
    lowered = lower.to_relax(lower.export_programs(graph, specs, [batch]), TARGET)
    executable = lower.compile_module(lowered, TARGET)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    params = vm["transform_params"]([tvm.runtime.tensor(p) for p in lowered.params.values()])

    def run(x: np.ndarray) -> np.ndarray:
        out = vm[lower.function_name(batch)](tvm.runtime.tensor(x), *params)
        return (out if hasattr(out, "numpy") else out[0]).numpy()
    return lowered, executable, run


def machine_code(executable) -> str:
    modules = [executable.mod, *getattr(executable.mod, "imports", [])]
    return "\n".join(m.inspect_source("asm") for m in modules if m.kind == "llvm")


@pytest.fixture(scope="module")
def mlp_static():
    graph, report, specs = quantized(Mlp(), (12,), mode="static", min_outputs=1)  # the int8 GEMV too
    return (graph, report, *compile_graph(graph, specs, 8))


def test_relax_has_uint8_x_int8_gemms_accumulating_in_int32(mlp_static):
    graph, report, lowered, executable, _ = mlp_static
    main = lowered.mod["main_b8"].script()
    assert "R.matmul" not in main and "R.nn.conv2d" not in main  # no float GEMM left for a quantized layer
    gemms = {gv.name_hint: f for gv, f in lowered.mod.functions.items() if gv.name_hint.startswith(("qgemm", "qgemv"))}
    assert sorted(gemms) == ["qgemm", "qgemm1", "qgemv"]  # two hidden layers, the one-logit head
    fused = 0
    for name, func in gemms.items():
        text = func.script()
        dtypes = [str(p.dtype) for p in func.params]
        if dtypes[0] == "float32":  # a small batch's input quantize runs in the GEMM kernel (uint8 rows)
            assert dtypes == ["float32", "float32", "int32", "int8", "int32"], name
            assert re.search(r'qinput = T\.sblock_alloc_buffer\(.*"uint8"', text) or '"uint8"' in text, text
            fused += 1
        else:
            assert dtypes == ["uint8", "int8", "int32"], name
        assert re.search(r'\+ T\.Cast\("int32", \w+\[.*\]\) \* T\.Cast\("int32", \w+\[.*\]\)', text), text
        assert f"R.call_tir({name}, " in main
    assert fused == 2  # both hidden layers at batch 8 (the head's GEMV takes its uint8 input as it is)
    int8_params = [n for n, p in lowered.params.items() if p.dtype == np.int8]
    assert len(int8_params) == 3  # the weights travel as int8


def test_machine_code_uses_the_avx2_int8_pair_multiply(mlp_static):
    code = machine_code(mlp_static[3])
    assert "vpmaddubsw" in code and "vpmaddwd" in code
    # int32 accumulator tiles live on the stack (registers), not in a workspace allocated per tile
    gemms = [body for name, body in re.findall(r"^(\w+):\n(.*?)\.cfi_endproc", code, re.M | re.S)
             if "qgemm" in name or "qgemv" in name]
    assert gemms and not any("TVMBackendAllocWorkspace" in body for body in gemms)


def test_static_mlp_compiled_equals_its_quantized_graph_bit_for_bit(mlp_static):
    graph, report, _, _, run = mlp_static
    x = np.random.default_rng(12).standard_normal((8, 12)).astype(np.float32) * 2
    with torch.no_grad():
        want = graph(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(x), want, rtol=0, atol=1e-7)  # sigmoid's last bit may differ


def test_static_mlp_above_the_fused_quantize_rows_equals_its_graph_too():
    """Above FUSED_QUANTIZE_ROWS each quantize is fused into the previous kernel's epilogue instead."""
    from accelc.backends.tvm.lower.quant import FUSED_QUANTIZE_ROWS
    graph, report, specs = quantized(Mlp(), (12,), mode="static", min_outputs=1)
    batch = FUSED_QUANTIZE_ROWS * 2
    lowered, _, run = compile_graph(graph, specs, batch)
    assert "qinput" not in lowered.mod.script()
    x = np.random.default_rng(13).standard_normal((batch, 12)).astype(np.float32) * 2
    with torch.no_grad():
        want = graph(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(x), want, rtol=0, atol=1e-7)


@pytest.mark.parametrize("config", [{"mode": "dynamic"}, {"mode": "static", "reduce_range": False},
                                    {"mode": "weight_only"}], ids=["dynamic", "full_range", "weight_only"])
def test_other_modes_compiled_equal_their_graphs(config):
    graph, report, specs = quantized(Mlp(), (12,), **config)
    lowered, executable, run = compile_graph(graph, specs, 8)
    x = np.random.default_rng(13).standard_normal((8, 12)).astype(np.float32) * 2
    with torch.no_grad():
        want = graph(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(x), want, rtol=0, atol=1e-7 if config["mode"] != "weight_only" else 1e-6)
    names = {gv.name_hint for gv in lowered.mod.functions}
    if config.get("reduce_range") is False:  # 8-bit activations would saturate vpmaddubsw: plain int32 code
        gemms = [s_tir.Schedule(f) for gv, f in lowered.mod.functions.items() if gv.name_hint.startswith("qgemm")]
        notes = [{k: str(v) for k, v in sch.get(sch.get_sblock("qgemm")).annotations.items()} for sch in gemms]
        assert notes == [{tags.KEY: tags.INT8_GEMM, tags.MICROKERNEL: "int32", tags.ACTIVATION_BITS: "8"}] * 2, notes
        assert "vpmaddubsw" not in machine_code(executable)
    if config["mode"] == "weight_only":
        assert "w8_matmul" in names and not any(n.startswith("qgemm") for n in names)


def test_cnn_compiled_equals_its_quantized_graph():
    # The head stays float: after the mean (a float sum, in TVM's order) its quantize could round
    # an input one quantum apart from eager; between the convolutions only ReLU and add, exact.
    graph, report, specs = quantized(Cnn(), (3, 12, 12), mode="static", skip=["head"])
    rows = {r["layer"]: r["dtype"] for r in report["layers"]}
    assert rows == {"stem": "int8", "down": "int8", "mix": "int8", "grouped": "float32", "head": "float32"}
    lowered, _, run = compile_graph(graph, specs, 2)
    # int8 convolutions compute their patches inside the GEMM kernel
    assert any(gv.name_hint.startswith("im2col_qgemm") for gv in lowered.mod.functions)
    x = np.random.default_rng(11).standard_normal((2, 3, 12, 12)).astype(np.float32)
    with torch.no_grad():
        want = graph(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(x), want, rtol=0, atol=2e-6)  # float grouped conv and mean: their sum order


def test_half_precision_compiles_for_cpu_and_stays_close():
    model = Mlp().eval()
    graph, report, specs = quantized(model, (12,), dtype="float16")
    _, _, run = compile_graph(graph, specs, 8)
    x = np.random.default_rng(14).standard_normal((8, 12)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(run(x), model(torch.from_numpy(x)).numpy(), atol=2e-3)


# ---- the recipe --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(RECIPE, output=tmp_path_factory.mktemp("edu_churn_int8") / "artifact")


def test_edu_churn_int8_keeps_its_auc_and_matches_its_quantized_graph(built):
    report = built.report
    assert report["status"] == "passed" and report["reference"] == "rewritten graph (after passes)"
    assert report["metric"]["drop"] <= 0.005 and report["metric"]["examples"] == 7500
    assert all(row["max_abs"] <= 1e-5 for row in report["rows"])
    (quantize,) = [p.stats for p in built.manifest.passes if p.kind == "quantize"]
    assert [r["dtype"] for r in quantize["layers"]] == ["int8", "int8", "float32"]  # the one-logit head:
    assert "1 output channel(s) run faster in float32" in quantize["layers"][2]["reason"]  # quantize.min_outputs
    assert quantize["fallback"]["reverted"] == []


def test_edu_churn_int8_parameters_are_about_four_times_smaller(built):
    weights = load_file(str(ROOT / "examples" / "edu_churn" / "weights.safetensors"))
    float_bytes = sum(v.nbytes for k, v in weights.items() if k.startswith("mlp."))
    manifest = json.loads((built.output / "manifest.json").read_text())
    assert manifest["param_bytes"] < float_bytes / 3.4  # int8 weights; biases and scales stay float32
    stored = tvm.runtime.load_param_dict_from_file(str(built.output / "params.bin"))
    assert sorted(str(v.dtype) for v in stored.values()).count("int8") == 2  # the 64-weight head stays float32


def test_edu_churn_int8_artifact_serves_raw_rows(built):
    from examples.edu_churn import data
    raw = data.sample_inputs(70, seed=5)  # not a built size: padded to 1024
    got = runtime.load(built.output)(raw)
    loaded = recipe_mod.load(RECIPE)
    from accelc.capture.export import build_model
    want = build_model(loaded)(torch.from_numpy(raw)).detach().numpy()
    assert got.shape == (70, 1) and np.abs(got - want).max() < 0.05  # int8 vs the float model


def test_a_target_without_int8_is_refused_before_any_work(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "targets").mkdir()
    (repo / "targets" / "noint8.yaml").write_text(textwrap.dedent("""\
        name: noint8
        description: a float-only CPU
        tvm: {kind: llvm, mtriple: x86_64-linux-gnu, mcpu: haswell}
        dtypes: [float32]
        """))
    path = write_recipe(repo, textwrap.dedent("""\
        version: 1
        name: q
        model:
          entrypoint: tests.fixtures.models:tiny_mlp
          inputs:
            - {name: x, shape: [batch, 4]}
        passes:
          - {kind: quantize, mode: dynamic}
        target: noint8
        """))
    with pytest.raises(TargetError) as info:
        build(path, output=repo / "out")
    assert info.value.code == "E202" and "needs int8" in str(info.value) and "recipe.yaml:8:" in str(info.value)
    assert not (repo / "out").exists()
