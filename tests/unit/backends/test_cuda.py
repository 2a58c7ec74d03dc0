"""CUDA targets on a GPU-less machine: device code compiled ahead of time by nvcc and embedded as a
fatbin holding machine code for every listed arch (no CUDA source, nothing to JIT at load), and a
clear error when the artifact is loaded where it cannot run.

Needs nvcc and the CUDA 13 runtime library (the machine image and CI have both); locally the
build tests skip without them, in CI (CI=true) they fail.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from accelc.artifact.manifest import DeviceCode
from accelc.runtime import predictor as runtime
from accelc.config import targets
from accelc.backends.tvm import cuda
from accelc.compile import build
from accelc.errors import ArtifactError, TargetError, ToolchainError
from tests.fixtures.helpers import ROOT, TINY_RECIPE, cli, make_repo, write_recipe

pytestmark = pytest.mark.cuda


def require(ok: bool, reason: str) -> None:
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must provide this: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def nvcc():
    found = cuda.find_nvcc()
    require(found is not None, "nvcc missing (CUDA toolkit 13)")
    return found


@pytest.fixture(scope="module")
def edu_churn(nvcc, tmp_path_factory):
    """Two archs in one library: the multi-arch target."""
    return build(ROOT / "recipes/edu_churn.yaml", target="cuda-multi",
                 output=tmp_path_factory.mktemp("cuda") / "edu")


@pytest.fixture(scope="module")
def resnet(nvcc, tmp_path_factory):
    return build(ROOT / "recipes/resnet_small.yaml", target="cuda", output=tmp_path_factory.mktemp("cuda") / "cnn")


def sass_archs(path: Path) -> set[str]:
    return {f"sm_{n}" for kind, n in cuda.fatbin_entries(path.read_bytes()) if kind == "sass"}


def test_fatbin_reader_agrees_with_nvcc(nvcc, tmp_path):
    """The reader the other tests rely on, checked against what nvcc was asked to build."""
    source = tmp_path / "k.cu"
    source.write_text('extern "C" __global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }\n')
    out = tmp_path / "k.fatbin"
    subprocess.run([nvcc, "--fatbin", "-gencode", "arch=compute_80,code=sm_80", "-gencode",
                    "arch=compute_86,code=sm_86", "-gencode", "arch=compute_86,code=compute_86", "-o", out, source],
                   check=True, capture_output=True)
    assert sorted(cuda.fatbin_entries(out.read_bytes())) == [("ptx", 86), ("sass", 80), ("sass", 86)]
    assert cuda.fatbin_entries(b"no fatbin here") == []


@pytest.mark.parametrize("fixture, archs", [("edu_churn", {"sm_80", "sm_90"}), ("resnet", {"sm_90"})])
def test_library_embeds_machine_code_for_every_arch_and_no_cuda_source(fixture, archs, request):
    built = request.getfixturevalue(fixture)
    library = built.output / "lib.so"
    assert sass_archs(library) == archs
    assert b"__global__" not in library.read_bytes()  # a source fallback would be JIT-compiled at load
    code = built.manifest.device_code
    assert set(code.sass) == archs and code.embedded and code.cuda == cuda.nvcc_facts(cuda.find_nvcc())[0]
    assert code.ptx == (f"compute_{max(a[3:] for a in archs)}",)
    assert built.report["status"] == "skipped" and "GPU" in built.report["reason"]
    manifest = json.loads((built.output / "manifest.json").read_text())
    assert manifest["verified"] is False and manifest["target"]["cuda_archs"] == sorted(archs)


def test_loading_without_a_gpu_is_a_clear_error(edu_churn):
    with pytest.raises(ArtifactError) as info:
        runtime.load(edu_churn.output)
    assert info.value.code == "E704" and "CUDA GPU" in str(info.value)


LOAD_PROBE = textwrap.dedent("""
    import json, sys
    import tvm
    from accelc.runtime import predictor as runtime
    from accelc.errors import ArtifactError
    runtime._load_cuda_runtime()
    library = tvm.runtime.load_module(sys.argv[1] + "/lib.so")
    kinds, todo = [], [library]
    while todo:
        module = todo.pop()
        kinds.append(module.kind)
        todo += list(module.imports)
    device = next(m for m in [library, *library.imports, *library.imports[0].imports] if m.kind == "cuda")
    try:
        runtime.load(sys.argv[1], check_host=False)
        error = None
    except ArtifactError as exc:
        error = exc.code
    print(json.dumps({"kinds": kinds, "source": device.inspect_source("cuda"), "error": error}))
    """)


def test_runtime_only_tvm_loads_the_embedded_module_up_to_the_missing_gpu(edu_churn):
    """A production-like process (TVM_USE_RUNTIME_LIB=1) deserialises the CUDA module from the fatbin
    with no compiler; only creating the VM on the (absent) GPU fails, as a coded error."""
    import tvm
    runtime_lib = Path(tvm.base._LOADED_LIBS["tvm_runtime"]._name).resolve().parent / "libtvm_runtime_cuda.so"
    lib_dirs = [str(cuda._stub_driver(runtime_lib).parent), *map(str, cuda.cuda_lib_dirs())]
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "LD_LIBRARY_PATH": ":".join(lib_dirs)}
    done = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(edu_churn.output)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "cuda" in result["kinds"] and result["source"] == ""
    assert result["error"] == "E706"


def test_control_without_ahead_of_time_tvm_embeds_source(nvcc, tmp_path):
    """Control for the check above: plain TVM on a machine without a driver embeds CUDA source."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    driver = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.CDLL('libcuda.so.1')"], env=env,
                            capture_output=True)
    if driver.returncode == 0:  # (in a fresh process: this one may hold the build's stand-in)
        pytest.skip("an NVIDIA driver is installed: plain TVM would compile device code itself")
    probe = textwrap.dedent("""
        import sys, tvm
        from tvm.script import relax as R
        @tvm.script.ir_module
        class M:
            @R.function
            def main(x: R.Tensor((4, 8), "float32")):
                with R.dataflow():
                    y = R.nn.relu(x)
                    R.output(y)
                return y
        target = tvm.target.Target({"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}})
        tvm.compile(M, target=target).export_library(sys.argv[1])
        """)
    (tmp_path / "plain.py").write_text(probe)  # TVMScript reads its source from a file
    subprocess.run([sys.executable, str(tmp_path / "plain.py"), str(tmp_path / "plain.so")], check=True, env=env,
                   timeout=300)
    data = (tmp_path / "plain.so").read_bytes()
    assert b"__global__" in data and cuda.fatbin_entries(data) == []


def scratch_target(tmp_path: Path, body: str):
    repo = make_repo(tmp_path / "repo")
    (repo / "targets").mkdir()
    (repo / "targets" / "mine.yaml").write_text(textwrap.dedent(body))
    return repo


GPU_TARGET = """\
    name: mine
    description: a user's GPU target
    tvm: {{kind: cuda, arch: {arch}}}
    host: {{kind: llvm}}
    device: cuda
    dtypes: [float32]
    cuda_archs: {archs}
    """


def test_an_arch_unknown_to_nvcc_is_a_clear_error_before_any_work(nvcc, tmp_path, capsys):
    repo = scratch_target(tmp_path, GPU_TARGET.format(arch="sm_80", archs="[sm_80, sm_99]"))
    recipe = write_recipe(repo, TINY_RECIPE.replace("target: x86", "target: mine"))
    code, out, err = cli(["build", recipe], capsys)
    assert code == 2 and "E204" in err and "sm_99" in err and "nvcc knows" in err and "mine.yaml" in err
    assert "[2/6]" not in err


def test_codegen_arch_newer_than_an_embedded_arch_is_refused(nvcc, tmp_path):
    repo = scratch_target(tmp_path, GPU_TARGET.format(arch="sm_90", archs="[sm_80, sm_90]"))
    with pytest.raises(TargetError) as info:
        targets.resolve("mine", repo).check_toolchain()
    assert info.value.code == "E204" and "tvm.arch" in str(info.value)


def test_an_arch_that_is_not_sm_xx_fails_the_target_schema(tmp_path):
    repo = scratch_target(tmp_path, GPU_TARGET.format(arch="sm_80", archs="[compute_80]"))
    with pytest.raises(TargetError) as info:
        targets.load_all(repo)
    assert info.value.code == "E201" and "cuda_archs" in str(info.value)


def test_missing_nvcc_is_a_toolchain_error_naming_what_to_install(monkeypatch):
    monkeypatch.setattr(cuda, "find_nvcc", lambda: None)
    with pytest.raises(ToolchainError) as info:
        targets.resolve("cuda", ROOT).check_toolchain()
    assert info.value.code == "E503" and "nvidia-cuda-nvcc" in info.value.problems[0].hint


def test_nvcc_errors_surface_with_nvccs_message(nvcc):
    with pytest.raises(ToolchainError) as info:
        cuda.compile_fatbin("this is not CUDA", ["sm_90"])
    assert info.value.code == "E504" and "error" in str(info.value)


class FakeGpu:
    def __init__(self, version: str):
        self.compute_version, self.device_name = version, f"GPU {version}"


@pytest.mark.parametrize("gpu, ok", [("9.0", True), ("10.0", True), ("8.0", True), ("8.6", True),
                                     ("7.5", False)])
def test_gpu_arch_check_follows_cuda_compatibility_rules(gpu, ok):
    """sm_80 machine code runs on 8.x (x >= 0), PTX compute_90 on 9.0 and newer; 7.5 has neither."""
    code = DeviceCode("fatbin", True, ("sm_80", "sm_90"), ("sm_80", "sm_90"), ("compute_90",), "13.0")
    if ok:
        runtime.check_gpu_arch(FakeGpu(gpu), code)
    else:
        with pytest.raises(ArtifactError) as info:
            runtime.check_gpu_arch(FakeGpu(gpu), code)
        assert info.value.code == "E709" and "sm_75" in str(info.value) and "sm_80" in str(info.value)


def test_machine_code_alone_does_not_run_on_a_newer_major():
    with pytest.raises(ArtifactError):
        runtime.check_gpu_arch(FakeGpu("10.0"), DeviceCode("fatbin", True, ("sm_90",), ("sm_90",), (), "13.0"))
