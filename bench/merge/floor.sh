#!/usr/bin/env bash
# Merge time and memory of two builds side by side, in one run: `quiver merge` of the 8
# Llama-7B-shaped rank-16 adapters (make_adapters.py) by svd, linear --rank, ties and dare_ties
# (density 0.2, rank 16, weights 1/8), each build under /usr/bin/time -v, alternating builds per
# method so load drifts hit both. Prints wall and engine seconds, peak RSS (time's, and the
# report's peak_rss_bytes where the build writes it) and the new/base ratios; then the numpy
# check of the new ties result (check_ties.py: TIES recomputed in float64 from the inputs, the
# optimal rank-16 error beside quiver's).
#
#   QUIVER_BASE=/path/to/old/quiver QUIVER=target/release/quiver bench/merge/floor.sh
#   METHODS="ties" REPEAT=2 bench/merge/floor.sh
#
# Needs: /usr/bin/time, python3 with numpy and safetensors ($PY), ~1.3 GB under $QBENCH_DIR for
# the adapters plus the outputs.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
QUIVER=${QUIVER:-$ROOT/target/release/quiver}
QUIVER_BASE=${QUIVER_BASE:-}
PY=${PY:-python3}
DATA=${QBENCH_DIR:-/tmp/qbench}
METHODS=${METHODS:-svd linear ties dare_ties}
REPEAT=${REPEAT:-1}
N=8
RANK=16
DENSITY=0.2

[ -x /usr/bin/time ] || { echo "/usr/bin/time missing: apt-get install -y time" >&2; exit 1; }
mkdir -p "$DATA"
# Private copies: a rebuild during the run must not change the binaries under test.
cp "$QUIVER" "$DATA/quiver.new"
BUILDS=(new)
if [ -n "$QUIVER_BASE" ]; then
  cp "$QUIVER_BASE" "$DATA/quiver.base"
  BUILDS=(base new)
fi
if [ ! -f "$DATA/full/adapter_0$((N - 1))/adapter_model.safetensors" ]; then
  "$PY" "$HERE/make_adapters.py" "$DATA/full" --n $N --layers 32 --rank $RANK
fi
INPUTS=("$DATA"/full/adapter_*)
WEIGHTS=$(python3 -c "print(','.join(['0.125'] * $N))")
RES=$DATA/floor-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RES"
{
  echo "date_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"
  echo "cpu: $(nproc) × $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
  echo "new: $QUIVER (HEAD $(git -C "$ROOT" rev-parse --short HEAD)), sha256 $(sha256sum "$DATA/quiver.new" | cut -c1-16)"
  [ -n "$QUIVER_BASE" ] && echo "base: $QUIVER_BASE, sha256 $(sha256sum "$DATA/quiver.base" | cut -c1-16)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$RES/machine.txt"

args_of() { # method -> flags
  case $1 in
    svd) echo "--method svd" ;;
    linear) echo "--method linear" ;;
    ties) echo "--method ties --density $DENSITY" ;;
    dare_ties) echo "--method dare_ties --density $DENSITY" ;;
    *) echo "unknown method $1" >&2; exit 2 ;;
  esac
}

echo "| method | build | wall s | engine s | peak RSS MB (time) | peak RSS MB (report) | largest rel. error |" >"$RES/table.md"
echo "|---|---|---:|---:|---:|---:|---:|" >>"$RES/table.md"
for method in $METHODS; do
  for rep in $(seq 1 "$REPEAT"); do
    for build in "${BUILDS[@]}"; do
      out="$DATA/out_${method}_${build}"
      rm -rf "$out"
      # shellcheck disable=SC2046
      /usr/bin/time -v "$DATA/quiver.$build" merge $(args_of "$method") --rank $RANK \
        --weights "$WEIGHTS" --out "$out" "${INPUTS[@]}" \
        >"$RES/${method}_${build}_$rep.stdout" 2>"$RES/${method}_${build}_$rep.stderr"
      python3 - "$RES/${method}_${build}_$rep.stderr" "$out/merge_report.json" "$method" "$build" >>"$RES/table.md" <<'EOF'
import json, re, sys
err, report, method, build = sys.argv[1:]
text = open(err).read()
def field(pattern):
    m = re.search(pattern, text)
    return m.group(1) if m else None
wall = field(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([0-9:.]+)")
parts = [float(p) for p in wall.split(":")]
secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
rss_kb = int(field(r"Maximum resident set size \(kbytes\): (\d+)"))
r = json.load(open(report))
peak = r.get("peak_rss_bytes")
worst = max((m["relative_error"] for m in r["modules"]), default=0.0)
print(f"| {method} | {build} | {secs:.2f} | {r['seconds']:.2f} | {rss_kb * 1024 / 1e6:.0f} | "
      f"{peak / 1e6 if peak else float('nan'):.0f} | {worst:.6f} |")
EOF
      tail -1 "$RES/table.md" >&2
    done
  done
done

# Ratios new/base per method (means over repeats).
python3 - "$RES/table.md" <<'EOF' | tee "$RES/ratios.md"
import sys, collections
rows = [l.strip("|\n").split("|") for l in open(sys.argv[1]) if l.startswith("| ") and "---" not in l][1:]
acc = collections.defaultdict(list)
for r in rows:
    method, build = r[0].strip(), r[1].strip()
    acc[(method, build)].append([float(x) for x in r[2:6]])
mean = lambda xs: [sum(c) / len(c) for c in zip(*xs)]
print("| method | wall new/base | engine new/base | peak RSS (time) new/base |")
print("|---|---:|---:|---:|")
for method in dict.fromkeys(k[0] for k in acc):
    if (method, "base") in acc and (method, "new") in acc:
        b, n = mean(acc[(method, "base")]), mean(acc[(method, "new")])
        print(f"| {method} | {n[0] / b[0]:.3f} | {n[1] / b[1]:.3f} | {n[2] / b[2]:.3f} |")
EOF
cat "$RES/table.md"

if [[ " $METHODS " == *" ties "* ]] && "$PY" -c "import numpy, safetensors" 2>/dev/null; then
  echo "numpy check of the new ties output (float64, 3 modules of layer 0):"
  OPENBLAS_NUM_THREADS=2 "$PY" "$HERE/check_ties.py" "$DATA/full" "$DATA/out_ties_new" \
    model.layers.0.self_attn.q_proj model.layers.0.mlp.gate_proj model.layers.0.mlp.down_proj \
    --density $DENSITY --rank $RANK | tee "$RES/check_ties.jsonl"
fi
echo "results in $RES" >&2
