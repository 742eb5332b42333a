#!/usr/bin/env bash
# The cost of authorisation and audit on the hot paths, two builds side by side in one run: both
# servers run at once (SQLite + local files, or Postgres with BACKEND=postgres), are seeded the
# same way, and are hit in alternating rounds (before, after, before, …) so that the machine's
# noise falls on both alike. Per path: p50 and p90 latency of sequential keep-alive requests,
# and the after/before ratio of the p50s.
#
#   BEFORE=/tmp/before/target/release/quiver AFTER=target/release/quiver bench/authz.sh
#   ROUNDS=7 REQUESTS=300 BACKEND=postgres bench/authz.sh
#   ONLY=resolve-small,page-signed-in bench/authz.sh     # a subset of the paths
#   SWAP=1 bench/authz.sh                                # start the after build's server first
#
# Paths: the cached listing (anonymous and signed in), the adapter page (anonymous and signed
# in), a small file through the Hub's `resolve` (signed in), an alias move (PUT refs) and a small
# upload (the two PEFT fixture files). On a build with organisations, the signed-in user belongs
# to 3 of them (their creation fails harmlessly on an older build), so the figures include
# reading memberships with the token; every write appends an audit entry on a build that has
# the audit log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BEFORE="${BEFORE:?set BEFORE to the quiver binary to compare against}"
AFTER="${AFTER:-$REPO_DIR/target/release/quiver}"
ROUNDS="${ROUNDS:-5}"
REQUESTS="${REQUESTS:-200}"
BACKEND="${BACKEND:-sqlite}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
need curl python3
for b in "$BEFORE" "$AFTER"; do [[ -x "$b" ]] || die "no quiver binary at $b"; done

WORK="$(mktemp -d /tmp/quiver-bench-authz.XXXXXX)"
trap 'bench_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

echo "== authz bench ($BACKEND): $ROUNDS alternating rounds of $REQUESTS sequential requests per path"
echo "before: $BEFORE ($(sha256sum "$BEFORE" | cut -c1-12)), after: $AFTER ($(sha256sum "$AFTER" | cut -c1-12))"
machine_line
start_load_watch "$WORK/load-watch"
wait_idle

# Servers are started in this order; SWAP=1 starts the after build first (the server started
# second measured 1-4 % slower with the same binary on both sides here: run both orders).
order="before after"
[[ "${SWAP:-0}" == 1 ]] && order="after before"
declare -A urls tokens
for side in $order; do
    bin=$BEFORE
    [[ $side == after ]] && bin=$AFTER
    storage=()
    if [[ "$BACKEND" == postgres ]]; then
        need psql
        db="quiver_bench_authz_${side}_$$"
        psql -q "$PG_URL/postgres" -c "CREATE DATABASE $db" >/dev/null
        BENCH_CLEANUP_CMDS+=("psql -q '$PG_URL/postgres' -c 'DROP DATABASE IF EXISTS $db WITH (FORCE)' >/dev/null 2>&1")
        storage=(--database-url "$PG_URL/$db")
    fi
    port=$(free_port)
    QUIVER="$bin"
    token=$(make_token "$WORK/$side" bench write "${storage[@]}")
    [[ -n "$token" ]] || die "could not create a token ($side)"
    start_quiver pid "$port" "$WORK/$side" "$WORK/$side.log" "${storage[@]}"
    urls[$side]="http://127.0.0.1:$port"
    tokens[$side]="$token"
done

python3 "$BENCH_DIR/authz.py" --fixture-dir "$FIXTURE_DIR" --rounds "$ROUNDS" --requests "$REQUESTS" --only "${ONLY:-}" \
    --before "${urls[before]}" "${tokens[before]}" --after "${urls[after]}" "${tokens[after]}"
load_watch_report
