#!/usr/bin/env bash
# Download throughput: quiver (SQLite + local files) against nginx (sendfile on) serving the very
# same file, side by side in one run. See bench/README.md.
#
#   bench/download.sh                 # 512 MiB, 3 repeats, 4 parallel streams
#   SIZE_MIB=1024 REPEATS=5 PARALLEL=4 bench/download.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE_MIB="${SIZE_MIB:-512}"
REPEATS="${REPEATS:-3}"
PARALLEL="${PARALLEL:-4}"

need curl nginx python3 sha256sum
check_quiver

WORK="$(mktemp -d /tmp/quiver-bench-download.XXXXXX)"
chmod 755 "$WORK" # nginx's workers (www-data when started as root) must read the file
trap 'bench_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

echo "== quiver download bench: ${SIZE_MIB} MiB file, ${REPEATS} repeats, ${PARALLEL} parallel streams"
machine_line
start_load_watch "$WORK/load-watch"
wait_idle
echo "note: curl, nginx and quiver share this machine's $(nproc) CPUs; everything is on loopback and the file is in the page cache"

# 1. The file, uploaded into a fresh quiver.
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/big.dat"
SIZE=$(stat -c %s "$WORK/big.dat")
EXPECTED_SHA=$(sha256sum "$WORK/big.dat" | cut -d' ' -f1)

QPORT=$(free_port)
DATA="$WORK/quiver-data"
TOKEN=$(make_token "$DATA" bench write)
[[ -n "$TOKEN" ]] || die "could not create a token"
start_quiver QPID "$QPORT" "$DATA" "$WORK/quiver.log"
Q="http://127.0.0.1:$QPORT"

curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"owner":"bench","name":"download","base_model":"quiver-test/tiny-llama"}' "$Q/api/v1/adapters"
code=$(curl -sS -o "$WORK/version.json" -w '%{http_code}' -H 'Expect:' -H "Authorization: Bearer $TOKEN" \
    -F "file=@$FIXTURE_DIR/adapter_config.json;filename=adapter_config.json" \
    -F "file=@$FIXTURE_DIR/adapter_model.safetensors;filename=adapter_model.safetensors" \
    -F "file=@$WORK/big.dat;filename=big.dat" \
    "$Q/api/v1/adapters/bench/download/versions")
[[ "$code" == 201 ]] || die "upload answered $code: $(cat "$WORK/version.json")"
rm -f "$WORK/big.dat" # from here on both servers read quiver's stored blob
BLOB_REL="sha256/${EXPECTED_SHA:0:2}/$EXPECTED_SHA"
[[ -f "$DATA/blobs/$BLOB_REL" ]] || die "blob not found at $DATA/blobs/$BLOB_REL"
chmod -R a+rX "$DATA/blobs"

# 2. nginx on the blob directory: both servers send the same inode from the page cache.
NPORT=$(free_port)
mkdir -p "$WORK/nginx-tmp"
sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$NPORT|g" -e "s|@ROOT@|$DATA/blobs|g" \
    "$BENCH_DIR/nginx.conf.in" >"$WORK/nginx.conf"
start_bg NPID "$WORK/nginx.out" nginx -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf"
if ! wait_http "http://127.0.0.1:$NPORT/$BLOB_REL" 100 "$NPID"; then
    cat "$WORK/nginx.out" "$WORK/nginx-error.log" >&2 || true
    die "nginx did not start"
fi

URL_Q="$Q/api/v1/adapters/bench/download/versions/1/files/big.dat"
URL_N="http://127.0.0.1:$NPORT/$BLOB_REL"
# The Hub-compatible route (same serving path) and huggingface_hub's snapshot_download of the
# whole repo (config, weights and the big file), as vLLM pulls an adapter.
URL_H="$Q/bench/download/resolve/v1/big.dat"
HF_PY="${HF_PY:-$REPO_DIR/.venv-hf-latest/bin/python}"
[[ -x "$HF_PY" ]] || die "no huggingface_hub venv at $HF_PY (scripts/test.sh makes .venv-hf-latest; or set HF_PY)"

# Sanity: both send the right bytes (this also warms the page cache).
for u in "$URL_Q" "$URL_N" "$URL_H"; do
    got=$(curl -fsS "$u" | sha256sum | cut -d' ' -f1)
    [[ "$got" == "$EXPECTED_SHA" ]] || die "$u sent wrong bytes (sha256 $got, expected $EXPECTED_SHA)"
done
echo "checked: both servers send the file intact (sha256 ${EXPECTED_SHA:0:16}…, $SIZE bytes)"

# One stream: bytes/s as curl measures it (time_total includes connect).
one_stream() {
    local out bytes t
    out=$(curl -fsS -o /dev/null -w '%{size_download} %{time_total}' "$1")
    read -r bytes t <<<"$out"
    [[ "$bytes" == "$SIZE" ]] || die "$1: got $bytes bytes, expected $SIZE"
    gbps "$bytes" "$t"
}

# PARALLEL streams at once: total bytes / wall time from first start to last finish.
parallel_streams() {
    local url="$1" t0 t1 i pids=() files=() total=0 b
    t0=$(now_s)
    for i in $(seq 1 "$PARALLEL"); do
        curl -fsS -o /dev/null -w '%{size_download}' "$url" >"$WORK/par.$i" &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || die "$url: a parallel stream failed"
    done
    t1=$(now_s)
    for i in $(seq 1 "$PARALLEL"); do
        b=$(cat "$WORK/par.$i")
        [[ "$b" == "$SIZE" ]] || die "$url: a parallel stream got $b bytes, expected $SIZE"
        total=$((total + b))
    done
    gbps "$total" "$(python3 -c "print($t1 - $t0)")"
}

# snapshot_download into a fresh cache: bytes of every file / wall time of the call.
snapshot() {
    local cache
    # In RAM where there is /dev/shm: the figure is about the server, not this machine's disk.
    cache=$(mktemp -d "${HF_CACHE_BASE:-/dev/shm}/quiver-hf-cache.XXXXXX")
    HF_ENDPOINT="$Q" HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
        "$HF_PY" -c 'import os, sys, time
from huggingface_hub import snapshot_download
t = time.perf_counter()
d = snapshot_download("bench/download", revision="v1", cache_dir=sys.argv[1])
s = time.perf_counter() - t
n = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
assert os.path.getsize(os.path.join(d, "big.dat")) == int(sys.argv[2])
print(f"{n / s / 1e9:.3f}")' "$cache" "$SIZE"
    rm -rf "$cache"
}

# The same client's own downloader (what snapshot_download runs per file) reading the big file
# from nginx into the same RAM folder: the client's ceiling on this machine, for the ratio.
client_from_nginx() {
    local dir
    dir=$(mktemp -d "${HF_CACHE_BASE:-/dev/shm}/quiver-hf-cache.XXXXXX")
    HF_HUB_DISABLE_PROGRESS_BARS=1 "$HF_PY" -c 'import os, sys, time
from huggingface_hub.file_download import http_get
path = os.path.join(sys.argv[2], "big.dat")
t = time.perf_counter()
with open(path, "wb") as f:
    http_get(sys.argv[1], f, expected_size=int(sys.argv[3]))
s = time.perf_counter() - t
assert os.path.getsize(path) == int(sys.argv[3])
print(f"{int(sys.argv[3]) / s / 1e9:.3f}")' "$URL_N" "$dir" "$SIZE"
    rm -rf "$dir"
}

stats() { # best median of the arguments
    python3 -c 'import statistics, sys; v = [float(x) for x in sys.argv[1:]]; print(f"{max(v):.3f} {statistics.median(v):.3f}")' "$@"
}

declare -a S_N S_Q P_N P_Q S_H S_S S_C
for r in $(seq 1 "$REPEATS"); do
    # Alternate which server goes first, so neither always gets the warmer machine.
    if ((r % 2)); then order="n q"; else order="q n"; fi
    wait_quiet
    m0=$(load_watch_mark)
    for who in $order; do
        if [[ $who == n ]]; then S_N+=("$(one_stream "$URL_N")"); else S_Q+=("$(one_stream "$URL_Q")"); fi
    done
    for who in $order; do
        if [[ $who == n ]]; then P_N+=("$(parallel_streams "$URL_N")"); else P_Q+=("$(parallel_streams "$URL_Q")"); fi
    done
    S_H+=("$(one_stream "$URL_H")")
    S_S+=("$(snapshot)")
    S_C+=("$(client_from_nginx)")
    echo "repeat $r: 1 stream nginx ${S_N[-1]} GB/s, quiver ${S_Q[-1]} GB/s; ${PARALLEL} streams nginx ${P_N[-1]} GB/s, quiver ${P_Q[-1]} GB/s"
    echo "    $(load_watch_between "$m0" "$(load_watch_mark)")"
done

read -r sn_best sn_med <<<"$(stats "${S_N[@]}")"
read -r sq_best sq_med <<<"$(stats "${S_Q[@]}")"
read -r pn_best pn_med <<<"$(stats "${P_N[@]}")"
read -r pq_best pq_med <<<"$(stats "${P_Q[@]}")"

read -r sh_best sh_med <<<"$(stats "${S_H[@]}")"
read -r ss_best ss_med <<<"$(stats "${S_S[@]}")"
read -r sc_best sc_med <<<"$(stats "${S_C[@]}")"
r_best=$(ratio "$sq_best" "$sn_best")
r_med=$(ratio "$sq_med" "$sn_med")
r_par=$(ratio "$pq_best" "$pn_best")
r_par_med=$(ratio "$pq_med" "$pn_med")

echo
echo "RESULT download (GB/s = 10^9 bytes/s, ${SIZE_MIB} MiB file, ${REPEATS} repeats)"
printf '%-28s %12s %12s %14s\n' "" "nginx" "quiver" "quiver/nginx"
printf '%-28s %12s %12s %14s\n' "1 stream, best" "$sn_best" "$sq_best" "$r_best"
printf '%-28s %12s %12s %14s\n' "1 stream, median" "$sn_med" "$sq_med" "$r_med"
printf '%-28s %12s %12s %14s\n' "${PARALLEL} streams total, best" "$pn_best" "$pq_best" "$r_par"
printf '%-28s %12s %12s %14s\n' "${PARALLEL} streams total, median" "$pn_med" "$pq_med" "$r_par_med"
printf '%-28s %12s %12s %14s\n' "Hub resolve, 1 stream, med" "$sn_med" "$sh_med" "$(ratio "$sh_med" "$sn_med")"
printf '%-28s %12s %12s %14s\n' "snapshot_download, median" "$sn_med" "$ss_med" "$(ratio "$ss_med" "$sn_med")"
printf '%-28s %12s %12s %14s\n' "client: hf from nginx vs snapshot" "$sc_med" "$ss_med" "$(ratio "$ss_med" "$sc_med")"
verdict() { python3 -c "import sys; print('met' if float(sys.argv[1]) >= 0.8 else 'NOT met')" "$1"; }
echo "target quiver/nginx >= 0.8: 1 stream (median) $(verdict "$r_med"); ${PARALLEL} streams (median) $(verdict "$r_par_med"); snapshot_download vs the same client reading nginx (median) $(verdict "$(ratio "$ss_med" "$sc_med")")"
echo "snapshot_download: huggingface_hub $("$HF_PY" -c 'import huggingface_hub as h; print(h.__version__)'), whole repo (config + weights + ${SIZE_MIB} MiB), fresh cache in ${HF_CACHE_BASE:-/dev/shm} each time, so it writes the files (nginx's figure does not)"
echo "warnings/errors in quiver's log: $(log_problems "$WORK/quiver.log")"
echo "quiver peak RSS during the bench: $(awk '/VmHWM/ {print $2, $3}' "/proc/$QPID/status")"
load_watch_report
