#!/usr/bin/env bash
# Routing quality on the committed eval sets (bench/route/eval/): every pooling and recipe of
# quiver's embedder (release example route_eval), card profiles, and in the same run
# sentence-transformers + numpy with the same poolings and recipes (st_eval.py), LoraRetriever's
# centroid among them; prints the markdown tables of docs/routing.md.
#   bench/route/setup-venv.sh /tmp/routevenv            # once: the reference peer
#   PY=/tmp/routevenv/bin/python bench/route/eval.sh
# The eval sets themselves: python3 bench/route/make_eval.py --check (rebuilds them from WordNet
# and compares with bench/route/eval/SHA256SUMS).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-/tmp/routevenv/bin/python}"
MODEL="$(scripts/embedder.sh)"
OUT=bench/out/route
mkdir -p "$OUT"
# The committed splits, and the uncommitted check split (fortunes, see make_eval.py --dev).
[ -f "$OUT/dev/fortunes.json" ] || python3 bench/route/make_eval.py --dev "$OUT/dev"
SPLITS=(bench/route/eval/nouns.json bench/route/eval/verbs.json bench/route/eval/abstract.json
        "$OUT/dev/fortunes.json")
cargo build --release --quiet -p quiver-retrieve --example route_eval
"${CARGO_TARGET_DIR:-target}/release/examples/route_eval" "$MODEL" "${SPLITS[@]}" > "$OUT/quiver_eval.json"
HF_HUB_OFFLINE=1 "$PY" bench/route/st_eval.py "$MODEL" "${SPLITS[@]}" > "$OUT/st_eval.json"
python3 bench/route/report.py "$OUT/quiver_eval.json" "$OUT/st_eval.json"
