#!/usr/bin/env bash
# Routing quality: every profile recipe of quiver's embedder (release example route_eval) beside
# sentence-transformers + numpy (st_baseline.py) on the same eval set, in one run.
#   bench/route/setup-venv.sh /tmp/routevenv            # once: the reference peer
#   PY=/tmp/routevenv/bin/python bench/route/eval.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-/tmp/routevenv/bin/python}"
MODEL="$(scripts/embedder.sh)"
EVAL=bench/out/route/eval.json
[ -f "$EVAL" ] || "$PY" bench/route/make_eval.py
cargo build --release --quiet -p quiver-retrieve --example route_eval
echo "quiver embedder, every recipe:"
target/release/examples/route_eval "$MODEL" "$EVAL" | tee bench/out/route/quiver_eval.json
echo "sentence-transformers + numpy:"
HF_HUB_OFFLINE=1 "$PY" bench/route/st_baseline.py "$MODEL" "$EVAL" --json bench/out/route/st_baseline.json
