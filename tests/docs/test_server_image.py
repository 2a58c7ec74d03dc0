"""The serving image (Dockerfile) and the KServe example (examples/kserve/inferenceservice.yaml),
checked without Docker or Kubernetes, neither of which is available here: the image installs
exactly the `runtime` and `serve` extras and no torch; both commands use only options `accelc serve`
has; and each command, run as written (the artifact path and the port aside) with the compiler's
packages made unimportable and the image's environment, serves the readiness path and the metrics
path the manifests name, over real HTTP on 127.0.0.1."""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from importlib import metadata

import pytest
import yaml
from packaging.requirements import Requirement

from tests.fixtures.helpers import ROOT, cli, shared_artifact

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as in the image

DOCKERFILE = (ROOT / "Dockerfile").read_text()
KSERVE = yaml.safe_load((ROOT / "examples" / "kserve" / "inferenceservice.yaml").read_text())
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SERVER_EXTRAS = PROJECT["optional-dependencies"]["runtime"] + PROJECT["optional-dependencies"]["serve"]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in joined.splitlines()
            if line.strip()]


def _all(op: str) -> list[str]:
    return [args for name, args in _instructions() if name == op]


def _exec_form(args: str) -> list[str]:
    return yaml.safe_load(args)  # a JSON array is YAML


def _env() -> dict[str, str]:
    env = {}
    for args in _all("ENV"):
        env.update(part.split("=", 1) for part in shlex.split(args))
    return env


def _container() -> dict:
    (container,) = KSERVE["spec"]["predictor"]["containers"]
    return container


def _commands() -> dict[str, list[str]]:
    return {"Dockerfile CMD": _exec_form(_all("CMD")[-1]), "InferenceService": _container()["command"]}


def test_image_installs_accelc_without_dependencies_then_exactly_the_server_extras(tmp_path):
    (run,) = [args for args in _all("RUN") if "pip install" in args]
    assert "pip install --no-deps /tmp/accelc" in run
    # the requirement list the image computes, computed here from this repository's pyproject.toml
    code = re.search(r'python -c "(import tomllib.*?)" > /tmp/requirements.txt', run)[1]
    out = subprocess.run([sys.executable, "-c", code.replace("/tmp/accelc/pyproject.toml", str(ROOT / "pyproject.toml"))],
                         capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:-1] == SERVER_EXTRAS
    assert "pip install -r /tmp/requirements.txt -c /tmp/accelc/constraints.txt" in run
    compiler_only = {Requirement(r).name.lower() for r in PROJECT["dependencies"]} - \
        {Requirement(r).name.lower() for r in SERVER_EXTRAS}
    assert {"torch", "pydantic"} <= compiler_only  # what the server must do without
    assert "find_spec('torch') is not None" in run  # the build fails if torch came in anyway


def test_image_environment_user_port_and_sources():
    env = _env()
    assert env["TVM_USE_RUNTIME_LIB"] == "1"
    (user,) = _all("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert _all("EXPOSE") == ["8080"]
    assert "/v2/health/ready" in _all("HEALTHCHECK")[0] and ":8080/" in _all("HEALTHCHECK")[0]
    kept = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    artifact = re.search(r"^ARG ARTIFACT=(\S+)$", DOCKERFILE, re.M)[1]
    for args in _all("COPY"):
        for source in shlex.split(args)[:-1]:
            if source == "${ARTIFACT}":
                source = artifact
            else:
                assert (ROOT / source).exists(), source
            parts = source.rstrip("/").split("/")
            assert any("/".join(parts[:n]) in kept for n in range(1, len(parts) + 1)), f"{source} is not sent"


def test_kserve_manifest_probes_and_scraping_point_at_the_server():
    assert (KSERVE["apiVersion"], KSERVE["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    container, notes = _container(), KSERVE["metadata"]["annotations"]
    assert container["name"] == "kserve-container"  # the name KServe looks for
    (port,) = [p["containerPort"] for p in container["ports"]]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    assert notes["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert (notes["prometheus.kserve.io/port"], notes["prometheus.kserve.io/path"]) == (str(port), "/metrics")
    predictor = KSERVE["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]


@pytest.mark.parametrize("which", ["Dockerfile CMD", "InferenceService"])
def test_command_uses_only_options_accelc_serve_has(which, capsys):
    argv = _commands()[which]
    assert argv[:2] == ["accelc", "serve"]
    code, help_text, _ = cli(["serve", "--help"], capsys)
    assert code == 0
    options = {a for a in argv if a.startswith("-")}
    assert options and all(re.search(rf"(^|\s){re.escape(o)}\b", help_text) for o in options), options
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--port") + 1] == "8080"


BLOCKER = textwrap.dedent('''
    """Run `accelc ARGS...` with the given top-level modules unimportable, as in the server image."""
    import sys

    BLOCKED = set(sys.argv[1].split(","))


    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"not in the server image: {name}")
            return None


    sys.meta_path.insert(0, Block())
    from accelc.cli.main import main

    sys.exit(main(sys.argv[2:]))
    ''')


def _compiler_modules() -> set[str]:
    """Top-level modules of the base dependencies that the server extras do not bring."""
    server = {Requirement(r).name.lower().replace("_", "-") for r in SERVER_EXTRAS}
    compiler = {Requirement(r).name.lower().replace("_", "-") for r in PROJECT["dependencies"]} - server
    modules = {m for m, dists in metadata.packages_distributions().items()
               if any(d.lower().replace("_", "-") in compiler for d in dists)}
    assert {"torch", "pydantic", "yaml"} <= modules
    return modules


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


@pytest.mark.parametrize("which", ["Dockerfile CMD", "InferenceService"])
def test_command_serves_readiness_and_metrics_without_the_compiler(which, tmp_path):
    argv, port = list(_commands()[which]), _free_port()
    argv[2] = str(shared_artifact())  # the artifact the container would find at /model or /mnt/models
    argv[argv.index("--host") + 1], argv[argv.index("--port") + 1] = "127.0.0.1", str(port)
    env = {**os.environ, **_env(), **{e["name"]: e["value"] for e in _container().get("env", [])
                                      if which == "InferenceService" and e["name"] != "STORAGE_URI"}}
    (tmp_path / "blocked.py").write_text(BLOCKER)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "blocked.py"), ",".join(sorted(_compiler_modules())),
                             *argv[1:]], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    ready = _container()["readinessProbe"]["httpGet"]["path"]
    metrics = KSERVE["metadata"]["annotations"]["prometheus.kserve.io/path"]
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the server exited:\n{proc.stdout.read()}"
            try:
                status, _ = _get(f"http://127.0.0.1:{port}{ready}")
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not get ready in 60 s"
                time.sleep(0.2)
        assert status == 200
        status, scrape = _get(f"http://127.0.0.1:{port}{metrics}")
        assert status == 200 and re.search(r'^accelc_model_info\{.*name="pair".*\} 1\.0$', scrape, re.M), scrape
    finally:
        proc.terminate()
        proc.wait(timeout=30)
