#!/usr/bin/env bash
# Verify and time CUDA artifacts on a GPU host, against PyTorch eager and torch.compile.
#
# 1. Here (network to PyPI, accelc installed), pack the artifacts with the smallest runtime the GPU
#    host needs: TVM without its 240 MB compiler library, apache-tvm-ffi built for the host's Python,
#    pydantic (accelc's recipe code rebuilds the reference models), and a copy of the repository:
#        bash benchmarks/gpu_check.sh pack OUT [--python 3.12] ARTIFACT...
# 2. Copy OUT to the GPU host (it needs a CUDA build of torch, numpy, ml_dtypes, pyyaml, safetensors,
#    an NVIDIA driver for CUDA 13; no nvcc, NVRTC or TVM compiler) and run:
#        bash OUT/src/benchmarks/gpu_check.sh run OUT
#    It prints one table: verification vs torch per batch size, then p50 latency of accelc, eager and
#    torch.compile. Exit code 0 when every artifact verified, 1 otherwise. A CPU artifact (x86) runs
#    on the CPU against torch on the CPU: a dry run of the whole path on a machine without a GPU.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

pack() {
  local out=$1; shift
  local python=3.12
  if [[ ${1:-} == --python ]]; then python=$2; shift 2; fi
  [[ $# -ge 1 ]] || usage
  local repo; repo=$(cd "$(dirname "$0")/.." && pwd)
  mkdir -p "$out/artifacts" "$out/src"
  for artifact in "$@"; do
    [[ -f $artifact/manifest.json ]] || { echo "not an accelc artifact: $artifact" >&2; exit 2; }
    rm -rf "$out/artifacts/$(basename "$artifact")"
    cp -r "$artifact" "$out/artifacts/"
  done
  # accelc itself, the example models, the recipes (the references are rebuilt from them)
  (cd "$repo" && tar -cf - --exclude=__pycache__ pyproject.toml accelc examples recipes targets \
      benchmarks/common.py benchmarks/gpu_check.py benchmarks/gpu_check.sh) | tar -xf - -C "$out/src"
  local pins; pins=$(python3 -c "from importlib.metadata import version as v
print(f'apache-tvm=={v(\"apache-tvm\")} apache-tvm-ffi=={v(\"apache-tvm-ffi\")} pydantic=={v(\"pydantic\")}',
      f'pydantic-core=={v(\"pydantic-core\")} annotated-types typing-inspection typing-extensions')")
  echo "runtime for Python $python: $pins"
  rm -rf "$out/runtime"
  # shellcheck disable=SC2086
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --python-version "$python" --implementation cp --target "$out/runtime" $pins
  rm -f "$out/runtime/tvm/lib/libtvm_compiler.so"  # the runtime never loads it (TVM_USE_RUNTIME_LIB=1)
  echo "packed $(ls "$out/artifacts" | wc -l) artifact(s) into $out ($(du -sh "$out" | cut -f1));" \
       "TVM runtime: $(du -sh "$out/runtime/tvm" | cut -f1)"
}

run() {
  local dir; dir=$(cd "${1:?usage: gpu_check.sh run OUT}" && pwd); shift
  # libcudart.so.13 for TVM's CUDA runtime: from the CUDA toolkit or the nvidia-cuda-runtime wheel
  local cudart; cudart=$(python3 - <<'EOF'
import glob, os
dirs = ["/usr/local/cuda/lib64", "/usr/local/cuda/lib"]
try:
    import nvidia
    dirs += [d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))]
except ImportError:
    pass
print(":".join(d for d in dirs if glob.glob(os.path.join(d, "libcudart.so.13*"))))
EOF
)
  nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
  LD_LIBRARY_PATH="${cudart}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" TVM_USE_RUNTIME_LIB=1 \
  PYTHONPATH="$dir/runtime:$dir/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONNOUSERSITE=1 \
    python3 "$dir/src/benchmarks/gpu_check.py" --src "$dir/src" "$@" "$dir"/artifacts/*
}

case "${1:-}" in
  pack) shift; [[ $# -ge 2 ]] || usage; pack "$@" ;;
  run) shift; run "$@" ;;
  *) usage ;;
esac
