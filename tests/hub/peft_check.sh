#!/usr/bin/env bash
# PEFT through Quiver's Hub API (tests/hub/peft_check.py): starts `quiver serve` on SQLite in a
# temporary directory and runs the check with a python that has torch and peft.
# Usage: tests/hub/peft_check.sh QUIVER_BIN PYTHON
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "$1")
PY=$2
DATA=$(mktemp -d /tmp/quiver-peft-XXXXXX)
PORT=$((21000 + RANDOM % 2000))
"$BIN" serve --bind "127.0.0.1:$PORT" --job-workers 0 --data-dir "$DATA" >"$DATA/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
TOKEN=$("$BIN" token create --user alice --scope write --data-dir "$DATA" 2>/dev/null | tail -n1)
HF_ENDPOINT="http://127.0.0.1:$PORT" HF_TOKEN="$TOKEN" HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1 \
  HF_HOME="$DATA/hf-home" "$PY" tests/hub/peft_check.py
