# The accelc serving image: `accelc serve` with the `runtime` and `serve` extras only (TVM's
# runtime, numpy, starlette, uvicorn, prometheus-client): no torch, no compiler (about 425 MB of
# packages instead of 1.9 GB). Artifacts are built elsewhere with `accelc build`; one gets in by a
# mount or a copy:
#
#   docker build --target runtime -t accelc-serve .                              # generic: mount a model
#   docker run -p 8080:8080 -v "$PWD/build/edu_churn-x86:/model:ro" accelc-serve
#
#   docker build --build-arg ARTIFACT=build/edu_churn-x86 -t accelc-edu-churn .  # the model inside
#   docker run -p 8080:8080 accelc-edu-churn
#
# Either way the server listens on 0.0.0.0:8080 inside the container: POST /predict, KServe v2
# under /v2 (readiness: /v2/health/ready), Prometheus text at /metrics. The artifact must be built
# for the CPU the container runs on (`target:` in the recipe); the server checks it at start.
# docs/deployment.md describes the image and examples/kserve/inferenceservice.yaml runs it on KServe.
ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TVM_USE_RUNTIME_LIB=1
COPY pyproject.toml README.md /tmp/accelc/
COPY accelc /tmp/accelc/accelc
COPY .ci/constraints.txt /tmp/accelc/constraints.txt
# accelc without its dependencies (those are the compiler's: torch, pydantic, ...), then exactly
# the packages of the `runtime` and `serve` extras as pyproject.toml lists them, at the versions
# CI tested; the last line fails the build if torch came in after all.
RUN pip install --no-deps /tmp/accelc \
 && python -c "import tomllib; extras = tomllib.load(open('/tmp/accelc/pyproject.toml', 'rb'))['project']['optional-dependencies']; print('\n'.join(extras['runtime'] + extras['serve']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt -c /tmp/accelc/constraints.txt \
 && rm -rf /tmp/accelc /tmp/requirements.txt \
 && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
# Not root: the server only reads the artifact.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2)"]
CMD ["accelc", "serve", "/model", "--host", "0.0.0.0", "--port", "8080"]

# The default target: the runtime image with one artifact copied in.
FROM runtime AS model
ARG ARTIFACT=build/edu_churn-x86
COPY ${ARTIFACT} /model
