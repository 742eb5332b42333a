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

# The release binary may be rebuilt by someone else while this runs: use a private copy.
cp "$QUIVER" "$DATA/quiver.bench"
ORIG_QUIVER=$QUIVER
QUIVER=$DATA/quiver.bench

log() { echo "== $*" | tee -a "$RES/log.txt" >&2; }

# Other processes' CPU use, sampled each second (bench/cpuwatch.py, if present): the machine is
# shared, and a busy neighbour on 2 cores changes every time here. Each phase records its lines.
export QUIVER_BENCH_RUN="merge-$STAMP-$$"
WATCH=$ROOT/bench/cpuwatch.py
WPID=
if [ -f "$WATCH" ]; then
  python3 "$WATCH" "$QUIVER_BENCH_RUN" $$ >"$RES/cpuwatch.txt" &
  WPID=$!
  trap '[ -n "$WPID" ] && kill "$WPID" 2>/dev/null || true' EXIT
fi
mark() { # phase name: records the cpuwatch line range of a phase (call before and after)
  [ -n "$WPID" ] || return 0
  echo "$1 $(wc -l <"$RES/cpuwatch.txt")" >>"$RES/phases.txt"
}

# --- 0. machine -------------------------------------------------------------------------------
{
  echo "date_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"
  echo "nproc: $(nproc)"
  echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
  echo "mem_total: $(free -g | awk '/^Mem:/{print $2}') GiB"
  echo "quiver: $ORIG_QUIVER, copied to $QUIVER (HEAD $(git -C "$ROOT" rev-parse --short HEAD) \"$(git -C "$ROOT" log -1 --format=%s | cut -c1-60)\"$(git -C "$ROOT" diff --quiet HEAD -- merge api 2>/dev/null || echo ', merge/api with uncommitted changes'))"
  echo "binary: mtime $(date -u -r "$ORIG_QUIVER" '+%Y-%m-%d %H:%M:%S') UTC, sha256 $(sha256sum "$QUIVER" | cut -c1-16)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
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
  mark "quiver_$name:start"
  /usr/bin/time -v "$QUIVER" merge "$@" --rank $RANK --weights "$WEIGHTS" \
    --out "$DATA/out_$name" "${INPUTS[@]}" >"$RES/quiver_$name.stdout" 2>"$RES/quiver_$name.stderr"
  mark "quiver_$name:end"
  grep -E "^merged|Elapsed|Maximum resident|Exit status" "$RES/quiver_$name.stderr" | tee -a "$RES/log.txt" >&2
}
run_quiver svd --method svd
run_quiver ties --method ties --density $DENSITY

# --- 3. PEFT, one layer ----------------------------------------------------------------------------
log "PEFT add_weighted_adapter svd, ties_svd on one layer (2 threads)"
mark peft:start
/usr/bin/time -v "$PY" "$HERE/peft_layer.py" "$DATA/layers1" --types svd,ties_svd --threads 2 \
  --rank $RANK --density $DENSITY >"$RES/peft.jsonl" 2>"$RES/peft.stderr"
mark peft:end
cat "$RES/peft.jsonl" >&2
grep -E "Elapsed|Maximum resident|Exit status" "$RES/peft.stderr" | tee -a "$RES/log.txt" >&2

# --- 4. independent TIES check + optimality --------------------------------------------------------
log "numpy TIES check on 3 layer-0 modules (float64 SVD, 2 threads)"
mark check:start
OPENBLAS_NUM_THREADS=2 "$PY" "$HERE/check_ties.py" "$DATA/full" "$DATA/out_ties" \
  model.layers.0.self_attn.q_proj model.layers.0.mlp.gate_proj model.layers.0.mlp.down_proj \
  --density $DENSITY --rank $RANK | tee "$RES/check_ties.jsonl" >&2
mark check:end

# --- 5. summary -----------------------------------------------------------------------------------
"$PY" "$HERE/summarize.py" "$RES" "$DATA" | tee "$RES/summary.md"
echo "results in $RES" >&2
