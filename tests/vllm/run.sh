#!/usr/bin/env bash
# The vLLM integration's tests (integrations/vllm/tests): starts `quiver serve` on a backend, makes
# two write tokens, then runs pytest in .venv-vllm (quiver-vllm installed editable, plus pytest;
# no vLLM: the tests stub its two modules when it is absent). The tests seed their own adapters
# through the native API and run fake vLLM/SGLang replicas on 127.0.0.1; the server allows
# loopback webhook targets (--webhook-allow-private) so that its deliveries reach `sync`.
#
# Usage: tests/vllm/run.sh QUIVER_BIN [sqlite|postgres-s3] [pytest args...]
#   postgres-s3 needs QUIVER_TEST_POSTGRES_URL and the S3 variables scripts/test.sh exports.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "$1")
BACKEND=${2:-sqlite}
shift $(( $# >= 2 ? 2 : 1 ))
VENV=.venv-vllm
if [ ! -x "$VENV/bin/pytest" ] || ! "$VENV/bin/python" -c "import quiver_vllm" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q pytest==9.2.0
  "$VENV/bin/pip" install -q -e integrations/vllm
fi
DATA=$(mktemp -d /tmp/quiver-vllm-XXXXXX)
PORT=$((23000 + RANDOM % 2000))
BASE="http://127.0.0.1:$PORT"
ARGS=(--data-dir "$DATA")
if [ "$BACKEND" = postgres-s3 ]; then
  DB="vllm_plugin_$$"
  psql "${QUIVER_TEST_POSTGRES_URL}" -qc "CREATE DATABASE $DB" >/dev/null
  ARGS+=(--database-url "${QUIVER_TEST_POSTGRES_URL%/*}/$DB" --store-url "s3://${QUIVER_TEST_S3_BUCKET}/vllm-$$")
fi
"$BIN" serve --bind "127.0.0.1:$PORT" --job-workers 0 --webhook-allow-private "${ARGS[@]}" >"$DATA/serve.log" 2>&1 &
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
echo "== quiver-vllm tests ($BACKEND)"
status=0
QUIVER_TEST_URL="$BASE" QUIVER_TEST_ALICE=$(token alice) QUIVER_TEST_BOB=$(token bob) \
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider integrations/vllm/tests "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- server log"; tail -n 40 "$DATA/serve.log"
fi
exit $status
