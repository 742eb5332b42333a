#!/usr/bin/env bash
# Type-checks the `cuda` build — the GPU engine (merge/src/gpu/, everything behind
# `cfg(feature = "cuda")`), `quiver merge --device cuda` and the GPU tests (merge/tests/gpu.rs) —
# on a machine with no GPU and no CUDA toolkit, as the test command does (scripts/test.sh).
#
# THIS TYPE-CHECKS; IT BUILDS NOTHING THAT RUNS. `cargo check` does not link, so kernel binaries
# are not needed, only build scripts that succeed. candle-kernels' build script runs nvcc on every
# kernel of candle (~20 min on 2 cores): it gets a stand-in `nvcc` (written below) that answers
# `--version` like CUDA 13.0's and, for each compile, creates the requested outputs (PTX and
# objects empty, libraries empty archives) without compiling anything. Quiver's own kernels
# (merge/src/gpu/kernels.cu, one file, ~1 s) are compiled to PTX by a real nvcc (merge/build.rs
# takes it from QUIVER_NVCC), so their CUDA C++ is checked too:
#   QUIVER_CHECK_NVCC   a real nvcc for them; default the `nvcc` on the PATH, else CUDA 13.0's nvcc
#                       from PyPI's NVIDIA wheels, installed once into $TARGET/nvcc-venv (~100 MB
#                       download, ~280 MB on disk); `none`: the stand-in for them too (offline)
#   QUIVER_CUDA_CHECK_TARGET  cargo target dir (default target/check-cuda)
#   QUIVER_CUDA_CHECK_API=1   also check quiver-api with `cuda` (it reaches the GPU only through
#                       `quiver_merge::gpu`, the same calls in both builds; checking it re-checks the whole
#                       service's dependencies, ~7 of the cold run's ~12 CPU-minutes, so the test
#                       command leaves it out)
# The real build, with the real nvcc for everything, is scripts/build-cuda.sh (docs/gpu.md), run on
# a GPU by scripts/gpu-checks.sh; neither is part of the test command.
#
# Its own target directory, so the empty kernels never reach another build (candle-kernels' build
# cache would take them for compiled ones) and the CPU build's directory is left alone. The
# stand-in lives at a fixed path inside it: the build scripts rerun when NVCC changes, so a fresh
# path each time would re-check candle and everything above it. Extra arguments go to `cargo check`.
# Cost on 2 cores (docs/gpu.md, "Type-checking without a GPU"): cold ~13 min wall under load
# (11.7 CPU-min, nvcc wheels included), warm 1-12 s; ~1.8 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${QUIVER_CUDA_CHECK_TARGET:-target/check-cuda}
API=""
[ "${QUIVER_CUDA_CHECK_API:-0}" = "1" ] && API="-p quiver-api"
STANDIN="$TARGET/stand-in-cuda"
mkdir -p "$STANDIN/bin" "$STANDIN/include"
cat > "$STANDIN/bin/nvcc.new" <<'NVCC'
#!/usr/bin/env bash
# Stand-in nvcc of scripts/check-cuda.sh: creates the outputs a compile asks for, compiles nothing.
set -euo pipefail
case "${1:-}" in
  --version)
    # The layout cudarc and cudaforge parse (the version on the 4th line).
    printf '%s\n' 'nvcc: NVIDIA (R) Cuda compiler driver' \
      'Copyright (c) 2005-2025 NVIDIA Corporation' \
      'Built on (stand-in of scripts/check-cuda.sh: compiles nothing)' \
      'Cuda compilation tools, release 13.0, V13.0.88' \
      'Build cuda_13.0.r13.0/stand-in'
    exit 0 ;;
  --list-gpu-code) echo sm_90; exit 0 ;;
esac
out="" dir="." lib=0 ptx=0 srcs=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift ;;
    --output-directory|-odir) dir="$2"; shift ;;
    --lib|-lib) lib=1 ;;
    --ptx|-ptx) ptx=1 ;;
    *.cu) srcs+=("$1") ;;
  esac
  shift
done
note='// stand-in of scripts/check-cuda.sh: not compiled, type-checking only'
if [ -n "$out" ]; then
  if [ "$lib" = 1 ]; then printf '!<arch>\n' > "$out"; elif [ "$ptx" = 1 ]; then echo "$note" > "$out"; else : > "$out"; fi
elif [ "$ptx" = 1 ]; then
  for s in "${srcs[@]}"; do b=$(basename "$s"); echo "$note" > "$dir/${b%.cu}.ptx"; done
else
  echo "stand-in nvcc: no output asked for in: $*" >&2; exit 1
fi
NVCC
chmod +x "$STANDIN/bin/nvcc.new"
# Replaced only when its text changed, so the build scripts' inputs stay the same between runs.
if cmp -s "$STANDIN/bin/nvcc.new" "$STANDIN/bin/nvcc"; then rm "$STANDIN/bin/nvcc.new"; else mv "$STANDIN/bin/nvcc.new" "$STANDIN/bin/nvcc"; fi

ROOT="$(cd "$STANDIN" && pwd)"

# A real nvcc for Quiver's own kernels.
NVCC_VENV="$TARGET/nvcc-venv"
REAL=${QUIVER_CHECK_NVCC:-$(command -v nvcc || true)}
if [ -z "$REAL" ]; then
  if ! compgen -G "$NVCC_VENV/lib/python3*/site-packages/nvidia/cu13/bin/nvcc" > /dev/null; then
    echo "installing CUDA 13.0's nvcc (PyPI wheels) into $NVCC_VENV"
    python3 -m venv "$NVCC_VENV"
    "$NVCC_VENV/bin/pip" install --quiet --disable-pip-version-check nvidia-cuda-nvcc==13.0.88 \
      nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
  fi
  REAL=$(compgen -G "$NVCC_VENV/lib/python3*/site-packages/nvidia/cu13/bin/nvcc" | head -n1)
  REAL="$(cd "$(dirname "$REAL")" && pwd)/nvcc"
elif [ "$REAL" = none ]; then
  echo "QUIVER_CHECK_NVCC=none: merge/src/gpu/kernels.cu is not compiled either" >&2
  REAL="$ROOT/bin/nvcc"
fi

# NVCC: cudaforge (candle-kernels) takes it first; QUIVER_NVCC: merge/build.rs takes it first.
# CUDARC_CUDA_VERSION pins the CUDA API cudarc compiles against to 13.0, the toolchain of
# scripts/build-cuda.sh (instead of asking `nvcc --version`). CUDA_COMPUTE_CAP: the PTX target
# (cudaforge would otherwise ask nvidia-smi). The CUDA_* roots point at the stand-in so that no
# toolkit elsewhere on the machine is mixed in.
env PATH="$ROOT/bin:$PATH" NVCC="$ROOT/bin/nvcc" QUIVER_NVCC="$REAL" CUDARC_CUDA_VERSION=13000 \
  CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDA_HOME="$ROOT" CUDA_PATH="$ROOT" CUDA_ROOT="$ROOT" \
  CUDA_TOOLKIT_ROOT_DIR="$ROOT" CARGO_TARGET_DIR="$TARGET" \
  cargo check --locked --features cuda -p quiver-merge $API --all-targets "$@"
