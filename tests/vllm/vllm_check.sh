#!/usr/bin/env bash
# quiver-vllm against the real vllm from PyPI (tests/vllm/vllm_check.py); outside scripts/test.sh
# because vLLM and torch are gigabytes. Starts `quiver serve` on SQLite in a temporary directory,
# seeds a rank-8 and a rank-32 adapter, runs the check with vLLM's own plugin loader and LoRA
# validation on CPU.
#
# Usage: tests/vllm/vllm_check.sh QUIVER_BIN [PYTHON]
#   PYTHON: an interpreter with vllm installed (quiver-vllm is installed into it, no deps).
#   Without it, makes .venv-vllm-real: `pip install vllm==$VLLM_VERSION`; when that cannot
#   resolve (its CUDA-only pins, e.g. flashinfer-python, are missing on some indexes) it falls
#   back to `pip install --no-deps vllm` plus the modules the checked code imports.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "$1")
PY=${2:-}
VLLM_VERSION=${VLLM_VERSION:-0.34.0}
if [ -z "$PY" ]; then
  VENV=.venv-vllm-real
  PY=$VENV/bin/python
  if ! "$PY" -c "import vllm" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    if ! "$VENV/bin/pip" install -q "vllm==$VLLM_VERSION"; then
      echo "full install failed; installing vllm without dependencies plus what the check imports"
      "$VENV/bin/pip" install -q --no-deps "vllm==$VLLM_VERSION"
      "$VENV/bin/pip" install -q torch==2.14.0 msgspec regex pydantic cachetools psutil "transformers<5.23" \
        huggingface_hub safetensors numpy filelock pyyaml typing_extensions cloudpickle pyzmq \
        urllib3 aiohttp requests pillow pybase64 cbor2 uvloop py-cpuinfo prometheus_client \
        llguidance xgrammar einops
    fi
  fi
fi
"$PY" -m pip install -q --no-deps -e integrations/vllm
DATA=$(mktemp -d /tmp/quiver-vllmcheck-XXXXXX)
PORT=$((25000 + RANDOM % 2000))
BASE="http://127.0.0.1:$PORT"
"$BIN" serve --bind "127.0.0.1:$PORT" --job-workers 0 --data-dir "$DATA" >"$DATA/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -fs "$BASE/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
TOKEN=$("$BIN" token create --user alice --scope write --data-dir "$DATA" 2>/dev/null | tail -n1)
python3 - "$BASE" "$TOKEN" <<'PY'
import sys
sys.path.insert(0, "integrations/vllm/tests")
from quiver_seed import create_adapter, set_alias, upload
base, tok = sys.argv[1], sys.argv[2]
create_adapter(base, tok, "alice", "small-lora")
upload(base, tok, "alice", "small-lora", r=8, seed=1)
set_alias(base, tok, "alice", "small-lora", "prod", 1)
create_adapter(base, tok, "alice", "big-lora")
upload(base, tok, "alice", "big-lora", r=32, seed=2)
PY
VLLM_PLUGINS=quiver QUIVER_URL="$BASE" QUIVER_TOKEN="$TOKEN" QUIVER_CACHE_DIR="$DATA/cache" \
  QUIVER_MAX_LORA_RANK=512 CHECK_SMALL=alice/small-lora CHECK_BIG=alice/big-lora \
  CHECK_BASE_MODEL=quiver-test/tiny-llama VLLM_TARGET_DEVICE=cpu "$PY" tests/vllm/vllm_check.py
