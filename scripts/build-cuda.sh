#!/usr/bin/env bash
# Builds `quiver` with the `cuda` feature for Hopper (sm_90) on a machine with no GPU and no CUDA
# toolkit, and lays out a folder that runs on a GPU machine with nothing else installed there:
#
#   dist/cuda/quiver                    the binary (RPATH $ORIGIN/lib)
#   dist/cuda/lib/libopenblas.so.0 …    OpenBLAS and the Fortran runtime it needs, found through the RPATH
#   dist/cuda/<test binaries>           with --tests: the `cuda` agreement tests, same RPATH
#
# The CUDA libraries themselves (libcuda, cuBLAS, cuRAND) are NOT shipped: they come from the GPU
# machine's driver and CUDA 13 install, and cudarc loads them at run time.
#
# Usage: scripts/build-cuda.sh [--tests]
#   QUIVER_CUDA_TOOLCHAIN  where the CUDA 13.0 toolchain from PyPI wheels goes (default /work/cuda-tc,
#                          prepared once by shared/gpu/setup-cuda-toolchain.sh, ~2 GB)
#   QUIVER_CUDA_TARGET     cargo target dir of this build (default target-cuda; kept apart from the
#                          CPU build so neither invalidates the other)
#   CUDA_COMPUTE_CAP       default 90 (H100/H200)
# Cold: ~25 min on 2 cores (most of it nvcc compiling candle's kernels); after that only the
# changed crates rebuild. Needs: the Debian packages libopenblas-dev and gfortran's runtime
# (libgfortran5), which any machine that builds the CPU binary already has.
set -euo pipefail
cd "$(dirname "$0")/.."
TESTS=0
[ "${1:-}" = "--tests" ] && TESTS=1
TC=${QUIVER_CUDA_TOOLCHAIN:-/work/cuda-tc}
SETUP=${QUIVER_CUDA_SETUP:-../shared/gpu/setup-cuda-toolchain.sh}
if [ ! -f "$TC/env.sh" ]; then
  [ -x "$SETUP" ] || { echo "no CUDA toolchain at $TC and no $SETUP to make one" >&2; exit 1; }
  cargo fetch
  "$SETUP" "$TC"
fi
# shellcheck disable=SC1091
source "$TC/env.sh"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${QUIVER_CUDA_TARGET:-target-cuda}
# The binary finds the shipped OpenBLAS beside it, wherever the folder is copied.
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,-rpath,\$ORIGIN/lib"
cargo build --release --features cuda -p quiver-api --bin quiver
OUTDIR=dist/cuda
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR/lib"
cp "$CARGO_TARGET_DIR/release/quiver" "$OUTDIR/"
if [ "$TESTS" = 1 ]; then
  # The agreement tests and the engine's own tests, built with the feature; printed paths are the
  # executables cargo made (the JSON lines of --message-format).
  cargo test --release --features cuda -p quiver-merge --no-run --message-format json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except ValueError: continue
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]!=["bin"]:
        print(m["executable"])' | while read -r exe; do cp "$exe" "$OUTDIR/"; done
fi
# Ship every non-system library the binary needs that a bare GPU machine lacks (OpenBLAS and its
# Fortran runtime); the driver and CUDA libraries are left to the GPU machine.
for lib in $(ldd "$OUTDIR/quiver" | awk '/=> \//{print $3}'); do
  case "$(basename "$lib")" in
    libopenblas*|libgfortran*|libquadmath*|liblapack*|libblas*) cp -L "$lib" "$OUTDIR/lib/" ;;
  esac
done
ls -la "$OUTDIR" "$OUTDIR/lib"
echo "built $OUTDIR (run it as $OUTDIR/quiver; the folder can be copied anywhere)"
