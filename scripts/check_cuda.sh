#!/usr/bin/env bash
# The `cuda` build: compiles sw2s with `--features cuda` (candle's CUDA backend) and, where a
# GPU answers, checks every catalogue model on it — parity with sw2s's own CPU path and speed
# beside PyTorch on the same GPU (scripts/bench_models.sh with SW2S_DEVICE=cuda:0).
#
#   scripts/check_cuda.sh [DATA.jsonl] [LIMIT]
#
# The CUDA compiler is `nvcc` from PATH or $CUDA_HOME/bin when there is one; otherwise NVIDIA's
# pip packages of CUDA 13.4 (nvcc, headers, cuBLAS, cuRAND, NVRTC) in a virtual environment
# this script owns ($SW2S_CUDA_VENV). The GPU's compute capability comes from nvidia-smi, else
# from CUDA_COMPUTE_CAP (default 90: H100/H200). Without a GPU the script stops after
# `cargo check` and `cargo clippy` of the feature: linking needs the driver's libcuda.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/datasets/sst2/validation.jsonl}"
limit="${2:-256}"
venv="${SW2S_CUDA_VENV:-$HOME/.cache/sw2s/cuda-venv}"

if ! command -v nvcc >/dev/null && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
  export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
  export PATH="$CUDA_HOME/bin:$PATH"
fi
if ! command -v nvcc >/dev/null; then
  if [ ! -x "$venv/bin/python" ]; then
    echo "making the CUDA toolkit's virtual environment in $venv (once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --disable-pip-version-check -q \
      nvidia-cuda-nvcc==13.4.92 nvidia-cuda-crt==13.4.92 nvidia-nvvm==13.4.92 \
      nvidia-cuda-runtime==13.4.92 nvidia-cuda-nvrtc==13.4.92 nvidia-cuda-cccl==13.3.5.0.6 \
      nvidia-cublas==13.6.2.16 nvidia-curand==10.4.4.72 \
      || { rm -rf "$venv"; exit 1; }
  fi
  root=$("$venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
  export CUDA_HOME="$root" CUDA_PATH="$root" PATH="$root/bin:$PATH"
fi
echo "nvcc: $(nvcc --version | tail -1)"

gpu=""
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -1)
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$(echo "$gpu" | cut -d, -f2 | tr -d ' .')}"
  echo "GPU: $gpu"
else
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  echo "no GPU answers nvidia-smi: compile checks only (compute capability $CUDA_COMPUTE_CAP)"
fi

# candle's kernels compile once per target dir; keep it apart from the CPU build's.
export CARGO_TARGET_DIR="${SW2S_CUDA_TARGET_DIR:-${CARGO_TARGET_DIR:-target}-cuda}"
cargo check --locked --features cuda --all-targets
cargo clippy --locked --features cuda --all-targets -- -D warnings
if [ -z "$gpu" ]; then
  echo "the cuda feature compiles and is clippy-clean; run this on a GPU machine to measure it"
  exit 0
fi

# The linker wants unversioned names; pip and the driver ship versioned ones.
libs="$CARGO_TARGET_DIR/cuda-libs"
mkdir -p "$libs"
for name in cublas cublasLt curand nvrtc cudart; do
  found=$(find "$CUDA_HOME" -name "lib$name.so*" 2>/dev/null | sort | head -1)
  [ -n "$found" ] && ln -sf "$found" "$libs/lib$name.so"
done
driver=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
[ -n "$driver" ] && ln -sf "$driver" "$libs/libcuda.so"
export LIBRARY_PATH="$libs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$libs:$(dirname "$(find "$CUDA_HOME" -name 'libcublas.so*' | head -1)")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

SW2S_DEVICE="${SW2S_DEVICE:-cuda:0}" CARGO_FEATURES=cuda scripts/bench_models.sh "$data" "$limit"
