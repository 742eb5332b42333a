#!/usr/bin/env bash
# LoRA-LEGO, ZipLoRA and compression benchmark on one Llama-7B layer (7 modules), see
# bench/compose/README.md. Everything large goes under $QCOMPOSE_DIR (default /tmp/qcompose).
#
#  1. quiver merge --method lora_lego / ziplora (200 and 100 steps) of 4 rank-16 adapters
#  2. quiver compress --mode joint of 100 rank-16 adapters: c=64, c=128, c=128 --diag, c=64 --clusters 4
#  3. quiver compress --mode individual --rank k of each of the 100 adapters, k the largest rank
#     whose total bytes fit in each joint run's bytes_after
#  4. extras: ziplora --steps 50 / 200 again / 400; joint c=64 --iters 150, c=128 --diag --iters 100
#  5. untimed numpy checks (bench/compose/check.py), then the tables (bench/compose/summarize.py)
#
# Before every timed command the script waits until `pgrep -f "bench/merge|peft_layer|qbench"` is
# empty (another benchmark on the same machine), no cargo/rustc runs, and other processes used
# < 20 % of a core for 5 s in a row (bench/cpuwatch.py); the load during each command is recorded. The binary is copied to
# $QCOMPOSE_DIR/bin at the start. Knobs: N (100), SKIP_DIAG=1, SKIP_EXTRAS=1, SKIP_CHECK=1.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
QUIVER_SRC=${QUIVER:-$ROOT/target/release/quiver}
PY=${PY:-/tmp/peftvenv/bin/python}
DATA=${QCOMPOSE_DIR:-/tmp/qcompose}
N=${N:-100}
RANK=16
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RES=$DATA/results/$STAMP
OUTS=$DATA/out
mkdir -p "$RES"

[ -x "$QUIVER_SRC" ] || { echo "no quiver binary at $QUIVER_SRC (cargo build --release -p quiver-api)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time missing: apt-get install -y time" >&2; exit 1; }

log() { echo "== $*" | tee -a "$RES/log.txt" >&2; }

# Concurrent load: bench/cpuwatch.py samples once a second the CPU used by processes that are not
# this script's (descendants of $$ or started with QUIVER_BENCH_RUN), into $RES/cpuwatch.txt.
export QUIVER_BENCH_RUN="compose-$$-$RANDOM"
LOADW=$RES/cpuwatch.txt
"$PY" "$ROOT/bench/cpuwatch.py" "$QUIVER_BENCH_RUN" "$$" >"$LOADW" &
WATCH_PID=$!
trap 'kill $WATCH_PID 2>/dev/null || true' EXIT
sleep 1.2
mark() { wc -l <"$LOADW"; }

# Waits until the merge benchmark (bench/merge|peft_layer|qbench) and cargo/rustc are gone, then
# for 5 s in a row in which other processes used < 20 % of a core (up to WAIT_IDLE_S, 1800 s).
wait_quiet() {
  local said=0 waited=0 quiet
  while pgrep -f "bench/merge|peft_layer|qbench" >/dev/null || pgrep -x "cargo|rustc" >/dev/null; do
    [ $said = 1 ] || { log "waiting for the other benchmark (bench/merge|peft_layer|qbench) or a cargo build to finish"; said=1; }
    sleep 10
  done
  while [ "$waited" -lt "${WAIT_IDLE_S:-1800}" ]; do
    quiet=$(tail -n 5 "$LOADW" | awk '$1 < 20 {n++} END {print n + 0}')
    [ "$quiet" -ge 5 ] && return 0
    [ $said = 1 ] || { log "waiting for other CPU-heavy processes ($(tail -n 1 "$LOADW"))"; said=1; }
    sleep 2; waited=$((waited + 2))
  done
  log "WARNING: the machine is still busy after ${WAIT_IDLE_S:-1800} s; going on"
}

# timed NAME cmd... : /usr/bin/time -v, stdout/stderr into $RES/NAME.{stdout,stderr}; the
# concurrent load during the command into $RES/NAME.load (cpuwatch --summary of its samples).
timed() {
  local name=$1 from to; shift
  wait_quiet
  from=$(mark)
  /usr/bin/time -v "$@" >"$RES/$name.stdout" 2>"$RES/$name.stderr" || {
    echo "FAILED: $*" | tee -a "$RES/log.txt" >&2; tail -5 "$RES/$name.stderr" >&2; return 1; }
  case $name in ind_*) return 0 ;; esac   # the individual loop records its load as a whole
  sleep 1.1
  to=$(mark)
  load_between "$from" "$to" >"$RES/$name.load"
}
load_between() { # from_line to_line
  if [ "$2" -gt "$1" ]; then "$PY" "$ROOT/bench/cpuwatch.py" --summary "$LOADW" "$(($1 + 1))" "$2"; else echo "no samples"; fi
}

# A private copy of the binary, so that a rebuild during the run cannot mix two builds.
wait_quiet
mkdir -p "$DATA/bin"
QUIVER=$DATA/bin/quiver
cp "$QUIVER_SRC" "$QUIVER"

# --- 0. machine -------------------------------------------------------------------------------
{
  echo "date_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"
  echo "nproc: $(nproc)"
  echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
  echo "mem_total: $(free -g | awk '/^Mem:/{print $2}') GiB"
  echo "quiver: copy of $QUIVER_SRC (mtime $(date -u -r "$QUIVER_SRC" '+%Y-%m-%d %H:%M:%S'), sha256 $(sha256sum "$QUIVER" | cut -c1-12), git $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- merge api 2>/dev/null || echo ', merge/api with uncommitted changes'))"
  echo "python: $("$PY" -c 'import sys,numpy;print(sys.version.split()[0],"numpy",numpy.__version__)')"
} | tee "$RES/machine.txt"

# --- 1. adapters (untimed) ------------------------------------------------------------------------
LAST=$DATA/adapters/adapter_$(printf %03d $((N - 1)))/adapter_model.safetensors
if [ ! -f "$LAST" ]; then
  log "writing $N adapters (one 7B layer) to $DATA/adapters"
  "$PY" "$HERE/make_adapters.py" "$DATA/adapters" --n "$N" --rank $RANK
fi
ALL=()
for i in $(seq 0 $((N - 1))); do ALL+=("$DATA/adapters/adapter_$(printf %03d "$i")"); done
FOUR=("${ALL[@]:0:4}")   # adapter_000..003: one from each family
rm -rf "$OUTS"; mkdir -p "$OUTS"

# --- 2. merges of 4 adapters ----------------------------------------------------------------------
log "merge lora_lego (defaults), 4 adapters"
timed merge_lego "$QUIVER" merge --method lora_lego --out "$OUTS/lego" "${FOUR[@]}"
log "merge ziplora (defaults: 200 steps), 4 adapters"
timed merge_zip200 "$QUIVER" merge --method ziplora --out "$OUTS/zip200" "${FOUR[@]}"
log "merge ziplora --steps 100, 4 adapters"
timed merge_zip100 "$QUIVER" merge --method ziplora --steps 100 --out "$OUTS/zip100" "${FOUR[@]}"

# --- 3. joint compression of N adapters ----------------------------------------------------------
JOINTS=(c64 c128)
log "compress joint c=64, $N adapters"
timed joint_c64 "$QUIVER" compress --mode joint --rank 64 --out "$OUTS/joint_c64" "${ALL[@]}"
log "compress joint c=128, $N adapters"
timed joint_c128 "$QUIVER" compress --mode joint --rank 128 --out "$OUTS/joint_c128" "${ALL[@]}"
if [ "${SKIP_DIAG:-0}" != 1 ]; then
  log "compress joint c=128 --diag, $N adapters"
  timed joint_c128diag "$QUIVER" compress --mode joint --rank 128 --diag --out "$OUTS/joint_c128diag" "${ALL[@]}"
  JOINTS+=(c128diag)
fi
log "compress joint c=64 --clusters 4, $N adapters"
timed joint_c64k4 "$QUIVER" compress --mode joint --rank 64 --clusters 4 --out "$OUTS/joint_c64k4" "${ALL[@]}"
JOINTS+=(c64k4)

# --- 4. individual SVD at the same total bytes -----------------------------------------------------
# bytes of one adapter at rank k = k * Σ_modules (d_out + d_in) * 4 (float32 factors)
PER_RANK=$("$PY" - "${ALL[0]}" <<'EOF'
import sys
from safetensors import safe_open
s = 0
with safe_open(sys.argv[1] + "/adapter_model.safetensors", "np") as f:
    for k in f.keys():
        if k.endswith("lora_B.weight"):
            s += f.get_slice(k).get_shape()[0]
        elif k.endswith("lora_A.weight"):
            s += f.get_slice(k).get_shape()[1]
print(s * 4)
EOF
)
KS=()
: >"$RES/individual_for_joint.txt"
for j in "${JOINTS[@]}"; do
  bj=$("$PY" -c "import json;print(json.load(open('$OUTS/joint_$j/compress_report.json'))['bytes_after'])")
  k=$((bj / (N * PER_RANK)))
  echo "$j $bj $k" >>"$RES/individual_for_joint.txt"
  log "joint $j: bytes_after $bj -> individual rank k = $k ($((N * PER_RANK * k)) bytes)"
  if [ "$k" -ge 1 ] && [ "$k" -lt $RANK ] && [[ ! " ${KS[*]-} " =~ " $k " ]]; then KS+=("$k"); fi
done
for k in "${KS[@]}"; do
  log "compress individual --rank $k, each of $N adapters in turn"
  wait_quiet
  lf=$(mark)
  for d in "${ALL[@]}"; do
    name=$(basename "$d")
    timed "ind_k${k}_$name" "$QUIVER" compress --mode individual --rank "$k" --out "$OUTS/ind_k$k/$name" "$d"
  done
  load_between "$lf" "$(mark)" >"$RES/ind_k$k.load"
done

# --- 5. extras: ZipLoRA step scaling and repeat, joint with more iterations -----------------------
if [ "${SKIP_EXTRAS:-0}" != 1 ]; then
  log "extra: merge ziplora --steps 50, 4 adapters"
  timed extra_zip50 "$QUIVER" merge --method ziplora --steps 50 --out "$OUTS/extra_zip50" "${FOUR[@]}"
  log "extra: merge ziplora (defaults: 200 steps) again, 4 adapters"
  timed extra_zip200b "$QUIVER" merge --method ziplora --out "$OUTS/extra_zip200b" "${FOUR[@]}"
  log "extra: merge ziplora --steps 400, 4 adapters"
  timed extra_zip400 "$QUIVER" merge --method ziplora --steps 400 --out "$OUTS/extra_zip400" "${FOUR[@]}"
  log "extra: compress joint c=64 --iters 150, $N adapters"
  timed extra_joint_c64_i150 "$QUIVER" compress --mode joint --rank 64 --iters 150 --out "$OUTS/extra_joint_c64_i150" "${ALL[@]}"
  if [ "${SKIP_DIAG:-0}" != 1 ]; then
    log "extra: compress joint c=128 --diag --iters 100, $N adapters"
    timed extra_joint_c128diag_i100 "$QUIVER" compress --mode joint --rank 128 --diag --iters 100 --out "$OUTS/extra_joint_c128diag_i100" "${ALL[@]}"
  fi
fi

# --- 6. checks (untimed) and summary ---------------------------------------------------------------
if [ "${SKIP_CHECK:-0}" != 1 ]; then
  wait_quiet   # the checks use both cores: do not disturb the other benchmark either
  log "numpy checks (untimed)"
  for j in "${JOINTS[@]}"; do
    for m in adapter_000 adapter_001; do
      "$QUIVER" compress --extract "$m" --from "$OUTS/joint_$j" --out "$OUTS/extract_${j}_$m" >/dev/null
    done
  done
  OPENBLAS_NUM_THREADS=2 "$PY" "$HERE/check.py" "$DATA" "$OUTS" "${JOINTS[@]}" -- "${KS[@]}" >"$RES/check.txt" 2>&1 \
    || log "WARNING: check.py failed (see $RES/check.txt)"
  cat "$RES/check.txt" >&2
fi
NOW=$(sha256sum "$QUIVER_SRC" | cut -c1-12)
grep -q "sha256 $NOW" "$RES/machine.txt" || log "note: $QUIVER_SRC was rebuilt during the run (now sha256 $NOW); this run used the copy taken at its start"
"$PY" "$HERE/summarize.py" "$RES" "$OUTS" "$N" | tee "$RES/summary.md"
echo "results in $RES" >&2
