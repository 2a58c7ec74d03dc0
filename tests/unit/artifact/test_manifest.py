"""The typed manifest: today's JSON loads and writes back byte for byte, and a manifest that does
not fit is one E701 naming the JSON path of the value, never a KeyError later in a reader."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from accelc.artifact.manifest import DeviceCode, KernelTuning, Manifest, PassReport, TensorSpec, Verification
from accelc.errors import ArtifactError
from tests.fixtures.helpers import ROOT
from tests.fixtures.manifests import TODAY, today


def refused(data, where: str | None = None) -> tuple[str, str]:
    """(field path, message) of the E701 that `data` gets."""
    with pytest.raises(ArtifactError) as info:
        Manifest.from_json(data, where)
    problem = info.value.problems[0]
    assert problem.code == "E701" and problem.location == where
    return problem.field, problem.message


def test_todays_format_loads_as_attributes():
    m = Manifest.from_json(TODAY)
    assert (m.name, m.target.name, m.target.arch, m.target.cpu_features) == ("churn", "x86", "x86_64", ("avx2", "fma"))
    raw, ids = m.inputs
    assert (raw.name, raw.shape, raw.dtype, raw.unaligned, raw.range) == ("raw", ("batch", 3), "float32", True, None)
    assert raw.columns == ("tenure_days", "age_years", "region") and raw.units == ("days", "years", "code")
    assert (ids.dtype, ids.range, ids.unaligned, ids.batched, ids.dims) == ("int64", (0, 100), False, True, (None, 5))
    assert [o.name for o in m.outputs] == ["logits", "hidden.0"]
    assert m.by_batch == {1: "main_b1", 64: "main_b64"} and m.params == ("p_fc_weight", "p_fc_bias")
    (quantize,) = m.passes
    assert (quantize.kind, quantize.before.params, quantize.after.ops) == ("quantize", 416, 10)
    assert quantize.stats["mode"] == "dynamic" and quantize.stats["size"] == {"ratio": 2.6}  # the pass's own keys
    assert m.tuning.kernels[1].best_us is None and m.tuning.kernels[1].schedule is None
    assert m.verification.metric.examples == 7500 and m.verification.rows[0].batch == 1
    assert m.versions.llvm is None and m.cache.keys[0].startswith("c77b") and m.device_code is None
    assert m.verified is True and m.files["lib.so"].startswith("6ce4") and m.signature is None


def test_todays_format_writes_back_unchanged():
    """What a reader rewrites (update_manifest, the store) is the JSON it read, null for null and absent
    for absent: the on-disk format does not change with the types."""
    assert Manifest.from_json(TODAY).to_json() == TODAY
    assert json.dumps(Manifest.from_json(TODAY).to_json(), sort_keys=True) == json.dumps(TODAY, sort_keys=True)


def test_optional_parts_written_by_other_builds_load():
    """CUDA device code, a signature, an untuned build, a skipped verification, kernel rows from before
    `schedule` was recorded: each as the compiler wrote it."""
    data = today()
    data.update(device_code={"format": "fatbin", "embedded": True, "archs": ["sm_90"], "sass": ["sm_90"],
                             "ptx": ["compute_90"], "cuda": "13.0"},
                signature={"algorithm": "hmac-sha256", "hmac": "ab" * 32}, tuning={"trials": 0},
                verification={"status": "skipped", "reason": "no GPU here", "rows": []}, verified=False)
    m = Manifest.from_json(data)
    assert m.device_code == DeviceCode("fatbin", True, ("sm_90",), ("sm_90",), ("compute_90",), "13.0")
    assert m.tuning.tasks is None and m.verification.reason == "no GPU here" and m.signature.algorithm == "hmac-sha256"
    assert m.to_json() == data
    row = {k: v for k, v in TODAY["tuning"]["kernels"][0].items() if k != "schedule"}
    assert KernelTuning.parse(row).schedule is None


@pytest.mark.parametrize("edit, path, message", [
    (lambda m: m["inputs"][0].update(shap=[1]), "inputs[0].shap", "unknown field (did you mean 'shape'?)"),
    (lambda m: m.update(note="x"), "note", "unknown field"),
    (lambda m: m["target"].pop("arch"), "target.arch", "missing field"),
    (lambda m: m.pop("verified"), "verified", "missing field"),
    (lambda m: m["inputs"][1].update(shape=["batch", "5"]), "inputs[1].shape[1]", "expected"),
    (lambda m: m["inputs"][1].update(shape=["batch", -5]), "inputs[1].shape[1]", "a size >= 0"),
    (lambda m: m["inputs"][1].update(range=[5, 1]), "inputs[1].range", "low < high"),
    (lambda m: m["outputs"][0].update(dtype="float33"), "outputs[0].dtype", "unknown dtype 'float33'"),
    (lambda m: m.update(param_bytes=True), "param_bytes", "expected an integer, got a boolean"),
    (lambda m: m.update(param_bytes=1.5), "param_bytes", "expected an integer, got a number"),
    (lambda m: m.update(target="x86"), "target", "expected an object, got a string"),
    (lambda m: m.update(files=["lib.so"]), "files", "expected an object, got a list"),
    (lambda m: m["files"].update({"lib.so": 7}), "files['lib.so']", "expected a string"),
    (lambda m: m["functions"].update({"many": "main"}), "functions['many']", "expected a batch size"),
    (lambda m: m["verification"].update(status="fine"), "verification.status", "expected one of"),
    (lambda m: m["passes"][0]["before"].pop("ops"), "passes[0].before.ops", "missing field"),
    (lambda m: m["tuning"]["kernels"][0].update(best_us="fast"), "tuning.kernels[0].best_us", "expected"),
    (lambda m: m.update(format=2), "format", "unknown format 2"),
    (lambda m: m.update(inputs=[m["inputs"][0], m["inputs"][0]]), "inputs", "repeated: ['raw']"),
])
def test_a_field_that_does_not_fit_is_e701_at_its_path(edit, path, message):
    data = today()
    edit(data)
    field, text = refused(data, "/a/manifest.json")
    assert field == path and message in text


def test_the_error_prints_the_file_and_the_path():
    data = today()
    data["inputs"][0]["dtype"] = 32
    with pytest.raises(ArtifactError) as info:
        Manifest.from_json(data, "/a/manifest.json")
    assert info.value.format().startswith("error[E701] /a/manifest.json: inputs[0].dtype: expected a string, got an "
                                          "integer")


@pytest.mark.parametrize("data, kind", [(None, "null"), ([], "a list"), ("manifest", "a string"), (1, "an integer")])
def test_a_manifest_that_is_not_an_object(data, kind):
    assert refused(data) == (None, f"expected an object, got {kind}")


def test_records_built_in_code_check_themselves():
    """The compiler builds records directly: a wrong value is a ValueError (a bug), not a user error."""
    with pytest.raises(ValueError, match="unknown dtype"):
        TensorSpec("x", ("batch", 4), "float")
    with pytest.raises(ValueError, match="'batch' may appear once"):
        TensorSpec("x", ("batch", "batch"), "float32")
    with pytest.raises(ValueError, match=r"passes\[0\]\.after: missing field"):
        PassReport.parse({"kind": "fold", "changed": False, "seconds": 0.1, "before": {"params": 1, "macs": 1, "ops": 1}},
                         "passes[0]")


def test_with_verification_marks_only_a_pass_verified():
    m = Manifest.from_json(today())
    assert m.with_verification(Verification("failed")).verified is False
    assert m.with_verification(Verification("passed")).verified is True
    assert m.with_verification(Verification("skipped", reason="no GPU")).to_json()["verification"] == {
        "status": "skipped", "rows": [], "reason": "no GPU"}


def test_the_manifest_module_needs_only_the_standard_library():
    code = ("import sys, accelc.artifact.manifest; "
            "print(sorted(m for m in ('numpy', 'torch', 'tvm', 'pydantic') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_kernel_origins_are_typed_and_optional():
    """Artifacts built before the build recorded each kernel's rule and modules load without them."""
    from accelc.artifact.manifest import KernelOrigin
    assert "kernels" not in TODAY and Manifest.from_json(TODAY).kernels is None
    row = {"kernel": "fused_matmul_add_relu", "rule": "Matmul", "tags": ["gemm"], "nodes": ["addmm", "relu"],
           "ops": ["addmm.default", "relu.default"], "modules": ["fc1"], "sources": ["model.py:12"]}
    m = Manifest.from_json({**today(), "kernels": [row]})
    assert m.kernels == (KernelOrigin("fused_matmul_add_relu", "Matmul", ("gemm",), ("addmm", "relu"),
                                      ("addmm.default", "relu.default"), ("fc1",), ("model.py:12",)),)
    assert m.to_json()["kernels"] == [row]
    assert refused({**today(), "kernels": [{**row, "modules": "fc1"}]}) == ("kernels[0].modules",
                                                                            "expected a list, got a string")
