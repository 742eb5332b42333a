#!/usr/bin/env bash
# The Hub-compatible API's contract suite: starts `quiver serve` on a backend, seeds it through
# the native API, then runs tests/hub/contract.py under each installed huggingface_hub (the
# newest release and the newest 0.x, one venv each), with HF_ENDPOINT pointed at the server.
#
# Usage: tests/hub/run.sh QUIVER_BIN [sqlite|postgres-s3]
#   postgres-s3 needs QUIVER_TEST_POSTGRES_URL and the S3 variables scripts/test.sh exports.
#   HF_VENVS: space-separated venvs (default ".venv-hf-latest .venv-hf-0x", made by scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "$1")
BACKEND=${2:-sqlite}
VENVS=${HF_VENVS:-.venv-hf-latest .venv-hf-0x}
DATA=$(mktemp -d /tmp/quiver-hub-XXXXXX)
PORT=$((19000 + RANDOM % 2000))
BASE="http://127.0.0.1:$PORT"
ARGS=(--data-dir "$DATA")
if [ "$BACKEND" = postgres-s3 ]; then
  DB="hub_contract_$$"
  psql "${QUIVER_TEST_POSTGRES_URL}" -qc "CREATE DATABASE $DB" >/dev/null
  ARGS+=(--database-url "${QUIVER_TEST_POSTGRES_URL%/*}/$DB" --store-url "s3://${QUIVER_TEST_S3_BUCKET}/hub-$$")
fi
"$BIN" serve --bind "127.0.0.1:$PORT" --job-workers 0 "${ARGS[@]}" >"$DATA/serve.log" 2>&1 &
PID=$!
cleanup() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  [ "$BACKEND" = postgres-s3 ] && psql "${QUIVER_TEST_POSTGRES_URL}" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1
  rm -rf "$DATA"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fs "$BASE/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
token() { "$BIN" token create --user "$1" --scope write "${ARGS[@]}" 2>/dev/null | tail -n1; }
ALICE=$(token alice)
BOB=$(token bob)
python3 tests/hub/contract.py seed "$BASE" "$ALICE" "$BOB" "$DATA/state.json"
status=0
for venv in $VENVS; do
  echo "== Hub contract ($BACKEND) with $venv"
  if ! env -u HF_TOKEN HF_ENDPOINT="$BASE" HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HOME="$DATA/hf-home-$(basename "$venv")" "$venv/bin/python" tests/hub/contract.py check "$DATA/state.json"; then
    status=1
  fi
done
if [ "$status" -ne 0 ]; then
  echo "--- server log"; tail -n 40 "$DATA/serve.log"
fi
exit $status
