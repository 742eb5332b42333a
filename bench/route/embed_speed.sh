#!/usr/bin/env bash
# The embedder alone (no HTTP) beside sentence-transformers' encode, in one run on the same
# model files and texts: one short prompt (p50 of 200) and 256 texts in one call (prompts/s,
# best of 3; ST with batch_size=64), both with 2 threads. Prints both and the ratios.
#   bench/route/setup-venv.sh /tmp/routevenv            # once: the reference peer
#   PY=/tmp/routevenv/bin/python bench/route/embed_speed.sh [TEXTS.json]
# TEXTS.json defaults to bench/out/route/speed.json (made by make_speed_set.py when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-/tmp/routevenv/bin/python}"
MODEL="$(scripts/embedder.sh)"
TEXTS="${1:-bench/out/route/speed.json}"
[ -f "$TEXTS" ] || python3 bench/route/make_speed_set.py --out "$TEXTS"
cargo build --release --quiet -p quiver-retrieve --example embed_bench
ours="$(RAYON_NUM_THREADS=2 "${CARGO_TARGET_DIR:-target}"/release/examples/embed_bench "$MODEL" "$TEXTS")"
theirs="$(HF_HUB_OFFLINE=1 "$PY" bench/route/st_encode_speed.py "$MODEL" "$TEXTS")"
echo "quiver embedder:       $ours"
echo "sentence-transformers: $theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
q, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"single prompt p50: {q['single_p50_ms']:.2f} ms vs {s['single_p50_ms']:.2f} ms -> "
      f"{q['single_p50_ms'] / s['single_p50_ms']:.2f}x the time")
print(f"256 texts: {q['batch256_prompts_per_s']:.1f} vs {s['batch256_prompts_per_s']:.1f} prompts/s -> "
      f"{q['batch256_prompts_per_s'] / s['batch256_prompts_per_s']:.2f}x the throughput "
      f"(texts: {s['mean_chars']:.0f} chars, {s['mean_tokens']:.0f} tokens on average)")
PY
