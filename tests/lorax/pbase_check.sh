#!/usr/bin/env bash
# LoRAX's own pbase and s3 source code against a live Quiver on S3 (docs/serving.md): starts
# `quiver serve` (SQLite + the S3 bucket of the test environment, AWS_* / QUIVER_TEST_S3_BUCKET
# as in scripts/test.sh), uploads two versions of a private adapter, then runs
# tests/lorax/pbase_check.py, which imports `lorax_server.utils.sources` from a LoRAX checkout you
# give (nothing of LoRAX is in this repository; it is read in place, in a temporary package of its
# five source files) with a python that has boto3, requests, loguru and huggingface_hub<1.
# Usage: tests/lorax/pbase_check.sh QUIVER_BIN LORAX_CHECKOUT PYTHON
# Checked with predibase/lorax a7394ba386ece427d5a6125b419aa38b46d966dc.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "$1")
LORAX=$(realpath "$2")
PY=$3
: "${QUIVER_TEST_S3_BUCKET:?set the S3 test environment (AWS_ENDPOINT_URL, credentials, bucket)}"
DATA=$(mktemp -d /tmp/quiver-lorax-XXXXXX)
PORT=$((23000 + RANDOM % 2000))
STORE="s3://$QUIVER_TEST_S3_BUCKET/lorax-check-$(basename "$DATA")"
DB="sqlite://$DATA/quiver.db"
TOKEN=$("$BIN" token create --user alice --scope write --database-url "$DB" --store-url "$STORE" 2>/dev/null | tail -n1)
"$BIN" serve --bind "127.0.0.1:$PORT" --job-workers 0 --database-url "$DB" --store-url "$STORE" \
  >"$DATA/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
Q="http://127.0.0.1:$PORT"
curl -fs -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"owner":"alice","name":"chat","base_model":"quiver-test/tiny-llama","private":true}' \
  "$Q/api/v1/adapters" >/dev/null
for fixture in plain_r8 rslora_r16; do
  F=tests/fixtures/peft/$fixture
  curl -fs -H "Authorization: Bearer $TOKEN" \
    -F "c=@$F/adapter_config.json;filename=adapter_config.json" \
    -F "w=@$F/adapter_model.safetensors;filename=adapter_model.safetensors" \
    "$Q/api/v1/adapters/alice/chat/versions" >/dev/null
done
curl -fs -X PUT -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"version":1}' "$Q/api/v1/adapters/alice/chat/refs/prod" >/dev/null
PKG="$DATA/lorax/lorax_server/utils/sources"
mkdir -p "$PKG"
touch "$DATA/lorax/lorax_server/__init__.py" "$DATA/lorax/lorax_server/utils/__init__.py"
cp "$LORAX"/server/lorax_server/utils/sources/{__init__,hub,local,s3,source}.py "$PKG/"
env -u PREDIBASE_MODEL_BUCKET -u PREDIBASE_MODEL_FOLDER \
  PREDIBASE_GATEWAY_ENDPOINT="$Q" S3_ENDPOINT_URL="$AWS_ENDPOINT_URL" QUIVER_TOKEN="$TOKEN" \
  HF_HOME="$DATA/hf-home" PYTHONPATH="$DATA/lorax" "$PY" tests/lorax/pbase_check.py
