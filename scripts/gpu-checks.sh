#!/usr/bin/env bash
# Runs the engine's tests on a GPU machine from a folder made by `scripts/build-cuda.sh --tests`
# (run from the repository root there): the CPU/GPU agreement tests (merge/tests/gpu.rs), then
# the PEFT-parity fixtures, the engine's merge tests and LoRA-LEGO's with the engine on the GPU
# (QUIVER_TEST_DEVICE=cuda), and merge jobs through the service on the GPU
# (scripts/gpu_service_check.py). The test binaries read fixtures by the absolute path of the
# checkout they were built in; QUIVER_BUILD_ROOT names it (default /work/main) and is linked to
# this checkout when it does not exist. Each binary gets BIN_TIMEOUT seconds (default 150). Prints one line per binary; exit status 1 if any failed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIST=${DIST:-$ROOT/dist/cuda}
BUILD_ROOT=${QUIVER_BUILD_ROOT:-/work/main}
if [ ! -e "$BUILD_ROOT" ]; then
  mkdir -p "$(dirname "$BUILD_ROOT")" && ln -s "$ROOT" "$BUILD_ROOT"
fi
status=0
run() { # label, env, binary prefix
  local label=$1 envs=$2 prefix=$3 bin
  bin=$(ls "$DIST"/"$prefix"-* 2>/dev/null | head -1)
  [ -n "$bin" ] || { echo "$label: no $prefix-* in $DIST"; status=1; return; }
  if timeout "${BIN_TIMEOUT:-150}" env $envs "$bin" --test-threads 1 >"${LOG_DIR:-/tmp}/$label.log" 2>&1; then
    echo "$label: $(grep -E '^test result' "${LOG_DIR:-/tmp}/$label.log" | tail -1)"
  else
    echo "$label: FAILED"; grep -E "panicked|FAILED|failed|error" "${LOG_DIR:-/tmp}/$label.log" | head -20
    status=1
  fi
}
run agreement "" gpu
run parity_peft_on_gpu QUIVER_TEST_DEVICE=cuda parity_peft
run merging_on_gpu QUIVER_TEST_DEVICE=cuda merging
run lego_on_gpu QUIVER_TEST_DEVICE=cuda lego
run merge_reference_on_gpu QUIVER_TEST_DEVICE=cuda merge_reference
run engine_unit_tests "" quiver_merge
# Merge jobs through the service on the GPU (a `quiver worker --device cuda`, then `serve
# --job-workers 1 --device cuda`) against `quiver merge --device cpu` on three one-layer adapters.
SVC=$(mktemp -d)
python3 "$ROOT/bench/merge/make_adapters.py" "$SVC/in" --n 3 --layers 1 --rank 16 >/dev/null
if timeout "${BIN_TIMEOUT:-150}" python3 "$ROOT/scripts/gpu_service_check.py" "$DIST/quiver" "$SVC"/in/adapter_* \
  >"${LOG_DIR:-/tmp}/service.log" 2>&1; then
  echo "service_jobs_on_gpu: ok"; cat "${LOG_DIR:-/tmp}/service.log"
else
  echo "service_jobs_on_gpu: FAILED"; tail -20 "${LOG_DIR:-/tmp}/service.log"; status=1
fi
exit $status
