#!/usr/bin/env bash
# GPU merge benchmark, run ON the GPU machine (see bench/merge/README.md "GPU"): quiver merge
# --device cuda (svd, ties) on the 8 Llama-7B-shaped rank-16 adapters (224 matrices), a profiled
# ties run (kernel time per pass beside the memory floor), the same merges on the machine's CPU
# cores, PEFT add_weighted_adapter (svd, ties_svd) on one layer of the same adapters on the same
# GPU, and the numpy check of the GPU TIES result's truncation against the optimum.
#
# Needs: dist/cuda from scripts/build-cuda.sh; python3 with torch, numpy, safetensors and peft
# (PEFT: carried as a wheel, PYTHONPATH set by the caller). Writes everything to $OUT_DIR
# (default /tmp/qbench-gpu/results); summary.md there.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
QUIVER=${QUIVER:-$ROOT/dist/cuda/quiver}
PY=${PY:-python3}
DATA=${QBENCH_DIR:-/tmp/qbench-gpu}
RES=${OUT_DIR:-$DATA/results}
N=8
RANK=16
DENSITY=0.2
mkdir -p "$RES"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$RES/log.txt" >&2; }

{
  echo "date_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu: /'
  echo "cpus: $(nproc)"
  echo "quiver: sha256 $(sha256sum "$QUIVER" | cut -c1-16)"
  ldd "$QUIVER" | grep -E "openblas|gfortran|not found" | sed 's/^/ldd: /' || true
  "$PY" -c 'import sys,torch,numpy;import peft;print("python:",sys.version.split()[0],"torch",torch.__version__,"peft",peft.__version__,"numpy",numpy.__version__)'
} | tee "$RES/machine.txt"

log "writing adapters"
"$PY" "$HERE/make_adapters.py" "$DATA/full" --n $N --layers 32 --rank $RANK >/dev/null
"$PY" "$HERE/make_adapters.py" "$DATA/layers1" --n $N --layers 1 --rank $RANK >/dev/null
WEIGHTS=$("$PY" -c "print(','.join([str(1/$N)] * $N))")
INPUTS=("$DATA"/full/adapter_*)
# Inputs read once before timing, so every run starts from the page cache.
cat "$DATA"/full/adapter_*/adapter_model.safetensors >/dev/null

run() { # name device extra-args...: wall time around the whole command (reads 1.3 GB, writes output)
  local name=$1 device=$2; shift 2
  rm -rf "$DATA/out_$name"
  log "quiver merge --device $device $*"
  local t0 t1
  t0=$(date +%s.%N)
  if ! "$QUIVER" merge --device "$device" "$@" --rank $RANK --weights "$WEIGHTS" \
    --out "$DATA/out_$name" "${INPUTS[@]}" >"$RES/$name.stdout" 2>"$RES/$name.stderr"; then
    log "FAILED: quiver merge $name"; tail -n 20 "$RES/$name.stderr" >&2; return 0
  fi
  t1=$(date +%s.%N)
  "$PY" -c "import json,sys; print(json.dumps({'run': sys.argv[1], 'wall_seconds': float(sys.argv[3]) - float(sys.argv[2])}))" \
    "$name" "$t0" "$t1" >"$RES/$name.wall.json"
  cp "$DATA/out_$name/merge_report.json" "$RES/$name.report.json"
  tail -n 12 "$RES/$name.stderr" >&2
}

run svd_gpu cuda --method svd
run svd_gpu2 cuda --method svd
run ties_gpu cuda --method ties --density $DENSITY
run ties_gpu2 cuda --method ties --density $DENSITY
QUIVER_GPU_PROFILE=1 run ties_gpu_profile cuda --method ties --density $DENSITY
run dare_ties_gpu cuda --method dare_ties --density $DENSITY
run svd_cpu cpu --method svd
run ties_cpu cpu --method ties --density $DENSITY

log "numpy check of the GPU ties result"
"$PY" "$HERE/check_ties.py" "$DATA/full" "$DATA/out_ties_gpu" \
  model.layers.0.self_attn.q_proj model.layers.0.mlp.down_proj \
  --density $DENSITY --rank $RANK >"$RES/check_ties_gpu.jsonl"
cat "$RES/check_ties_gpu.jsonl" >&2

log "PEFT on the same GPU (one layer)"
"$PY" "$HERE/peft_layer.py" "$DATA/layers1" --device cuda --repeat 2 --types svd,ties_svd \
  --rank $RANK --density $DENSITY >"$RES/peft_gpu.jsonl"
cat "$RES/peft_gpu.jsonl" >&2

"$PY" "$HERE/gpu_summary.py" "$RES" "$DATA" | tee "$RES/summary.md"
