#!/usr/bin/env bash
# Web page throughput: `/` (the listing page) and an adapter page beside the JSON listing of the
# same page size, on one quiver server seeded with 10,000 adapters (SQLite + local files by
# default), under the same wrk load, in one run. Prints each one's requests/s and p99 and the
# ratios the web-listing issue sets targets on (p99 < 50 ms, pages ≥ 0.5 × the JSON listing), and
# the adapter page as a signed-in member sees it (session cookie from the sign-in form) beside the
# anonymous one (issue 25: ≥ 0.5× its requests/s, p99 < 20 ms).
#
#   bench/web.sh
#   N=10000 DURATION=20 CONNECTIONS=64 THREADS=2 bench/web.sh
#   BACKEND=postgres bench/web.sh      # Postgres at $PG_URL (a database made and dropped here)
#
# Needs: wrk, curl, python3, a release build (target/release/quiver), psql for Postgres.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-10000}"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-5}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
SEED_THREADS="${SEED_THREADS:-8}"
BACKEND="${BACKEND:-sqlite}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
# The listing page shows 30 adapters (api/src/http/web/listing.rs); the JSON listing is asked for as many.
PAGE=30

need wrk curl python3
check_quiver

WORK="$(mktemp -d /tmp/quiver-bench-web.XXXXXX)"
PG_DB="quiver_bench_web_$$_$RANDOM"
STORAGE=()
if [[ "$BACKEND" == postgres ]]; then
    need psql
    psql -q "$PG_URL/postgres" -c "CREATE DATABASE $PG_DB" >/dev/null
    BENCH_CLEANUP_CMDS+=("psql -q '$PG_URL/postgres' -c 'DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)' >/dev/null 2>&1")
    STORAGE=(--database-url "$PG_URL/$PG_DB")
fi
trap 'bench_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

echo "== web bench: $N adapters ($BACKEND); wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency (after ${WARMUP}s of warm-up)"
machine_line
start_load_watch "$WORK/load-watch"
wait_idle
echo "note: wrk and the server share this machine's $(nproc) CPUs, so requests/s are lower bounds for the server alone."

data="$WORK/data"
port=$(free_port)
token=$(make_token "$data" bench admin "${STORAGE[@]}")
[[ -n "$token" ]] || die "could not create a token"
# A team member who signs in to the pages (a write token, as people use them).
member_token=$(make_token "$data" member write "${STORAGE[@]}")
[[ -n "$member_token" ]] || die "could not create the member's token"
start_quiver qpid "$port" "$data" "$WORK/quiver.log" "${STORAGE[@]}"
url="http://127.0.0.1:$port"
t0=$(now_s)
python3 "$BENCH_DIR/seed.py" quiver --url "$url" --token "$token" --n "$N" \
    --threads "$SEED_THREADS" --fixture-dir "$FIXTURE_DIR"
echo "  seeded in $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" "$t0" "$(now_s)") s"

# The adapter page measured: a public adapter with a model card, a version and its spectra (the
# first view computes and stores them; the warm-up takes that hit, as any first visitor would).
featured="acme-ml/bench-featured"
curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"owner":"acme-ml","name":"bench-featured","base_model":"meta-llama/Llama-2-7b-hf","description":"The adapter whose page the web bench loads","tags":["bench","chat"]}' \
    "$url/api/v1/adapters"
python3 - "$WORK/README.md" <<'EOF'
import sys
parts = ["# bench-featured\n\nA model card of ordinary length: headings, a table, a list and code.\n"]
for i in range(6):
    parts.append(f"\n## Section {i}\n\nThis adapter was trained on *domain {i}* data. " * 3)
    parts.append("\n| metric | value |\n|---|---|\n| accuracy | 0.91 |\n| loss | 0.23 |\n")
    parts.append("\n- point one\n- point two\n\n```python\nfrom peft import PeftModel\n```\n")
open(sys.argv[1], "w").write("".join(parts))
EOF
curl -fsS -o /dev/null -H "Authorization: Bearer $token" \
    -F "file=@$FIXTURE_DIR/adapter_config.json;filename=adapter_config.json" \
    -F "file=@$FIXTURE_DIR/adapter_model.safetensors;filename=adapter_model.safetensors" \
    -F "file=@$WORK/README.md;filename=README.md" \
    "$url/api/v1/adapters/$featured/versions"

# The member signs in as a browser does: /signin sets the CSRF cookie and carries it in the
# form; POST /signin with the token sets the session cookie. Every request of the signed-in row
# sends both cookies, as the browser would.
jar="$WORK/cookies.txt"
csrf=$(curl -fsS -c "$jar" "$url/signin" | sed -n 's/.*name="csrf" value="\([0-9a-f]*\)".*/\1/p' | head -n 1)
[[ -n "$csrf" ]] || die "no CSRF token on /signin"
code=$(curl -sS -o /dev/null -w '%{http_code}' -b "$jar" -c "$jar" \
    --data-urlencode "token=$member_token" --data-urlencode "csrf=$csrf" --data-urlencode "next=/" \
    "$url/signin")
[[ "$code" == 303 ]] || die "sign-in answered $code"
session_cookie=$(awk '$6 == "quiver_session" || $6 == "quiver_csrf" {printf "%s%s=%s", sep, $6, $7; sep="; "}' "$jar")
[[ "$session_cookie" == *quiver_session=* ]] || die "sign-in set no session cookie"
signed_in_html=$(curl -fsS -H "Cookie: $session_cookie" "$url/$featured")
[[ "$signed_in_html" == *'Signed in as <strong>member</strong>'* ]] ||
    die "the signed-in page does not show the member"

declare -A RPS P99
run_wrk() { # label path [cookie header]
    local label="$1" path="$2" cookie="${3:-}" out="$WORK/wrk-$1.txt" code bytes
    local hdr=()
    [[ -n "$cookie" ]] && hdr=(-H "Cookie: $cookie")
    read -r code bytes < <(curl -sS -o /dev/null -w '%{http_code} %{size_download}\n' "${hdr[@]}" "$url$path")
    [[ "$code" == 200 ]] || die "$url$path answered $code"
    wait_quiet
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "${hdr[@]}" "$url$path" >/dev/null 2>&1 || true
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${hdr[@]}" "$url$path" >"$out" 2>&1 ||
        { cat "$out" >&2; die "wrk failed on $path"; }
    read -r rps p99 non2xx < <(python3 - "$out" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
print(f"{rps:.1f} {p99:.2f} {bad.group(1) if bad else 0}")
EOF
)
    [[ "$non2xx" == 0 ]] || die "$path: $non2xx responses were not 2xx"
    RPS[$label]=$rps P99[$label]=$p99
    printf '  %-14s %-52s %9s req/s  p99 %7s ms  (%s B per response)\n' "$label" "$path" "$rps" "$p99" "$bytes"
}

echo
run_wrk json "/api/v1/adapters?limit=$PAGE"
run_wrk listing-page "/"
run_wrk adapter-page "/$featured"
run_wrk signed-in-page "/$featured" "$session_cookie"
run_wrk json-filtered "/api/v1/adapters?limit=$PAGE&kind=trained&vllm=true"
run_wrk page-filtered "/?kind=trained&vllm=true"
echo
echo "  listing page / JSON listing:   $(ratio "${RPS[listing-page]}" "${RPS[json]}")× requests/s (target ≥ 0.5)"
echo "  adapter page / JSON listing:   $(ratio "${RPS[adapter-page]}" "${RPS[json]}")× requests/s (target ≥ 0.5)"
echo "  filtered page / filtered JSON: $(ratio "${RPS[page-filtered]}" "${RPS[json-filtered]}")×"
echo "  p99 of the pages: ${P99[listing-page]} ms, ${P99[adapter-page]} ms, ${P99[page-filtered]} ms (target < 50)"
echo "  signed-in adapter page / anonymous adapter page: $(ratio "${RPS[signed-in-page]}" "${RPS[adapter-page]}")× requests/s (issue 25 target ≥ 0.5), p99 ${P99[signed-in-page]} ms (target < 20)"
echo "  quiver VmHWM: $(awk '/VmHWM/ {print $2, $3}' "/proc/$qpid/status"); warnings/errors in its log: $(log_problems "$WORK/quiver.log")"
load_watch_report
