#!/usr/bin/env bash
# Merge-engine benchmark: quiver merge (svd, ties) on 8 Llama-7B-shaped rank-16 adapters (224
# matrices) beside PEFT add_weighted_adapter (svd, ties_svd) on one layer (7 matrices) of the same
# adapters, plus an independent numpy check of quiver's TIES result and its truncation optimality.
# See bench/merge/README.md. Everything large goes under $QBENCH_DIR (default /tmp/qbench).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
QUIVER=${QUIVER:-$ROOT/target/release/quiver}
PY=${PY:-/tmp/peftvenv/bin/python}
DATA=${QBENCH_DIR:-/tmp/qbench}
N=8
RANK=16
DENSITY=0.2
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RES=$DATA/results/$STAMP
mkdir -p "$RES"

[ -x "$QUIVER" ] || { echo "no quiver binary at $QUIVER (cargo build --release -p quiver-api)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time missing: apt-get install -y time" >&2; exit 1; }

log() { echo "== $*" | tee -a "$RES/log.txt" >&2; }

# --- 0. machine -------------------------------------------------------------------------------
{
  echo "date_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"
  echo "nproc: $(nproc)"
  echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
  echo "mem_total: $(free -g | awk '/^Mem:/{print $2}') GiB"
  echo "quiver: $QUIVER ($(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- merge api 2>/dev/null || echo ', merge/api with uncommitted changes'))"
  echo "python: $("$PY" -c 'import sys,torch,peft,numpy;print(sys.version.split()[0],"torch",torch.__version__,"peft",peft.__version__,"numpy",numpy.__version__)')"
} | tee "$RES/machine.txt"

# --- 1. adapters --------------------------------------------------------------------------------
if [ ! -f "$DATA/full/adapter_$(printf %02d $((N - 1)))/adapter_model.safetensors" ]; then
  log "writing $N adapters x 32 layers to $DATA/full"
  "$PY" "$HERE/make_adapters.py" "$DATA/full" --n $N --layers 32 --rank $RANK
fi
if [ ! -f "$DATA/layers1/adapter_$(printf %02d $((N - 1)))/adapter_model.safetensors" ]; then
  log "writing $N adapters x 1 layer to $DATA/layers1"
  "$PY" "$HERE/make_adapters.py" "$DATA/layers1" --n $N --layers 1 --rank $RANK
fi
WEIGHTS=$("$PY" -c "print(','.join(['$(awk "BEGIN{print 1/$N}")'] * $N))")
INPUTS=("$DATA"/full/adapter_*)

# --- 2. quiver, whole set -------------------------------------------------------------------------
run_quiver() { # name, extra args...
  local name=$1; shift
  rm -rf "$DATA/out_$name"
  log "quiver merge $* (whole set, ${#INPUTS[@]} inputs)"
  /usr/bin/time -v "$QUIVER" merge "$@" --rank $RANK --weights "$WEIGHTS" \
    --out "$DATA/out_$name" "${INPUTS[@]}" >"$RES/quiver_$name.stdout" 2>"$RES/quiver_$name.stderr"
  grep -E "^merged|Elapsed|Maximum resident|Exit status" "$RES/quiver_$name.stderr" | tee -a "$RES/log.txt" >&2
}
run_quiver svd --method svd
run_quiver ties --method ties --density $DENSITY

# --- 3. PEFT, one layer ----------------------------------------------------------------------------
log "PEFT add_weighted_adapter svd, ties_svd on one layer (2 threads)"
/usr/bin/time -v "$PY" "$HERE/peft_layer.py" "$DATA/layers1" --types svd,ties_svd --threads 2 \
  --rank $RANK --density $DENSITY >"$RES/peft.jsonl" 2>"$RES/peft.stderr"
cat "$RES/peft.jsonl" >&2
grep -E "Elapsed|Maximum resident|Exit status" "$RES/peft.stderr" | tee -a "$RES/log.txt" >&2

# --- 4. independent TIES check + optimality --------------------------------------------------------
log "numpy TIES check on 3 layer-0 modules (float64 SVD, 2 threads)"
OPENBLAS_NUM_THREADS=2 "$PY" "$HERE/check_ties.py" "$DATA/full" "$DATA/out_ties" \
  model.layers.0.self_attn.q_proj model.layers.0.mlp.gate_proj model.layers.0.mlp.down_proj \
  --density $DENSITY --rank $RANK | tee "$RES/check_ties.jsonl" >&2

# --- 5. summary -----------------------------------------------------------------------------------
"$PY" "$HERE/summarize.py" "$RES" "$DATA" | tee "$RES/summary.md"
echo "results in $RES" >&2
