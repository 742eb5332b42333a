#!/usr/bin/env bash
# Two builds of quiver side by side in one run: the cached and uncached listing (list.sh, SQLite),
# the web pages (web.sh) and the API-vs-CLI merge overhead (jobs/run.py overhead), each run for
# BEFORE then AFTER back to back, and the after/before ratio of every figure. For changes that
# must not move performance (a refactor): ratios near 1 within the machine's noise.
#
#   BEFORE=/tmp/quiver-before AFTER=target/release/quiver bench/compare.sh
#   PARTS="list web" bench/compare.sh         # any subset of: list web jobs
#
# A binary of an earlier commit: `git worktree add /tmp/before <commit>` and
# `cargo build --release -p quiver-api` there. Needs what list.sh, web.sh and jobs/run.py need
# (wrk; for jobs, a Python with numpy and safetensors as PY).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BEFORE="${BEFORE:?set BEFORE to the quiver binary to compare against}"
AFTER="${AFTER:-target/release/quiver}"
PARTS="${PARTS:-list web jobs}"
OUT="$(mktemp -d /tmp/quiver-bench-compare.XXXXXX)"
echo "before: $BEFORE ($(sha256sum "$BEFORE" | cut -c1-12)), after: $AFTER ($(sha256sum "$AFTER" | cut -c1-12)); logs in $OUT"

# "label value" lines of one run.
figures() { # part, log
    case "$1" in
    list) awk '/^quiver-sqlite-(uncached-)?(list|search) / {print $1 "-rps", $2; print $1 "-p99ms", $3}' "$2" ;;
    web) awk '$2 ~ /^\// && $4 == "req/s" {print $1 "-rps", $3; print $1 "-p99ms", $6}' "$2" ;;
    jobs) python3 - "$2" <<'EOF'
import re, sys
for line in open(sys.argv[1]):
    m = re.match(r"(\w+): cli ([\d.]+) s .*?api ([\d.]+) s .*?ratio ([\d.]+)", line)
    if m:
        print(f"{m[1]}-cli-s {m[2]}\n{m[1]}-api-s {m[3]}\n{m[1]}-api/cli {m[4]}")
EOF
    ;;
    esac
}

run() { # part, binary, log
    case "$1" in
    list) QUIVER="$2" BACKENDS=sqlite bench/list.sh > "$3" 2>&1 ;;
    web) QUIVER="$2" bench/web.sh > "$3" 2>&1 ;;
    jobs) QUIVER="$2" python3 bench/jobs/run.py overhead > "$3" 2>&1 ;;
    esac
}

for part in $PARTS; do
    for side in before after; do
        bin=$BEFORE
        [[ $side == after ]] && bin=$AFTER
        echo "-- $part, $side"
        run "$part" "$bin" "$OUT/$part-$side.log" || { tail -20 "$OUT/$part-$side.log"; exit 1; }
        figures "$part" "$OUT/$part-$side.log" > "$OUT/$part-$side.txt"
    done
    echo
    printf '%-36s %12s %12s %10s\n' "$part" before after "after/before"
    join <(sort "$OUT/$part-before.txt") <(sort "$OUT/$part-after.txt") |
        awk '{printf "%-36s %12s %12s %10.3f\n", $1, $2, $3, ($2 > 0 ? $3 / $2 : 0)}'
    echo
done
