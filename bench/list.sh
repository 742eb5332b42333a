#!/usr/bin/env bash
# Listing and search throughput: quiver on SQLite + local files and on Postgres + local files,
# against MLflow's model registry (SQLite backend), each seeded with the same 10,000 entries and
# hit with the same wrk load, in one run. See bench/README.md.
#
#   bench/list.sh
#   N=10000 DURATION=20 CONNECTIONS=64 THREADS=2 bench/list.sh
#   BACKENDS="sqlite postgres mlflow" bench/list.sh   # any subset, in this order
#   QUIVER=/path/to/quiver bench/list.sh               # another build (default target/release/quiver)
#
# Needs: wrk, curl, python3, psql (Postgres at $PG_URL, trust auth), and an mlflow install: the
# venv at $BENCH_VENV (default /tmp/quiver-bench-venv) is created with `pip install mlflow` when
# it has no mlflow.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-10000}"
DURATION="${DURATION:-20}"
WRK_TIMEOUT="${WRK_TIMEOUT:-30s}" # wrk's default (2 s) would cut MLflow's slow responses and count them as errors
WARMUP="${WARMUP:-5}" # seconds of the same load before each measurement, not recorded
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
TERM_Q="${TERM_Q:-quokka}"
SEED_THREADS="${SEED_THREADS:-8}"
BACKENDS="${BACKENDS:-sqlite postgres mlflow}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
BENCH_VENV="${BENCH_VENV:-/tmp/quiver-bench-venv}"
MLFLOW_SPEC="${MLFLOW_SPEC:-mlflow}"
MLFLOW_SEED="${MLFLOW_SEED:-direct}" # direct (in-process on its SQLite file) or rest (through the server)
UNCACHED="${UNCACHED:-1}" # 1: also measure quiver with its listing cache off, on the same data

need wrk curl python3
check_quiver
[[ " $BACKENDS " == *" postgres "* ]] && need psql

WORK="$(mktemp -d /tmp/quiver-bench-list.XXXXXX)"
PG_DB="quiver_bench_$$_$RANDOM"
PG_CREATED=
cleanup_all() {
    bench_cleanup
    if [[ -n "$PG_CREATED" ]]; then
        psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 ||
            echo "warning: could not drop database $PG_DB" >&2
    fi
    rm -rf "$WORK"
}
trap cleanup_all EXIT
trap 'exit 130' INT TERM

echo "== list/search bench: $N entries each; wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --timeout $WRK_TIMEOUT --latency (after ${WARMUP}s of warm-up)"
machine_line
# Postgres's server processes work for the bench's Postgres backend: not counted as other load.
CPUWATCH_IGNORE=postgres start_load_watch "$WORK/load-watch"
wait_idle
echo "note: wrk and the server under test share this machine's $(nproc) CPUs (wrk's $THREADS threads included), so"
echo "      every requests/s figure here is a lower bound for the server alone; loopback HTTP/1.1, keep-alive."

# Parses a wrk --latency report: "req/s p99_ms requests non2xx socket_errors".
parse_wrk() {
    python3 - "$1" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]
reqs = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = sum(int(x) for x in sock.groups()) if sock else 0
print(f"{rps:.1f} {p99:.2f} {reqs} {int(non2xx.group(1)) if non2xx else 0} {errors}")
EOF
}

# Checks a URL answers 200 and prints how many items it lists.
preflight() {
    local label="$1" url="$2" kind="$3" body
    body="$WORK/preflight.json"
    code=$(curl -sS -o "$body" -w '%{http_code}' "$url")
    [[ "$code" == 200 ]] || die "$label: $url answered $code: $(head -c 500 "$body")"
    python3 - "$body" "$kind" "$label" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
items = d.get("items") if sys.argv[2] == "quiver" else d.get("registered_models", [])
more = d.get("next_cursor") if sys.argv[2] == "quiver" else d.get("next_page_token")
print(f"  {sys.argv[3]}: 200, {len(items)} items on the first page, more pages: {'yes' if more else 'no'}")
EOF
}

declare -A RPS P99 NON2XX ERRS BUSY
run_wrk() { # label url
    local label="$1" url="$2" out="$WORK/wrk-$1.txt"
    wait_quiet
    # Warm-up, not recorded: lazily started workers, caches, connection pools.
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" --timeout "$WRK_TIMEOUT" "$url" >"$WORK/warmup-$label.txt" 2>&1 || true
    local n0 n1 busy
    n0=$(wc -l <"$LOAD_WATCH_FILE")
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout "$WRK_TIMEOUT" --latency "$url" >"$out" 2>&1 || {
        cat "$out" >&2
        die "wrk failed on $url"
    }
    read -r rps p99 reqs non2xx errs <<<"$(parse_wrk "$out")"
    n1=$(wc -l <"$LOAD_WATCH_FILE")
    busy=$(awk -v a="$n0" -v b="$n1" 'NR > a && NR <= b && $1 >= 20 {n++} END {print n + 0}' "$LOAD_WATCH_FILE")
    RPS[$label]=$rps P99[$label]=$p99 NON2XX[$label]=$non2xx ERRS[$label]=$errs BUSY[$label]=$busy
    echo "  $label: $rps req/s, p99 $p99 ms ($reqs requests, non-2xx $non2xx, socket errors $errs; seconds in which other processes used >= 20% of a core: $busy)"
    echo "    $(load_watch_between "$n0" "$n1")"
}

count_matches_quiver() { # base url → total adapters matching TERM_Q (walks the cursor)
    python3 - "$1" "$TERM_Q" <<'EOF'
import json, sys, urllib.parse, urllib.request
base, term = sys.argv[1], sys.argv[2]
n, cursor = 0, None
while True:
    q = {"limit": 500, "q": term}
    if cursor:
        q["cursor"] = cursor
    d = json.load(urllib.request.urlopen(f"{base}/api/v1/adapters?{urllib.parse.urlencode(q)}"))
    n += len(d["items"])
    cursor = d["next_cursor"]
    if not cursor:
        break
print(n)
EOF
}

bench_quiver() { # label, extra storage flags...
    local label="$1"
    shift
    local data="$WORK/quiver-$label" port qpid token url
    port=$(free_port)
    echo
    echo "-- quiver, $label backend"
    token=$(make_token "$data" bench admin "$@")
    [[ -n "$token" ]] || die "could not create a token"
    start_quiver qpid "$port" "$data" "$WORK/quiver-$label.log" "$@"
    url="http://127.0.0.1:$port"
    python3 "$BENCH_DIR/seed.py" quiver --url "$url" --token "$token" --n "$N" \
        --threads "$SEED_THREADS" --term "$TERM_Q" --fixture-dir "$FIXTURE_DIR" || {
        sed 's/\x1b\[[0-9;]*m//g' "$WORK/quiver-$label.log" | grep -E ' (WARN|ERROR) ' | tail -5 >&2
        die "seeding quiver ($label) failed"
    }
    local matches
    matches=$(count_matches_quiver "$url")
    echo "  search term '$TERM_Q' matches $matches of $N adapters"
    preflight "quiver-$label list" "$url/api/v1/adapters?limit=50" quiver
    preflight "quiver-$label search" "$url/api/v1/adapters?limit=50&q=$TERM_Q" quiver
    run_wrk "quiver-$label-list" "$url/api/v1/adapters?limit=50"
    run_wrk "quiver-$label-search" "$url/api/v1/adapters?limit=50&q=$TERM_Q"
    echo "  quiver ($label) VmHWM: $(awk '/VmHWM/ {print $2, $3}' "/proc/$qpid/status"); warnings/errors in its log: $(log_problems "$WORK/quiver-$label.log")"
    stop_bg "$qpid"
    if [[ "$UNCACHED" == 1 ]]; then
        # The same data with the page cache off, twice: with the adapters kept between pages (a
        # page the page cache lacks: one query for its ids) and with nothing kept (what the first
        # page after a change costs: the whole page from the database).
        local mode flags
        for mode in fragments uncached; do
            flags=(--list-cache-bytes 0)
            [[ "$mode" == uncached ]] && flags+=(--list-fragment-bytes 0)
            echo "  restarting with ${flags[*]}"
            start_quiver qpid "$port" "$data" "$WORK/quiver-$label-$mode.log" "${flags[@]}" "$@"
            run_wrk "quiver-$label-$mode-list" "$url/api/v1/adapters?limit=50"
            run_wrk "quiver-$label-$mode-search" "$url/api/v1/adapters?limit=50&q=$TERM_Q"
            # A facet filter (the newest version's kind and vLLM verdict), as the web listing sends.
            run_wrk "quiver-$label-$mode-filtered" "$url/api/v1/adapters?limit=50&kind=trained&vllm=true"
            stop_bg "$qpid"
        done
    fi
}

ensure_mlflow() {
    if [[ ! -x "$BENCH_VENV/bin/mlflow" ]]; then
        echo "installing $MLFLOW_SPEC into $BENCH_VENV (once; takes a few minutes)"
        python3 -m venv "$BENCH_VENV"
        "$BENCH_VENV/bin/pip" install -q "$MLFLOW_SPEC"
    fi
}

bench_mlflow() {
    ensure_mlflow
    local dir="$WORK/mlflow" port mpid url filter_q
    mkdir -p "$dir"
    port=$(free_port)
    echo
    echo "-- MLflow $("$BENCH_VENV/bin/python" -c 'import mlflow; print(mlflow.__version__)'), SQLite backend"
    echo "   mlflow server --backend-store-uri sqlite:///$dir/mlflow.db --host 127.0.0.1 --port $port"
    echo "   (MLflow's defaults otherwise: --workers 4 (uvicorn), artifacts proxied to ./mlartifacts, default allowed hosts)"
    if [[ "$MLFLOW_SEED" == direct ]]; then
        # MlflowClient in-process on the server's SQLite file, before the server starts: the same
        # create_registered_model calls as over REST, without paying for 10,000 HTTP round trips
        # through the server's 4 workers (measured ~16 models/s here over REST, vs ~50/s direct).
        (cd "$dir" && "$BENCH_VENV/bin/python" "$BENCH_DIR/seed.py" mlflow --url "sqlite:///$dir/mlflow.db" \
            --n "$N" --term "$TERM_Q" 2>&1 | { grep -v ' INFO ' || true; }) || die "seeding MLflow failed"
    fi
    # cd: MLflow puts ./mlartifacts in its working directory.
    start_bg mpid "$WORK/mlflow.log" bash -c "cd '$dir' && exec '$BENCH_VENV/bin/mlflow' server \
        --backend-store-uri 'sqlite:///$dir/mlflow.db' --host 127.0.0.1 --port $port"
    url="http://127.0.0.1:$port"
    if ! wait_http "$url/health" 1200 "$mpid"; then
        tail -50 "$WORK/mlflow.log" >&2
        die "mlflow server did not start"
    fi
    if [[ "$MLFLOW_SEED" != direct ]]; then
        "$BENCH_VENV/bin/python" "$BENCH_DIR/seed.py" mlflow --url "$url" --n "$N" \
            --threads "$SEED_THREADS" --term "$TERM_Q" || die "seeding MLflow failed"
    fi
    filter_q=$(python3 -c "import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))" "name LIKE '%$TERM_Q%'")
    local list_url="$url/api/2.0/mlflow/registered-models/search?max_results=50"
    local search_url="$url/api/2.0/mlflow/registered-models/search?max_results=50&filter=$filter_q"
    local matches
    matches=$("$BENCH_VENV/bin/python" -c "
from mlflow import MlflowClient
c = MlflowClient(tracking_uri='$url', registry_uri='$url')
n, tok = 0, None
while True:
    page = c.search_registered_models(filter_string=\"name LIKE '%$TERM_Q%'\", max_results=1000, page_token=tok)
    n += len(page)
    tok = page.token
    if not tok:
        break
print(n)")
    echo "  filter name LIKE '%$TERM_Q%' matches $matches of $N registered models"
    preflight "mlflow list" "$list_url" mlflow
    preflight "mlflow search" "$search_url" mlflow
    run_wrk "mlflow-list" "$list_url"
    run_wrk "mlflow-search" "$search_url"
    stop_bg "$mpid"
}

for b in $BACKENDS; do
    case "$b" in
    sqlite) bench_quiver sqlite ;;
    postgres)
        psql -q "$PG_URL/postgres" -c "CREATE DATABASE $PG_DB" >/dev/null
        PG_CREATED=1
        bench_quiver postgres --database-url "$PG_URL/$PG_DB"
        ;;
    mlflow) bench_mlflow ;;
    *) die "unknown backend $b (sqlite, postgres, mlflow)" ;;
    esac
done

echo
echo "RESULT list/search ($N entries; wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --timeout $WRK_TIMEOUT; wrk shares the $(nproc) CPUs with the server)"
printf '%-32s %12s %10s %9s %8s %16s %8s\n' "" "requests/s" "p99 ms" "non-2xx" "sock err" "x MLflow req/s" "busy s"
LABELS=""
for b in sqlite postgres; do
    LABELS+=" quiver-$b-list quiver-$b-search"
    for mode in fragments uncached; do
        LABELS+=" quiver-$b-$mode-list quiver-$b-$mode-search quiver-$b-$mode-filtered"
    done
done
# The MLflow row a quiver row is compared with: its page of 50, or its filtered search (for
# quiver's search and facet filter alike).
mlflow_of() {
    case "${1##*-}" in
    list) echo mlflow-list ;;
    *) echo mlflow-search ;;
    esac
}
for label in $LABELS mlflow-list mlflow-search; do
    [[ -n "${RPS[$label]:-}" ]] || continue
    x="-"
    m=$(mlflow_of "$label")
    if [[ $label == quiver-* && -n "${RPS[$m]:-}" ]]; then
        x="$(ratio "${RPS[$label]}" "${RPS[$m]}")x"
    fi
    printf '%-32s %12s %10s %9s %8s %16s %8s\n' "$label" "${RPS[$label]}" "${P99[$label]}" "${NON2XX[$label]}" "${ERRS[$label]}" "$x" "${BUSY[$label]}"
done
echo "(busy s: seconds of the 20 s measurement in which processes outside the bench used >= 20% of a core; 0 = clean)"
echo "targets (quiver rows): p99 < 50 ms; requests/s >= 100x MLflow's"
for label in $LABELS; do
    [[ -n "${RPS[$label]:-}" ]] || continue
    m=$(mlflow_of "$label")
    p=$(python3 -c "print('met' if ${P99[$label]} < 50 else 'NOT met')")
    if [[ -n "${RPS[$m]:-}" ]]; then
        r=$(python3 -c "print('met' if ${RPS[$label]} >= 100 * ${RPS[$m]} else 'NOT met')")
    else
        r="not measured"
    fi
    bad=""
    if [[ "${NON2XX[$label]}" != 0 || "${ERRS[$label]}" != 0 ]]; then bad=" (WARNING: errors during the run)"; fi
    echo "  $label: p99 < 50 ms $p; >= 100x MLflow $r$bad"
done
echo "issue 25, target 5 (page cache off: fragments and uncached rows): >= 5,000 requests/s and p99 < 20 ms; the cached page of 50 (the floor) beside it"
for label in $LABELS; do
    [[ ($label == *-uncached-* || $label == *-fragments-*) && -n "${RPS[$label]:-}" ]] || continue
    cached="${label%-*-*}-list"
    floor="-"
    [[ -n "${RPS[$cached]:-}" ]] && floor="$(ratio "${RPS[$label]}" "${RPS[$cached]}")x the cached page's ${RPS[$cached]} req/s"
    v=$(python3 -c "r, p = ${RPS[$label]}, ${P99[$label]}; print(('met' if r >= 5000 else f'NOT met ({r / 5000:.2f}x of 5,000)') + '; p99 ' + ('met' if p < 20 else f'NOT met ({p:.1f} ms)'))")
    echo "  $label: ${RPS[$label]} req/s, p99 ${P99[$label]} ms: >= 5,000 req/s $v; $floor"
done
load_watch_report
